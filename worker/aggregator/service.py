"""The ``byok aggregator`` process: consumers, store, anomaly detection, alert publisher and HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog

from worker.aggregator.anomalies import AnomalyRules
from worker.aggregator.api import AggregatorApi, ApiServer, ApiState
from worker.aggregator.consumer import BatchConsumer, Handler, Parser
from worker.aggregator.detector import AnomalyDetector
from worker.aggregator.handlers import BatchHandlers
from worker.aggregator.messages import parse_failed_result, parse_usage_queue
from worker.aggregator.metrics import AggregatorMetrics
from worker.aggregator.pricing import PriceTable, load_prices
from worker.aggregator.publisher import AlertPublisher
from worker.aggregator.settings import AggregatorSettings
from worker.aggregator.store import Store
from worker.aggregator.tokens import TokenRegistry
from worker.broker.connection import BrokerSupervisor, Link
from worker.broker.names import Topology
from worker.broker.publisher import Publisher
from worker.broker.topology import aggregator_topology, declare_topology
from worker.budgets.admin import BudgetAdmin
from worker.settings import is_loopback

log = structlog.get_logger("byok.aggregator")

T = TypeVar("T")


@dataclass(frozen=True)
class RunningAggregator:
    """Handed to ``on_ready`` once the aggregator consumes and serves."""

    api_url: str
    api_port: int
    store: Store
    prices: PriceTable
    metrics: AggregatorMetrics
    broker: BrokerSupervisor


@contextlib.contextmanager
def _signals_set(stop: asyncio.Event) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (RuntimeError, ValueError, NotImplementedError):  # not the main thread, or no signals here
            pass
    try:
        yield None
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


@dataclass
class _Consumers:
    """The batch consumers of the current connection and the tasks that run them."""

    consumers: tuple[BatchConsumer[Any], ...] = ()
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def consuming(self) -> bool:
        return bool(self.consumers) and all(c.consuming for c in self.consumers)

    async def start(self, link: Link, consumers: tuple[BatchConsumer[Any], ...]) -> None:
        self.consumers = consumers
        self.tasks = [asyncio.create_task(c.run(), name=f"aggregator-{c.name}") for c in consumers]
        for task in self.tasks:
            # A consumer that ends on its own is a failure: start over, and ``stop`` raises what crashed it.
            task.add_done_callback(lambda done: link.lose(f"{done.get_name()} ended"))
        for consumer in consumers:
            await consumer.start()

    async def stop(self, grace_s: float) -> None:
        """The batches in hand finish within the grace period (their acks may find the channel gone:
        redelivered, deduplicated); what crashed a consumer is raised here."""
        consumers, tasks, self.consumers, self.tasks = self.consumers, self.tasks, (), []
        for consumer in consumers:
            await consumer.stop()
        await _finish(tasks, grace_s)
        for task in tasks:
            crash = None if task.cancelled() else task.exception()
            if crash is not None:
                raise crash


async def run_aggregator(
    settings: AggregatorSettings,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[RunningAggregator], None] | None = None,
) -> None:
    """Runs until ``stop`` is set or SIGTERM/SIGINT; the batch in hand is stored and acked first.

    Raises ``BrokerUnavailable`` when the broker refuses it or stays unreachable for ``BYOK_RECONNECT_MAX_S``.
    """
    stop = stop or asyncio.Event()
    prices = load_prices(settings.prices_file)
    names = Topology(settings.topology_prefix)
    metrics = AggregatorMetrics()
    broker = BrokerSupervisor(settings.amqp_url, reconnect_max_s=settings.reconnect_max_s, process="aggregator")
    current = _Consumers()
    async with AsyncExitStack() as stack:
        store = await Store.open(settings.store_url.get_secret_value())
        stack.push_async_callback(store.close)
        alerts = AlertPublisher(store, names.alerts_exchange, metrics, lease_s=settings.alert_claim_s)
        budgets = BudgetAdmin(store.writer, prices)
        detector = AnomalyDetector(store, AnomalyRules(settings, prices), settings, budgets)
        handlers = BatchHandlers(store, detector, metrics, alerts.kick)
        tokens = TokenRegistry(settings.api_tokens_file) if settings.api_tokens_file else None
        api = ApiServer(settings.api_listen, AggregatorApi(
            store, prices, metrics, ApiState(lambda: broker.connected, lambda: broker.alive and current.consuming()),
            tokens, unreported_grace_s=settings.unreported_grace_s,
            run_tag=settings.run_tag, budgets=budgets,
        ))
        await api.start()
        _say_who_may_read(api.url, tokens, settings)
        stack.push_async_callback(api.stop)

        async def on_connected(link: Link) -> None:
            await current.stop(settings.shutdown_grace_s)  # what an attempt that failed halfway started
            setup = await link.connection.channel()
            await declare_topology(setup, aggregator_topology(names))
            await setup.close()
            confirmed = await link.connection.channel(publisher_confirms=True)
            await link.watch(confirmed)
            alerts.publisher = Publisher(confirmed)
            alerts.kick()  # what waited for the broker
            await current.start(link, (
                await _consumer(link, "usage", names.usage_queue, parse_usage_queue, handlers.usage, metrics,
                                settings),
                await _consumer(link, "results", names.results_aggregator_queue, parse_failed_result,
                                handlers.failures, metrics, settings),
            ))
            if broker.connections == 0:
                log.info("aggregator started", api=api.url, store=store.backend.value, prefix=names.prefix,
                         price_table=prices.version, batch_size=settings.aggregator_batch_size)
                if on_ready is not None:
                    on_ready(RunningAggregator(api.url, api.port, store, prices, metrics, broker))
            else:
                log.info("aggregator reconnected", connections=broker.connections + 1)

        async def on_lost() -> None:
            alerts.publisher = None
            await current.stop(settings.shutdown_grace_s)

        publishing = asyncio.create_task(alerts.run(), name="aggregator-alerts")
        try:
            with _signals_set(stop):
                await broker.run(stop, on_connected, on_lost)
        finally:
            log.info("aggregator stopping")
            try:
                await current.stop(settings.shutdown_grace_s)
            finally:
                publishing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publishing
                with contextlib.suppress(Exception):
                    await alerts.flush()
                await broker.close()
    log.info("aggregator stopped")


def _say_who_may_read(url: str, tokens: TokenRegistry | None, settings: AggregatorSettings) -> None:
    if tokens is not None:
        log.info("API and page need a bearer token", api=url, tokens_file=str(tokens.path), tokens=len(tokens))
    elif is_loopback(settings.api_listen):
        log.warning("API without tokens: listening on loopback only; set BYOK_API_TOKENS_FILE to serve others",
                    api=url)
    else:
        log.warning("API without tokens on a non-loopback address (BYOK_API_ALLOW_UNAUTHENTICATED=true): "
                    "anyone who reaches it reads every workspace", api=url)


async def _consumer(
    link: Link, name: str, queue_name: str, parse: Parser[T], handle: Handler[T],
    metrics: AggregatorMetrics, settings: AggregatorSettings,
) -> BatchConsumer[T]:
    channel = await link.connection.channel()
    await link.watch(channel)
    # Room for the next batch to arrive while one is being stored.
    await channel.set_qos(prefetch_count=min(2 * settings.aggregator_batch_size, 65535))
    queue = await channel.get_queue(queue_name, ensure=False)
    return BatchConsumer(
        name, queue, parse, handle, metrics,
        batch_size=settings.aggregator_batch_size, wait_s=settings.aggregator_batch_wait_ms / 1000,
    )


async def _finish(tasks: list[asyncio.Task[None]], grace_s: float) -> None:
    """Lets the batches in hand finish within the grace period; the rest stays unacked."""
    if not tasks:  # never connected, or stopped already
        return
    _, pending = await asyncio.wait(tasks, timeout=max(grace_s, 0.1))
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
