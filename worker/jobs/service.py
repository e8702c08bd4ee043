"""The worker process: connect, declare, consume; reconnect when the broker drops; drain on SIGTERM.

Reconnection is explicit rather than left to aio-pika's robust connection, whose consumers have been
seen not to come back (aio-pika #231, #563): each connection gets a fresh channel, topology check and
consumer, and the worker gives up (exit status 1) when the broker stays unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import random
import signal
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import aio_pika
import aiormq
import httpx
import structlog
from aio_pika.abc import AbstractConnection, AbstractQueue
from httpx_aiohttp import AiohttpTransport

from worker.broker.names import Topology
from worker.broker.topology import declare_topology, topology_spec
from worker.jobs.consumer import JobConsumer, Publisher
from worker.jobs.health import HealthServer, HealthState
from worker.jobs.metrics import WorkerMetrics
from worker.jobs.pipeline import JobRunner
from worker.keys.auth import make_token_source
from worker.keys.transit import TransitDecryptor
from worker.keys.unseal_cache import UnsealCache
from worker.providers.http_pool import HttpClientPool, TransportFactory
from worker.settings import Settings

log = structlog.get_logger("byok.worker")

VAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
"""httpx's default pool size, which the Vault client had before it went through aiohttp."""
GC_YOUNG_THRESHOLD = 10_000


_FATAL = (
    aio_pika.exceptions.ChannelPreconditionFailed,
    aiormq.exceptions.ChannelAccessRefused,
    aio_pika.exceptions.AuthenticationError,
    aio_pika.exceptions.ProbableAuthenticationError,
)


class BrokerUnavailable(RuntimeError):
    """Consuming could not resume within ``BYOK_RECONNECT_MAX_S``: let the orchestrator restart us."""


