"""One reconnect strategy for the worker and the aggregator: a fresh connection after every loss.

Reconnection is explicit rather than left to aio-pika's robust connection, whose consumers have been
seen not to come back (aio-pika #231, #563). Each connection is a ``Link``; the process's ``on_connected``
opens its channels on it (declaring its topology, starting its consumers) and has them watched. Anything
that ends consuming ends the link: the connection closing, any watched channel closing (a publish the
broker refused with PRECONDITION_FAILED or NOT_FOUND closes the channel, and its consumer with it), or
the broker cancelling a consumer (its queue was deleted). The supervisor then closes what is left and
starts over, waiting longer after each failed attempt, and gives up when the broker stays unreachable.

``BYOK_AMQP_URL`` may list several nodes of a cluster (``worker.amqp_urls``). Each attempt tries them in the
order given, the first that accepts the connection and ``on_connected`` wins; after a loss the node just
lost is tried last, so a process fails over to a live node at once instead of first waiting on the one
that went away. A round in which no node answered counts as one failed attempt for the backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aio_pika
import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractConnection
from pydantic import SecretStr

from worker.amqp_urls import BrokerNode, parse_amqp_urls

log = structlog.get_logger("byok.broker")

RECONNECT_FIRST_S = 0.2
RECONNECT_CAP_S = 5.0
CONNECT_TIMEOUT_S = 10.0
SHORT_LIVED_S = 5.0
"""A connection lost sooner than this after it was made counts as a failed attempt for the backoff."""

FATAL = (
    aio_pika.exceptions.ChannelPreconditionFailed,
    aiormq.exceptions.ChannelAccessRefused,
    aio_pika.exceptions.AuthenticationError,
    aio_pika.exceptions.ProbableAuthenticationError,
)
"""Refusals waiting will not fix: a topology that disagrees with ours, credentials the broker refuses."""

TRANSIENT = (aio_pika.exceptions.AMQPError, OSError, TimeoutError)


def reconnect_delay_s(failures: int, jitter: float) -> float:
    """The wait after the ``failures``-th failed attempt in a row (1 = the first since the last success).

    Doubles from ``RECONNECT_FIRST_S`` up to ``RECONNECT_CAP_S``; ``jitter`` in [0, 1] picks between half
    and all of it, so processes that lost the broker together do not come back in step.
    """
    if failures < 1:
        raise ValueError("failures counts from 1")
    base = min(RECONNECT_CAP_S, RECONNECT_FIRST_S * float(2 ** min(failures - 1, 16)))
    return base * (0.5 + 0.5 * min(max(jitter, 0.0), 1.0))


class BrokerUnavailable(RuntimeError):
    """The broker refused us, or stayed unreachable for ``BYOK_RECONNECT_MAX_S``: let the orchestrator restart us."""


class Link:
    """One connection's life: lost once the connection, a watched channel or one of its consumers ends."""

    def __init__(self, connection: AbstractConnection) -> None:
        self.connection = connection
        self.lost = asyncio.Event()
        self.reason = ""
        connection.close_callbacks.add(self._connection_closed)

    @property
    def alive(self) -> bool:
        return not self.lost.is_set() and not self.connection.is_closed

    async def watch(self, channel: AbstractChannel) -> None:
        """The link ends when ``channel`` closes or the broker cancels a consumer on it."""
        channel.close_callbacks.add(self._channel_closed)
        underlay = await channel.get_underlay_channel()
        underlay.on_consumer_cancel_callbacks.add(self._consumer_cancelled)

    async def unwatch(self, channel: AbstractChannel) -> None:
        """Before closing a watched channel on purpose: its closing must not end the link."""
        channel.close_callbacks.discard(self._channel_closed)
        if not channel.is_closed:
            underlay = await channel.get_underlay_channel()
            underlay.on_consumer_cancel_callbacks.discard(self._consumer_cancelled)

    def lose(self, reason: str) -> None:
        if not self.lost.is_set():
            self.reason = reason
            self.lost.set()

    def _connection_closed(self, _sender: object, exc: BaseException | None = None) -> None:
        self.lose(f"connection closed ({_describe(exc)})")

    def _channel_closed(self, _sender: object, exc: BaseException | None = None) -> None:
        self.lose(f"channel closed ({_describe(exc)})")

    def _consumer_cancelled(self, _frame: object) -> None:
        self.lose("consumer cancelled by the broker")


def _describe(exc: BaseException | None) -> str:
    # The broker's reply text names codes, exchanges and queues, never message contents.
    return "by us" if exc is None else f"{type(exc).__name__}: {str(exc)[:200]}"


OnConnected = Callable[[Link], Awaitable[None]]
OnLost = Callable[[], Awaitable[None]]


