"""The worker process: connect, declare, consume; reconnect when the broker drops; drain on SIGTERM.

Reconnection is ``worker.broker.connection``'s, shared with the aggregator: each connection gets a fresh
channel, topology check and consumer; a closed channel or a cancelled consumer counts as a lost
connection; the worker gives up (exit status 1) when the broker stays unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
from collections.abc import Mapping

import httpx
import structlog
from aio_pika.abc import AbstractQueue
from httpx_aiohttp import AiohttpTransport

from worker.aggregator.pricing import load_prices
from worker.broker.connection import BrokerSupervisor, Link
from worker.broker.names import Topology
from worker.broker.outbox import Outbox
from worker.broker.publisher import Publisher
from worker.broker.topology import check_topology, declare_topology, topology_spec
from worker.budgets.guard import BudgetGuard, FailMode
from worker.jobs.call_hooks import CallHook
from worker.jobs.call_records import CallRecorder
from worker.jobs.call_span import ChatSpan
from worker.jobs.consumer import JobConsumer
from worker.jobs.fair_share import FairShare
from worker.jobs.health import HealthServer, HealthState
from worker.jobs.metrics import WorkerMetrics
from worker.jobs.pipeline import JobRunner
from worker.jobs.retry import RetryPolicy
from worker.jobs.tracing import Tracing, tracing_config
from worker.keys.auth import make_token_source
from worker.keys.transit import Decryptor, TransitDecryptor
from worker.keys.unseal_cache import UnsealCache
from worker.keys.warmup import KeyWarmup
from worker.providers.http_pool import HttpClientPool, TransportFactory
from worker.settings import Settings

log = structlog.get_logger("byok.worker")

VAULT_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
"""httpx's default pool size, which the Vault client had before it went through aiohttp."""
GC_YOUNG_THRESHOLD = 10_000


