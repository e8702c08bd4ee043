"""The ``byok aggregator`` process: consumers, store, anomaly detection, alert publisher and HTTP API."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import TypeVar

import aio_pika
import structlog
from aio_pika.abc import AbstractRobustConnection

from worker.aggregator.anomalies import AnomalyRules
from worker.aggregator.api import AggregatorApi, ApiServer, ApiState
from worker.aggregator.consumer import BatchConsumer, Handler, Parser
from worker.aggregator.detector import AnomalyDetector
from worker.aggregator.handlers import BatchHandlers
from worker.aggregator.messages import parse_failed_result, parse_usage
from worker.aggregator.metrics import AggregatorMetrics
from worker.aggregator.pricing import PriceTable, load_prices
from worker.aggregator.publisher import AlertPublisher
from worker.aggregator.settings import AggregatorSettings, load_aggregator_settings
from worker.aggregator.store import Store
from worker.broker.names import Topology
from worker.broker.topology import aggregator_topology, declare_topology
from worker.settings import Settings

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


def _connected(connection: AbstractRobustConnection) -> bool:
    reconnecting = bool(getattr(connection, "reconnecting", False))
    return not connection.is_closed and not reconnecting


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


async def run_aggregator(
    settings: Settings,
    *,
    stop: asyncio.Event | None = None,
    aggregator_settings: AggregatorSettings | None = None,
    on_ready: Callable[[RunningAggregator], None] | None = None,
) -> None:
    """Runs until ``stop`` is set or SIGTERM/SIGINT; the batch in hand is stored and acked first."""
    agg = aggregator_settings or load_aggregator_settings()
    stop = stop or asyncio.Event()
    prices = load_prices(settings.prices_file)
    names = Topology(settings.topology_prefix)
    metrics = AggregatorMetrics()
    async with AsyncExitStack() as stack:
        store = await Store.open(settings.store_url.get_secret_value())
        stack.push_async_callback(store.close)
        connection = await aio_pika.connect_robust(settings.amqp_url.get_secret_value())
        stack.push_async_callback(connection.close)
        setup = await connection.channel()
        await declare_topology(setup, aggregator_topology(names))
        await setup.close()

        publisher = AlertPublisher(
            store, await connection.channel(publisher_confirms=True), names.alerts_exchange, metrics,
            lease_s=agg.alert_claim_s,
        )
        detector = AnomalyDetector(store, AnomalyRules(agg, prices), agg)
        handlers = BatchHandlers(store, detector, metrics, publisher.kick)
        consumers = (
            await _consumer(connection, "usage", names.usage_queue, parse_usage, handlers.usage, metrics, agg),
            await _consumer(connection, "results", names.results_aggregator_queue, parse_failed_result,
                            handlers.failures, metrics, agg),
        )
        api = ApiServer(settings.api_listen, AggregatorApi(
            store, prices, metrics,
            ApiState(lambda: _connected(connection), lambda: all(c.consuming for c in consumers)),
        ))
        await api.start()
        stack.push_async_callback(api.stop)

        tasks = [asyncio.create_task(c.run(), name=f"aggregator-{c.name}") for c in consumers]
        publishing = asyncio.create_task(publisher.run(), name="aggregator-alerts")
        for consumer in consumers:
            await consumer.start()
        log.info("aggregator started", api=api.url, store=store.backend.value, prefix=names.prefix,
                 price_table=prices.version, batch_size=agg.aggregator_batch_size)
        if on_ready is not None:
            on_ready(RunningAggregator(api.url, api.port, store, prices, metrics))
        try:
            with _signals_set(stop):
                await _until_stopped(stop, tasks)
        finally:
            log.info("aggregator stopping")
            for consumer in consumers:
                await consumer.stop()
            await _finish(tasks, settings.shutdown_grace_s)
            publishing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await publishing
            with contextlib.suppress(Exception):
                await publisher.flush()
    log.info("aggregator stopped")


async def _consumer(
    connection: AbstractRobustConnection, name: str, queue_name: str, parse: Parser[T], handle: Handler[T],
    metrics: AggregatorMetrics, agg: AggregatorSettings,
) -> BatchConsumer[T]:
    channel = await connection.channel()
    # Room for the next batch to arrive while one is being stored.
    await channel.set_qos(prefetch_count=min(2 * agg.aggregator_batch_size, 65535))
    queue = await channel.get_queue(queue_name, ensure=False)
    return BatchConsumer(
        name, queue, parse, handle, metrics,
        batch_size=agg.aggregator_batch_size, wait_s=agg.aggregator_batch_wait_ms / 1000,
    )


async def _until_stopped(stop: asyncio.Event, tasks: list[asyncio.Task[None]]) -> None:
    """Returns when ``stop`` is set; a consumer task ending on its own is a failure, raised here."""
    stopping = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait([stopping, *tasks], return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    for task in done:
        if task is not stopping:
            task.result()  # re-raises what crashed it
            raise RuntimeError(f"{task.get_name()} ended unexpectedly")


async def _finish(tasks: list[asyncio.Task[None]], grace_s: float) -> None:
    """Lets the batches in hand finish within the grace period; the rest stays unacked."""
    _, pending = await asyncio.wait(tasks, timeout=max(grace_s, 0.1))
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