class BrokerSupervisor:
    """Keeps one process connected: ``run`` calls ``on_connected`` on every new connection, ``on_lost``
    after every loss, until ``stop`` is set. ``close`` closes the connection in hand (after a drain)."""

    def __init__(
        self, amqp_url: SecretStr, *, reconnect_max_s: float, process: str,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        self._nodes = parse_amqp_urls(amqp_url.get_secret_value())
        self._last_lost: BrokerNode | None = None
        self._reconnect_max_s = reconnect_max_s
        self._process = process
        self._jitter = jitter
        self._link: Link | None = None
        self.connection_name = f"byok {process}"
        """Shown by ``rabbitmqctl list_connections`` and the management UI."""
        self.attempts = 0
        self.connections = 0
        """Successful connections so far: 2 after the first reconnect."""
        self.node: BrokerNode | None = None
        """The node of the connection in hand (``node.address`` names it without the password)."""

    @property
    def connected(self) -> bool:
        return self._link is not None and not self._link.connection.is_closed

    @property
    def alive(self) -> bool:
        """Connected, and nothing on the connection has ended since ``on_connected`` returned."""
        return self._link is not None and self._link.alive

    async def run(
        self, stop: asyncio.Event, on_connected: OnConnected, on_lost: OnLost, *, wait_for_first: bool = True,
    ) -> None:
        """``wait_for_first=False`` raises the first connection's failure as it is (a library caller wants a
        wrong URL, refused credentials or a stopped broker at once); later losses are handled the same either way."""
        failures = quick_losses = 0
        down_since: float | None = None
        while not stop.is_set():
            try:
                link = await self._open(on_connected)
            except FATAL as exc:
                if not wait_for_first and self.connections == 0:
                    raise
                raise BrokerUnavailable(
                    f"the broker refused the {self._process}: {type(exc).__name__}: {exc}"
                ) from None
            except TRANSIENT as exc:
                if not wait_for_first and self.connections == 0:
                    raise
                failures += 1
                down_since = down_since or time.monotonic()
                down_for = time.monotonic() - down_since
                if down_for > self._reconnect_max_s:
                    raise BrokerUnavailable(
                        f"the broker has been unreachable for {down_for:.0f}s ({type(exc).__name__})"
                    ) from None
                delay = reconnect_delay_s(failures, self._jitter())
                log.warning("broker.unreachable", process=self._process, error=type(exc).__name__,
                            down_s=round(down_for, 1), failures=failures, retry_in_s=round(delay, 2))
                await _wait(stop, delay)
                continue
            failures, down_since = 0, None
            connected_at = time.monotonic()
            await _first(stop.wait(), link.lost.wait())
            if not stop.is_set():
                self._last_lost = self.node
                log.warning("broker.connection_lost", process=self._process, reason=link.reason,
                            node=self.node.address if self.node else None, note="reconnecting")
                await on_lost()
                await self.close()
                # A connection lost as soon as it was made (a publish refused again at once, a consumer
                # cancelled again) is a failed attempt: back off rather than spin.
                quick_losses = quick_losses + 1 if time.monotonic() - connected_at < SHORT_LIVED_S else 0
                if quick_losses:
                    await _wait(stop, reconnect_delay_s(quick_losses, self._jitter()))

    def _order(self) -> list[BrokerNode]:
        """The nodes in the order given, the one just lost last."""
        return sorted(self._nodes, key=lambda node: node == self._last_lost)

    async def _open(self, on_connected: OnConnected) -> Link:
        """The first node, in order, that accepts the connection and ``on_connected``; raises the last
        node's error when none does (a fatal refusal at once)."""
        self.attempts += 1
        failed: BaseException | None = None
        for node in self._order():
            try:
                return await self._open_on(node, on_connected)
            except FATAL:
                raise
            except TRANSIENT as exc:
                failed = exc
                if len(self._nodes) > 1:
                    log.info("broker.node_unreachable", process=self._process, node=node.address,
                             error=type(exc).__name__)
        assert failed is not None
        raise failed

    async def _open_on(self, node: BrokerNode, on_connected: OnConnected) -> Link:
        connection = await aio_pika.connect(node.url, timeout=CONNECT_TIMEOUT_S,
                                            client_properties={"connection_name": self.connection_name})
        link = self._link = Link(connection)
        self.node = node
        try:
            await on_connected(link)
        except BaseException:
            await self.close()
            raise
        self.connections += 1
        if len(self._nodes) > 1:
            log.info("broker.connected", process=self._process, node=node.address, connections=self.connections)
        return link

    async def close(self) -> None:
        link, self._link = self._link, None
        if link is not None and not link.connection.is_closed:
            with contextlib.suppress(Exception):
                await link.connection.close()


async def _first(*waits: Coroutine[Any, Any, Any]) -> None:
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


async def _wait(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


async def connect_any(amqp_url: SecretStr, *, timeout_s: float = CONNECT_TIMEOUT_S) -> AbstractConnection:
    """A connection to the first node of ``amqp_url`` that accepts one (the ``byok`` commands' way in);
    raises the last node's error when none does."""
    failed: BaseException | None = None
    for node in parse_amqp_urls(amqp_url.get_secret_value()):
        try:
            return await aio_pika.connect(node.url, timeout=timeout_s)
        except FATAL:
            raise
        except TRANSIENT as exc:
            failed = exc
    assert failed is not None
    raise failed
