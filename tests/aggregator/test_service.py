"""End to end: usage events and failed results through the real broker into ``run_aggregator``, read back
over HTTP and with the consumption function; alerts out on the alerts exchange."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import aiohttp
import pytest
from aio_pika.abc import AbstractChannel

from schemas.models import CompletionResult, UsageEvent
from tests.aggregator.helpers import aggregator_settings, at, failed, usage
from tests.aggregator.test_consumption import TOTALS, dataset
from tests.broker import broker_tap, running_aggregator
from tests.faults import TcpProxy, broker_closes
from tests.waiting import wait_until
from worker.aggregator.consumption import consumption
from worker.aggregator.service import RunningAggregator
from worker.aggregator.settings import AggregatorSettings
from worker.broker.names import Topology, result_routing_key, usage_routing_key
from worker.settings import Settings

T = TypeVar("T")


def quiet_rules(settings: Settings, **overrides: Any) -> AggregatorSettings:
    """The aggregator on the test's broker and store, with thresholds no test data reaches unless asked."""
    return aggregator_settings(settings, **{"aggregator_batch_wait_ms": 20, "spike_floor_tokens": 10**12,
                                            "spike_floor_cost_usd": 10**6, "error_burst_threshold": 3, **overrides})


@asynccontextmanager
async def broker(settings: Settings) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect_robust(settings.amqp_url.get_secret_value())
    try:
        yield await connection.channel(publisher_confirms=True)
    finally:
        await connection.close()


async def publish(channel: AbstractChannel, exchange: str, routing_key: str, body: bytes) -> None:
    target = await channel.get_exchange(exchange, ensure=False)
    await target.publish(
        aio_pika.Message(body, content_type="application/json", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
        routing_key=routing_key,
    )


async def publish_usage(channel: AbstractChannel, names: Topology, events: Sequence[UsageEvent]) -> None:
    for event in events:
        await publish(channel, names.usage_exchange, usage_routing_key(event.workspace_id, event.provider.value),
                      event.model_dump_json(by_alias=True).encode())


async def publish_results(channel: AbstractChannel, names: Topology, results: Sequence[CompletionResult]) -> None:
    for result in results:
        await publish(channel, names.results_exchange,
                      result_routing_key(result.workspace_id, result.automation_id, result.status.value),
                      result.model_dump_json(by_alias=True).encode())


def accepted(probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool]) -> Callable[[], Awaitable[T | None]]:
    """A condition for ``wait_until``: what ``probe`` reads, once ``accept`` takes it."""

    async def condition() -> T | None:
        value = await probe()
        return value if accept(value) else None

    return condition


async def get_json(url: str, params: dict[str, str] | None = None) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def test_usage_and_failures_flow_to_the_api_and_the_alerts_exchange(
    settings: Settings, store_url: str, prices_file: str
) -> None:
    names = Topology(settings.topology_prefix)
    events = dataset()
    agg = quiet_rules(settings, prices_file=prices_file, store_url=store_url)
    async with (running_aggregator(agg) as running, broker(settings) as channel,
                broker_tap(settings, usage=False) as tap):
        await publish(channel, names.usage_exchange, "acme.openai", b"this is not JSON")
        await publish(channel, names.usage_exchange, "acme.openai", b'{"schema": "byok.usage_event.v1"}')
        await publish_usage(channel, names, [*events, events[0], events[3]])  # two republished events
        await publish_results(channel, names, [failed("2025-03-01 10:00:00"), failed("2025-03-01 10:00:30")])
        await publish_results(channel, names, [failed("2025-03-01 10:01:00")])

        base = running.api_url
        url = f"{base}/v1/workspaces/acme/consumption"
        body = await wait_until(accepted(lambda: get_json(url), lambda b: b["totals"]["requests"] >= 6),
                                what="six billed calls in the consumption")
        assert body["totals"] == TOTALS
        assert body == {**await consumption(running.store, running.prices, "acme"), "budgets": []}
        grouped = await get_json(url, {"group_by": "day,automation", "since": "2025-03-01T10:30:00Z"})
        assert grouped == {**await consumption(running.store, running.prices, "acme", since=at("2025-03-01 10:30"),
                                               group_by=("day", "automation")), "budgets": []}

        # acme's first batch used three models: the earliest is its baseline, the two others are new
        anomalies = await wait_until(accepted(lambda: get_json(f"{base}/v1/workspaces/acme/anomalies"),
                                              lambda b: len(b["anomalies"]) >= 3), what="three anomalies")
        assert sorted((a["kind"], a["details"].get("code") or a["details"]["model"])
                      for a in anomalies["anomalies"]) == [
            ("error_burst", "auth_failed"), ("unexpected_model", "claude-x"), ("unexpected_model", "mistral-mystery")]
        burst = next(a for a in anomalies["anomalies"] if a["kind"] == "error_burst")
        assert (burst["details"]["count"], burst["details"]["threshold"]) == (3, 3)
        await tap.wait_for(lambda: len(tap.alerts) >= 3)
        assert sorted(m.routing_key for m in tap.alerts) == [
            "acme.error_burst", "acme.unexpected_model", "acme.unexpected_model"]
        published = {m.routing_key: m.json for m in tap.alerts}
        assert published["acme.error_burst"] == burst

        health = await get_json(f"{base}/healthz")
        assert health == {"status": "ok", "broker_connected": True, "consuming": True, "store": "ok"}
        rejected = running.metrics.messages.labels(queue="usage", outcome="rejected")
        await wait_until(lambda: rejected._value.get() == 2, what="the two malformed usage messages rejected")
        assert _counter(running, "new") == len(events)
        assert _counter(running, "duplicate") == 2
        async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as response:
            text = await response.text()
        assert 'byok_aggregator_messages_total{outcome="rejected",queue="usage"} 2.0' in text

    # everything was settled: accepted messages acked, malformed ones rejected without requeue
    async with broker(settings) as channel:
        usage_queue = await channel.declare_queue(names.usage_queue, passive=True)
        assert usage_queue.declaration_result.message_count == 0


