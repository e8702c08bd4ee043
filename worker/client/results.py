"""``Client.results``: completion results as an async iterator, from a queue bound on the results exchange.

The queue is the subscription's own exclusive one (it goes with the connection: results published while the
client is reconnecting are not kept for it), or a durable quorum queue named by the caller (it keeps them).
A result is acked when the caller asks for the next one, or leaves the ``async with`` block without an
error: a durable queue hands a result that was not processed to the next reader (at least once; results
carry ``job_id`` to deduplicate on).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Iterable
from types import TracebackType

import aiormq
import structlog
from aio_pika.abc import AbstractChannel, AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from schemas.models import CompletionResult
from worker.broker.connection import Link
from worker.broker.names import result_routing_key
from worker.broker.topology import QUORUM

log = structlog.get_logger("byok.client")

ANY = "*"
"""A routing key word that matches any workspace, automation or status."""


def result_bindings(
    workspace: str | Iterable[str] | None, automation: str | Iterable[str] | None, status: str | Iterable[str] | None,
) -> list[str]:
    """The routing key patterns that select results: one per combination of the values given (None: any)."""
    def words(value: str | Iterable[str] | None) -> list[str]:
        if value is None:
            return [ANY]
        listed = [value] if isinstance(value, str) else sorted(set(value))
        if not listed or any(not word or "." in word or word in ("*", "#") for word in listed):
            raise ValueError("a filter is an identifier (no dot, no wildcard), a collection of them, or None")
        return listed

    return sorted({
        result_routing_key(ws, auto, st)
        for ws, auto, st in itertools.product(words(workspace), words(automation), words(status))
    })


class _Closed:
    """Put in the buffer to wake a reader when the subscription or the client ends."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


Delivery = tuple[AbstractIncomingMessage, Link]


class ResultSubscription:
    """``async for result in client.results(...)``, or ``async with client.results(...) as results`` to have
    the queue bound before the block starts (and the subscription closed when it ends)."""

    def __init__(
        self, *, exchange: str, routing_keys: list[str], queue: str | None, prefetch: int,
        current_link: Callable[[], Awaitable[Link]], forget: Callable[[ResultSubscription], None],
    ) -> None:
        self.exchange = exchange
        self.routing_keys = routing_keys
        self.durable = queue is not None
        self._queue_name = queue
        self._prefetch = prefetch
        self._current_link = current_link
        self._forget = forget
        self._buffer: asyncio.Queue[Delivery | _Closed] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._link: Link | None = None
        self._channel: AbstractChannel | None = None
        self._queue: AbstractQueue | None = None
        self._handed: AbstractIncomingMessage | None = None
        self._started = False
        self._closed = False
        self._waiting = 0
        self.attachments = 0
        """Connections this subscription has consumed on: 2 after the client reconnected once."""

    @property
    def queue_name(self) -> str | None:
        """The queue being read now (an exclusive one is named by the broker, anew on each connection)."""
        return self._queue.name if self._queue is not None else None

    @property
    def waiting(self) -> int:
        """Results received and not yet handed to the reader."""
        return self._waiting

    @property
    def started(self) -> bool:
        """Asked to read: the client binds it again on every new connection."""
        return self._started

    async def start(self) -> None:
        """Binds the queue (once); returns when results routed from now on reach this subscription."""
        if self._started:
            return
        self._started = True  # first: a connection opened meanwhile attaches it too
        while True:
            link = await self._current_link()
            try:
                await self.attach(link)
                return
            except (aiormq.exceptions.AMQPConnectionError, ConnectionError, aiormq.exceptions.ChannelInvalidStateError):
                if link.alive:
                    self._started = False
                    raise
                # Lost while binding: the next connection attaches it (attaching again there is a no-op).
            except BaseException:
                self._started = False
                raise

    async def attach(self, link: Link) -> None:
        """On ``link`` (a new connection): a channel, the queue, its bindings and a consumer."""
        async with self._lock:
            if self._closed or self._link is link:
                return
            channel = await link.connection.channel()
            await link.watch(channel)
            await channel.set_qos(prefetch_count=self._prefetch)
            if self._queue_name is None:
                queue = await channel.declare_queue(exclusive=True, auto_delete=True)
            else:
                queue = await channel.declare_queue(self._queue_name, durable=True, arguments=dict(QUORUM))
            for key in self.routing_keys:
                await queue.bind(self.exchange, routing_key=key)

            async def on_message(message: AbstractIncomingMessage) -> None:
                self._waiting += 1
                self._buffer.put_nowait((message, link))

            await queue.consume(on_message)
            self._link, self._channel, self._queue = link, channel, queue
            self.attachments += 1

    def end(self, error: BaseException | None = None) -> None:
        """The client closed (``error`` None) or gave up on the broker: the reader stops or raises ``error``."""
        self._closed = True
        self._buffer.put_nowait(_Closed(error))

    def __aiter__(self) -> ResultSubscription:
        return self

    async def __anext__(self) -> CompletionResult:
        await self.start()
        await self._ack_handed()
        while True:
            item = await self._buffer.get()
            if isinstance(item, _Closed):
                self._buffer.put_nowait(item)  # every later call ends the same way
                if item.error is not None:
                    raise item.error
                raise StopAsyncIteration
            message, link = item
            self._waiting -= 1
            if self.durable and not link.alive:
                continue  # its channel is gone: the durable queue delivers it again on the new one
            try:
                result = CompletionResult.model_validate_json(message.body)
            except ValidationError:
                log.warning("client.not_a_result", exchange=self.exchange, routing_key=message.routing_key,
                            message_id=message.message_id)
                await _settle(message)
                continue
            self._handed = message
            return result

    async def _ack_handed(self) -> None:
        message, self._handed = self._handed, None
        if message is not None:
            await _settle(message)

    async def aclose(self, *, ack_last: bool = True) -> None:
        """Stops consuming; an exclusive queue goes with its consumer, a durable one stays."""
        if ack_last:
            await self._ack_handed()
        self._forget(self)
        self.end()
        async with self._lock:
            link, channel = self._link, self._channel
            self._link = self._channel = self._queue = None
            if link is not None and channel is not None and link.alive:
                await link.unwatch(channel)
                await channel.close()

    async def __aenter__(self) -> ResultSubscription:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None,
    ) -> None:
        await self.aclose(ack_last=exc is None)


async def _settle(message: AbstractIncomingMessage) -> None:
    # A message of a channel that is gone cannot be acked: the broker has already taken it back.
    with contextlib.suppress(Exception):
        await message.ack()