class Worker:
    def __init__(self, settings: Settings, *, provider_transport: TransportFactory | None = None) -> None:
        self.settings = settings
        self.names = Topology(settings.topology_prefix)
        self.metrics = WorkerMetrics()
        self.cache = UnsealCache(ttl_s=settings.unseal_cache_ttl_s, max_entries=settings.unseal_cache_size)
        self._provider_transport = provider_transport
        self._connection: AbstractConnection | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self.health: HealthServer | None = None
        self.ready = asyncio.Event()
        self.connections = 0

    def _connected(self) -> bool:
        return self._connection is not None and not self._connection.is_closed

    def _consuming(self) -> bool:
        return self._consumer_tag is not None and self._connected()

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Consume until ``stop`` is set (or SIGTERM/SIGINT when ``stop`` is not given)."""
        stop = stop or _signal_event()
        settings = self.settings
        tokens = make_token_source(settings)
        decryptor = TransitDecryptor(
            addr=settings.vault_addr, tokens=tokens, mount=settings.vault_transit_mount,
            key_prefix=settings.vault_key_prefix, namespace=settings.vault_namespace,
            timeout_s=settings.vault_timeout_s, observe=self.metrics.vault_call,
            # Through aiohttp, as provider calls: httpx's own pool took 1.4 ms of CPU per decrypt and
            # capped a cold start at ~700 unseals/s; this one does ~2,600/s at 0.3 ms (BENCHMARKS.md, P5).
            transport=AiohttpTransport(limits=VAULT_LIMITS),
        )
        http = HttpClientPool(
            connect_timeout_s=settings.provider_connect_timeout_s,
            read_timeout_s=settings.provider_read_timeout_s,
            max_connections=settings.provider_max_connections,
            transport_factory=self._provider_transport,
            allowed_hosts=settings.allowed_hosts, max_response_bytes=settings.provider_max_response_bytes,
        )
        self.health = HealthServer(settings.metrics_listen, HealthState(self._connected, self._consuming),
                                   self.metrics)
        await self.health.start()
        runner = JobRunner(settings, decryptor=decryptor, http=http, cache=self.cache, metrics=self.metrics)
        consumer: JobConsumer | None = None
        try:
            consumer = await self._supervise(stop, runner)
        finally:
            if consumer is not None:
                await self._drain(consumer)
            await self._close_connection()
            await http.aclose()
            await decryptor.aclose()
            await tokens.aclose()
            await self.health.stop()
            log.info("worker.stopped")

    async def _supervise(self, stop: asyncio.Event, runner: JobRunner) -> JobConsumer | None:
        """One connection after another until ``stop``; returns the consumer to drain."""
        consumer: JobConsumer | None = None
        down_since: float | None = None
        while not stop.is_set():
            try:
                lost = await self._connect(runner, consumer)
            except _FATAL as exc:
                # Waiting will not fix a topology that disagrees with ours or credentials the broker refuses.
                raise BrokerUnavailable(f"the broker refused the worker: {type(exc).__name__}: {exc}") from None
            except (aio_pika.exceptions.AMQPError, OSError, TimeoutError) as exc:
                down_since = down_since or time.monotonic()
                down_for = time.monotonic() - down_since
                if down_for > self.settings.reconnect_max_s:
                    raise BrokerUnavailable(
                        f"the broker has been unreachable for {down_for:.0f}s ({type(exc).__name__})"
                    ) from None
                log.warning("broker.unreachable", error=type(exc).__name__, down_s=round(down_for, 1))
                await _wait(stop, min(5.0, 0.2 * 2 ** min(self.connections, 5)) * random.uniform(0.5, 1.0))  # noqa: S311 - jitter
                continue
            down_since = None
            consumer = lost.consumer
            await _first(stop.wait(), lost.event.wait())
            if not stop.is_set():
                if self._connected():
                    log.warning("broker.consumer_cancelled", in_flight=len(consumer.in_flight), note="reconnecting")
                    await self._close_connection()
                else:
                    log.warning("broker.connection_lost", in_flight=len(consumer.in_flight), note="reconnecting")
                self._consumer_tag = None
                self.ready.clear()
        return consumer

    async def _connect(self, runner: JobRunner, consumer: JobConsumer | None) -> _Connected:
        settings = self.settings
        connection = await aio_pika.connect(settings.amqp_url.get_secret_value(), timeout=10)
        self._connection = connection
        lost = asyncio.Event()
        connection.close_callbacks.add(lambda *_args: lost.set())
        channel = await connection.channel(publisher_confirms=True)
        await channel.set_qos(prefetch_count=settings.prefetch)
        await declare_topology(channel, topology_spec(self.names, delivery_limit=settings.delivery_limit))
        publisher = Publisher(channel, self.names)
        if consumer is None:
            consumer = JobConsumer(runner, publisher, self.names, self.metrics)
        else:
            consumer.publisher = publisher
        self._queue = await channel.get_queue(self.names.jobs_queue, ensure=False)
        tune_gc()
        underlay = await channel.get_underlay_channel()
        consume_ok = await underlay.basic_consume(self._queue.name, consumer.on_delivery, no_ack=False)
        self._consumer_tag = consume_ok.consumer_tag

        def cancelled_by_broker(_frame: Any) -> None:
            # The queue was deleted (or the broker dropped the consumer): start over on a new connection,
            # which declares the topology again and consumes, instead of staying connected and idle.
            self._consumer_tag = None
            self.ready.clear()
            lost.set()

        underlay.on_consumer_cancel_callbacks.add(cancelled_by_broker)
        self.connections += 1
        log.info("worker.started" if self.connections == 1 else "worker.reconnected", queue=self.names.jobs_queue,
                 prefetch=settings.prefetch, health_port=self.health.port if self.health else None)
        self.ready.set()
        return _Connected(consumer, lost)

    async def _drain(self, consumer: JobConsumer) -> None:
        """Stop taking jobs, let in-flight ones finish within the grace period, leave the rest unacked."""
        if self._queue is not None and self._consumer_tag is not None and self._connected():
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._consumer_tag)
        self._consumer_tag = None
        log.info("worker.draining", in_flight=len(consumer.in_flight), grace_s=self.settings.shutdown_grace_s)
        try:
            await asyncio.wait_for(consumer.idle.wait(), timeout=self.settings.shutdown_grace_s)
        except TimeoutError:
            unfinished = list(consumer.in_flight)
            log.warning("worker.grace_expired", unfinished=len(unfinished), note="left unacked for redelivery")
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)

    async def _close_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed:
            with contextlib.suppress(Exception):
                await connection.close()


@dataclass(frozen=True, slots=True)
class _Connected:
    consumer: JobConsumer
    event: asyncio.Event
    """Set when this connection closes."""


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


@functools.cache
def tune_gc() -> None:
    """Once per process, when the worker first starts consuming: fewer, shorter garbage collections.

    Everything alive by then (modules, classes, connections) is frozen out of the collector's sight, and
    the youngest generation is collected every ``GC_YOUNG_THRESHOLD`` allocations instead of every 700.
    With the defaults a full collection walked ~140,000 objects every few seconds under load, 40-100 ms
    with the event loop stopped (the p99 of P4), and collections took about a tenth of the worker's CPU
    (BENCHMARKS.md). Only when garbage is found changes; what is garbage does not.
    """
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


def _signal_event() -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event
