"""The aggregator's queues on the real broker: a consumer the broker cancels is noticed and comes back, and a
message that is never acked ends in ``<prefix>.aggregator.dead`` after an explicit delivery limit."""

from __future__ import annotations

from typing import Any

import aio_pika
import pytest
import structlog

from tests.aggregator.helpers import usage
from tests.aggregator.test_service import broker, publish_usage, quiet_rules
from tests.broker import running_aggregator
from tests.waiting import wait_until
from worker.aggregator.consumption import consumption
from worker.broker.names import Topology
from worker.broker.topology import AGGREGATOR_DELIVERY_LIMIT, aggregator_topology, declare_topology
from worker.settings import Settings


@pytest.mark.timeout(60)
async def test_a_consumer_the_broker_cancels_is_noticed_and_the_aggregator_consumes_again(settings: Settings) -> None:
    """Deleting ``byok.usage.aggregator`` under a running aggregator cancels its consumer (basic.cancel from the
    broker): the aggregator starts over on a new connection, declares the queue again and counts what follows."""
    names = Topology(settings.topology_prefix)
    with structlog.testing.capture_logs() as logs:
        async with running_aggregator(quiet_rules(settings)) as agg, broker(settings) as channel:
            await publish_usage(channel, names, [usage("2025-03-01 10:00", workspace="ws-cancel", input_tokens=5)])

            async def requests() -> Any:
                summary = await consumption(agg.store, agg.prices, "ws-cancel", None, None, ())
                return summary["totals"]["requests"]

            await wait_until(lambda: _equals(requests, 1), what="the first event counted")
            await channel.queue_delete(names.usage_queue)
            await wait_until(lambda: agg.broker.connections == 2 and agg.broker.alive, timeout=30,
                             what="the aggregator consuming again on a new connection")
            await publish_usage(channel, names, [usage("2025-03-01 10:01", workspace="ws-cancel", input_tokens=7)])
            await wait_until(lambda: _equals(requests, 2), what="the event after the cancel counted")
    lost = [e for e in logs if e["event"] == "broker.connection_lost"]
    assert [e["reason"] for e in lost] == ["consumer cancelled by the broker"]


async def _equals(probe: Any, wanted: int) -> bool:
    return bool(await probe() == wanted)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("queue", ["usage", "results"])
async def test_a_message_never_acked_is_dead_lettered_after_the_delivery_limit(settings: Settings, queue: str) -> None:
    """Each delivery returned unacked (as when the aggregator crashes on it) counts; past the explicit limit the
    broker dead-letters the message to ``<prefix>.aggregator.dead`` instead of delivering it forever (RabbitMQ
    3.x has no limit unless the queue declares one)."""
    names = Topology(settings.topology_prefix)
    queue_name = names.usage_queue if queue == "usage" else names.results_aggregator_queue
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel, aggregator_topology(names))
        await channel.default_exchange.publish(
            aio_pika.Message(b'{"poison": true}', delivery_mode=aio_pika.DeliveryMode.PERSISTENT, message_id="p-1"),
            routing_key=queue_name,
        )
        source = await channel.get_queue(queue_name)
        deliveries = 0
        for _ in range(AGGREGATOR_DELIVERY_LIMIT + 5):
            message = await source.get(no_ack=False, fail=False)
            if message is None:
                break
            deliveries += 1
            await message.nack(requeue=True)
        dead_queue = await channel.get_queue(names.aggregator_dead_letter_queue)
        dead = await wait_until(lambda: dead_queue.get(no_ack=True, fail=False), timeout=10,
                                what="the message in the aggregator's dead-letter queue")
    assert deliveries == AGGREGATOR_DELIVERY_LIMIT + 1, "the first delivery and each redelivery up to the limit"
    assert dead.body == b'{"poison": true}' and dead.message_id == "p-1"
    assert (dead.headers or {}).get("x-first-death-reason") == "delivery_limit"
