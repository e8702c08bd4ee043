"""Stored alerts reach ``<prefix>.alerts`` on the real broker: persistent, confirmed, at least once."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractChannel, AbstractQueue

from tests.aggregator.helpers import at
from tests.waiting import wait_until
from worker.aggregator.alerts import AlertKind, make_alert
from worker.aggregator.metrics import AggregatorMetrics
from worker.aggregator.publisher import AlertPublisher
from worker.aggregator.store import Store
from worker.broker.names import Topology
from worker.broker.publisher import Publisher
from worker.broker.topology import aggregator_topology, declare_topology

WINDOW = (at("2025-03-01 10:00"), at("2025-03-01 11:00"))


@pytest.fixture
async def channel(amqp_url: str, topology_prefix: str) -> AsyncIterator[AbstractChannel]:
    connection = await aio_pika.connect_robust(amqp_url)
    try:
        opened = await connection.channel(publisher_confirms=True)
        await declare_topology(opened, aggregator_topology(Topology(topology_prefix)))
        yield opened
    finally:
        await connection.close()


async def subscribe(channel: AbstractChannel, prefix: str) -> AbstractQueue:
    queue = await channel.declare_queue(exclusive=True, auto_delete=True)
    await queue.bind(Topology(prefix).alerts_exchange, routing_key="#")
    return queue


async def drain(queue: AbstractQueue, expected: int) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Reads the queue with basic.get rather than a consumer (broker_tap): every alert was published with a
    confirm before this is called, so all of them are in the queue already, and one too many shows at once."""
    got = []

    async def all_taken() -> bool:
        message = await queue.get(fail=False)
        if message is not None:
            await message.ack()
            got.append(message)
        return len(got) >= expected

    await wait_until(all_taken, timeout=10, what=lambda: f"{expected} alerts ({len(got)} so far)")
    assert await queue.get(fail=False) is None, "more alerts than expected"
    return got


async def test_alerts_are_published_once_with_their_routing_key(
    store: Store, channel: AbstractChannel, topology_prefix: str
) -> None:
    queue = await subscribe(channel, topology_prefix)
    spike = make_alert(AlertKind.SPIKE, "acme", "*:tokens", WINDOW, "a spike", {"value": 156000})
    budget = make_alert(AlertKind.BUDGET, "beta", "80pct", WINDOW, "80 %", {"spent_usd": 8.5})
    await store.add_alerts([spike, budget])
    publisher = AlertPublisher(store, Topology(topology_prefix).alerts_exchange, AggregatorMetrics(),
                               publisher=Publisher(channel))
    assert await publisher.flush() == 2
    assert await publisher.flush() == 0
    messages = await drain(queue, 2)
    by_key = {m.routing_key: m for m in messages}
    assert set(by_key) == {"acme.spike", "beta.budget"}
    message = by_key["acme.spike"]
    assert message.content_type == "application/json"
    assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert message.message_id == spike.alert_id
    assert orjson.loads(message.body) == spike.as_dict()
    assert await store.unpublished_alerts() == 0


async def test_a_claimed_alert_is_published_by_another_after_the_lease(
    store: Store, channel: AbstractChannel, topology_prefix: str
) -> None:
    """A publisher that claimed an alert and died: the lease runs out and another one publishes it."""
    queue = await subscribe(channel, topology_prefix)
    await store.add_alerts([make_alert(AlertKind.ERROR_BURST, "acme", "auth_failed", WINDOW, "401s", {})])
    assert len(await store.claim_unpublished(10, lease_s=0.3)) == 1  # and then nothing: it crashed
    exchange = Topology(topology_prefix).alerts_exchange
    other = AlertPublisher(store, exchange, AggregatorMetrics(), publisher=Publisher(channel), lease_s=0.3)
    assert await other.flush() == 0  # still leased
    assert await wait_until(other.flush, what="the alert published once its lease ran out") == 1
    assert [m.routing_key for m in await drain(queue, 1)] == ["acme.error_burst"]