class Worker:
    def __init__(self, settings: Settings, *, provider_transport: TransportFactory | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        """``environ``: where the standard ``OTEL_*`` variables are read (the process environment by default);
        an invalid tracing setting raises ``TracingConfigError`` here, before anything starts."""
        self.settings = settings
        self._tracing_config = tracing_config(os.environ if environ is None else environ)
        self.tracing: Tracing | None = None
        self.call_hooks: tuple[CallHook, ...] = ()
        self.names = Topology(settings.topology_prefix)
        self.metrics = WorkerMetrics()
        self.cache = UnsealCache(ttl_s=settings.unseal_cache_ttl_s, max_entries=settings.unseal_cache_size)
        self.broker = BrokerSupervisor(settings.amqp_url, reconnect_max_s=settings.reconnect_max_s, process="worker")
        self.outbox = Outbox()
        """Usage events and call records not yet confirmed, sent again on the next connection."""
        self._provider_transport = provider_transport
        self._consumer: JobConsumer | None = None
        self.fair: FairShare | None = None
        self._warmup: KeyWarmup | None = None
        self._consumer_tag: str | None = None
        self._consumer_tags: list[tuple[AbstractQueue, str]] = []
        self.health: HealthServer | None = None
        self.ready = asyncio.Event()
        self.budgets: BudgetGuard | None = None

    @property
    def connections(self) -> int:
        """Successful connections so far: 2 once the worker consumed again after a loss."""
        return self.broker.connections

    def _connected(self) -> bool:
        return self.broker.connected

    def _consuming(self) -> bool:
        # ``alive`` turns false the moment the channel closes or the consumer is cancelled, before the
        # supervisor gets round to starting over: readiness never reports a consumer that is gone.
        return self._consumer_tag is not None and self.broker.alive

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
        self.budgets = BudgetGuard(
            settings.store_url.get_secret_value(), load_prices(settings.prices_file),
            lease_s=settings.budget_lease_s, refresh_s=settings.budget_refresh_s,
            fail_mode=FailMode(settings.budget_fail_mode),
        )
        await self.budgets.start()
        tracing = self.tracing = Tracing.start(self._tracing_config) if self._tracing_config else None
        unsealer: Decryptor = decryptor
        # The budget's reservation first: a refused call makes no call-started record.
        hooks: list[CallHook] = [self.budgets.hook]
        if settings.call_records:
            hooks.append(CallRecorder(self.outbox, self.names.usage_exchange))
        if tracing is not None:
            unsealer = tracing.traced_decryptor(decryptor, settings.vault_addr)
            # Last, so innermost: the span covers the provider call itself, not what the other hooks do first.
            hooks.append(ChatSpan(tracing.tracer))
        self.call_hooks = tuple(hooks)
        self._warmup = KeyWarmup(self.cache, unsealer, concurrency=settings.unseal_concurrency)
        self.metrics.keys_warming.set_function(lambda: self._warmup.warming if self._warmup else 0)
        runner = JobRunner(RetryPolicy.from_settings(settings), allowed_hosts=settings.allowed_hosts,
                           decryptor=unsealer, http=http, cache=self.cache, metrics=self.metrics,
                           call_timeout_s=settings.provider_call_timeout_s, call_hooks=self.call_hooks)
        try:
            await self.broker.run(stop, functools.partial(self._consume, runner), self._lost)
        finally:
            if self._consumer is not None and self.fair is not None:
                await self._drain(self._consumer, self.fair)
            await self.broker.close()
            await http.aclose()
            await decryptor.aclose()
            await tokens.aclose()
            await self.health.stop()
            await self.budgets.close()
            if tracing is not None:
                # Flushes the spans still queued: off the event loop, which a local receiver may be on.
                await asyncio.to_thread(tracing.shutdown)
            log.info("worker.stopped")

    async def _consume(self, runner: JobRunner, link: Link) -> None:
        """On a new connection: channel, topology, consumer (the same ``JobConsumer`` across connections)."""
        settings = self.settings
        channel = await link.connection.channel(publisher_confirms=True)
        await link.watch(channel)
        # Per consumer (jobs and overflow each): the run slots and the window to choose the next job from.
        await channel.set_qos(prefetch_count=min(settings.prefetch + settings.sort_window, 65535))
        spec = topology_spec(self.names, delivery_limit=settings.delivery_limit)
        if settings.declare_topology:
            await declare_topology(channel, spec)
        else:  # an admin declared it (`byok topology declare`); this broker user may have no configure permission
            await check_topology(channel, spec)
        publisher = Publisher(channel)
        self.outbox.attach(publisher)
        if self._consumer is None:
            self._consumer = JobConsumer(runner, publisher, self.names, self.metrics,
                                         retry_window_s=settings.max_retry_window_s, outbox=self.outbox,
                                         delivery_limit=settings.delivery_limit, tracing=self.tracing)
            self.fair = self._fair_share(self._consumer)
        else:
            self._consumer.publisher = publisher
        fair = self.fair
        assert fair is not None
        self._consumer.on_publish_refused = lambda: link.lose("the broker refused a publish (basic.nack)")
        # What the last connection took with it unconfirmed, before any new job: billed calls stay counted.
        republished = await self.outbox.republish()
        self.metrics.republished.inc(republished)
        tune_gc()
        underlay = await channel.get_underlay_channel()
        tags: list[tuple[AbstractQueue, str]] = []
        for name, callback in ((self.names.jobs_queue, fair.on_jobs_delivery),
                               (self.names.overflow_queue, fair.on_overflow_delivery)):
            queue = await channel.get_queue(name, ensure=False)
            consume_ok = await underlay.basic_consume(name, callback, no_ack=False)
            tags.append((queue, str(consume_ok.consumer_tag)))
        self._consumer_tags = tags
        self._consumer_tag = tags[0][1]
        first = self.broker.connections == 0
        log.info("worker.started" if first else "worker.reconnected", queue=self.names.jobs_queue,
                 prefetch=settings.prefetch, health_port=self.health.port if self.health else None)
        self.ready.set()

    def _fair_share(self, consumer: JobConsumer) -> FairShare:
        settings = self.settings
        assert self.budgets is not None  # started before the first connection
        cold = cold_slots(settings)
        fair = FairShare(consumer.on_message, slots=settings.prefetch,
                         hold=settings.prefetch if settings.sort_window else None,
                         move=consumer.move_to_overflow, may_move=consumer.may_move, warmup=self._warmup,
                         allowed_hosts=settings.allowed_hosts,
                         trace_context=None if self.tracing is None else self.tracing.continued,
                         cold_slots=cold, cold_hold=settings.sort_window if cold is not None else None,
                         weight=self.budgets.weight)
        self.metrics.waiting.set_function(lambda: fair.waiting)
        self.metrics.waiting_workspaces.set_function(lambda: fair.waiting_workspaces)
        self.metrics.cold_running.set_function(lambda: fair.cold_running)
        return fair

    async def _lost(self) -> None:
        if self.fair is not None:
            self.fair.forget()
        self._consumer_tag = None
        self._consumer_tags = []
        self.outbox.attach(None)
        self.ready.clear()
        in_flight = len(self._consumer.in_flight) if self._consumer else 0
        log.warning("worker.consumer_lost", in_flight=in_flight, note="settled again on redelivery")

    async def _drain(self, consumer: JobConsumer, fair: FairShare) -> None:
        """Stop taking jobs, let in-flight ones finish within the grace period, leave the rest unacked (the
        jobs waiting for their turn included: they start nowhere here, the broker delivers them again)."""
        if self.broker.alive:
            for queue, tag in self._consumer_tags:
                with contextlib.suppress(Exception):
                    await queue.cancel(tag)
        self._consumer_tag = None
        self._consumer_tags = []
        await fair.stop()
        log.info("worker.draining", in_flight=len(consumer.in_flight), grace_s=self.settings.shutdown_grace_s)
        try:
            await asyncio.wait_for(consumer.idle.wait(), timeout=self.settings.shutdown_grace_s)
        except TimeoutError:
            unfinished = list(consumer.in_flight)
            log.warning("worker.grace_expired", unfinished=len(unfinished), note="left unacked for redelivery")
            for task in unfinished:
                task.cancel()
            await asyncio.gather(*unfinished, return_exceptions=True)


def cold_slots(settings: Settings) -> int | None:
    """The cold lane's run slots: ``BYOK_COLD_KEY_SLOTS``, at most half the run slots (at least one); None when
    it or the sort window is 0."""
    if settings.cold_key_slots == 0 or settings.sort_window == 0:
        return None
    return min(settings.cold_key_slots, max(1, settings.prefetch // 2))


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
