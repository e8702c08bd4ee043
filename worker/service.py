"""The worker process: connect, declare, consume; on SIGTERM stop consuming, drain, close."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import aio_pika
import structlog
from aio_pika.abc import AbstractQueue, AbstractRobustConnection

from worker.constants import Topology
from worker.consumer import JobConsumer, Publisher
from worker.health import HealthServer, HealthState
from worker.http_pool import HttpClientPool, TransportFactory
from worker.metrics import WorkerMetrics
from worker.pipeline import JobRunner
from worker.settings import Settings
from worker.topology import declare_topology, topology_spec
from worker.unseal_cache import UnsealCache
from worker.vault import TransitDecryptor
from worker.vault_auth import make_token_source

log = structlog.get_logger("byok.worker")


class Worker:
    def __init__(self, settings: Settings, *, provider_transport: TransportFactory | None = None) -> None:
        self.settings = settings
        self.names = Topology(settings.topology_prefix)
        self.metrics = WorkerMetrics()
        self.cache = UnsealCache(ttl_s=settings.unseal_cache_ttl_s, max_entries=settings.unseal_cache_size)
        self._provider_transport = provider_transport
        self._connection: AbstractRobustConnection | None = None
        self._queue: AbstractQueue | None = None
        self._consumer_tag: str | None = None
        self.health: HealthServer | None = None
        self.ready = asyncio.Event()

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
        )
        http = HttpClientPool(
            connect_timeout_s=settings.provider_connect_timeout_s,
            read_timeout_s=settings.provider_read_timeout_s,
            max_connections=settings.provider_max_connections,
            transport_factory=self._provider_transport,
        )
        self.health = HealthServer(settings.metrics_listen, HealthState(self._connected, self._consuming),
                                   self.metrics)
        await self.health.start()
        try:
            self._connection = await aio_pika.connect_robust(settings.amqp_url.get_secret_value())
            channel = await self._connection.channel(publisher_confirms=True)
            await channel.set_qos(prefetch_count=settings.prefetch)
            await declare_topology(channel, topology_spec(self.names, delivery_limit=settings.delivery_limit))
            runner = JobRunner(settings, decryptor=decryptor, http=http, cache=self.cache, metrics=self.metrics)
            consumer = JobConsumer(runner, Publisher(channel, self.names), self.names, self.metrics)
            self._queue = await channel.get_queue(self.names.jobs_queue, ensure=False)
            self._consumer_tag = await self._queue.consume(consumer.on_message, no_ack=False)
            log.info("worker.started", queue=self.names.jobs_queue, prefetch=settings.prefetch,
                     health_port=self.health.port)
            self.ready.set()
            await stop.wait()
            await self._drain(consumer)
        finally:
            self._consumer_tag = None
            if self._connection is not None:
                await self._connection.close()
            await http.aclose()
            await decryptor.aclose()
            await tokens.aclose()
            await self.health.stop()
            log.info("worker.stopped")

    async def _drain(self, consumer: JobConsumer) -> None:
        """Stop taking jobs, let in-flight ones finish within the grace period, leave the rest unacked."""
        if self._queue is not None and self._consumer_tag is not None:
            with contextlib.suppress(Exception):
                await self._queue.cancel(self._consumer_tag)
        self._consumer_tag = None
        in_flight = len(consumer.in_flight)
        log.info("worker.draining", in_flight=in_flight, grace_s=self.settings.shutdown_grace_s)
        try:
            await asyncio.wait_for(consumer.idle.wait(), timeout=self.settings.shutdown_grace_s)
        except TimeoutError:
            unfinished = list(consumer.in_flight)
            log.warning("worker.grace_expired", unfinished=len(unfinished), note="left unacked for redelivery")
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)


def _signal_event() -> asyncio.Event:
    event = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, event.set)
    return event