async def test_two_aggregators_share_one_queue_and_one_postgresql(settings: Settings, pg_url: str) -> None:
    names = Topology(settings.topology_prefix)
    events = [usage(f"2025-03-01 10:{i % 60:02d}", automation=f"a{i % 3}", input_tokens=10, output_tokens=1)
              for i in range(300)]
    agg = quiet_rules(settings, store_url=pg_url, aggregator_batch_size=10)  # small prefetch: both get messages
    async with (running_aggregator(agg) as first, running_aggregator(agg) as second,
                broker(settings) as channel):
        await publish_usage(channel, names, events + events[:100])  # 100 republished
        totals = await wait_until(
            accepted(lambda: _totals(first), lambda t: t["requests"] >= 300 and _settled(first, second) >= 400),
            what="300 requests counted and 400 messages settled",
        )
        assert (totals["requests"], totals["input_tokens"], totals["output_tokens"]) == (300, 3000, 300)
        counts = [_counter(a, r) for a in (first, second) for r in ("new", "duplicate")]
        assert counts[0] + counts[2] == 300  # new, across both
        assert counts[1] + counts[3] == 100  # duplicates, across both
        assert counts[0] > 0 and counts[2] > 0, f"one aggregator took everything: {counts}"
        assert await _totals(second) == totals


async def _totals(running: RunningAggregator) -> dict[str, Any]:
    result = await consumption(running.store, running.prices, "acme")
    totals: dict[str, Any] = result["totals"]
    return totals


def _counter(running: RunningAggregator, result: str) -> int:
    return int(running.metrics.usage_events.labels(result=result)._value.get())


def _settled(*running: RunningAggregator) -> int:
    return sum(_counter(a, r) for a in running for r in ("new", "duplicate"))


@pytest.mark.timeout(60)
async def test_the_aggregator_consumes_again_after_the_broker_closes_its_connection(settings: Settings) -> None:
    """Explicit reconnection, as the worker's: health drops while the broker is away, then a fresh connection
    declares the topology again and the consumers come back."""
    names = Topology(settings.topology_prefix)
    parts = urlsplit(settings.amqp_url.get_secret_value())
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)  # to keep it away while health is read
    await proxy.start()
    agg = quiet_rules(settings, amqp_url=urlunsplit(parts._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}")))
    try:
        async with running_aggregator(agg) as running, broker(settings) as channel, aiohttp.ClientSession() as http:
            await publish_usage(channel, names, [usage("2025-03-01 10:00", input_tokens=7)])
            await wait_until(accepted(lambda: _totals(running), lambda t: t["requests"] == 1))
            proxy.refusing = True
            closed = await asyncio.to_thread(broker_closes, parts.path.lstrip("/"), running.broker.connection_name)
            assert closed == 1
            await wait_until(accepted(lambda: _health(http, running), lambda h: h["consuming"] is False))
            proxy.refusing = False
            health = await wait_until(accepted(lambda: _health(http, running), lambda h: h["status"] == "ok"))
            assert health == {"status": "ok", "broker_connected": True, "consuming": True, "store": "ok"}
            assert running.broker.connections == 2
            await publish_usage(channel, names, [usage("2025-03-01 10:05", input_tokens=5)])
            totals = await wait_until(accepted(lambda: _totals(running), lambda t: t["requests"] == 2))
            assert totals["input_tokens"] == 12
    finally:
        await proxy.stop()


async def _health(http: aiohttp.ClientSession, running: RunningAggregator) -> Any:
    async with http.get(f"{running.api_url}/healthz") as response:
        return await response.json()
