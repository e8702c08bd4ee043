"""``JobConsumer`` when the broker refuses a publish (basic.nack), and when a job crashes on the last delivery its
queue allows: fakes from ``test_consumer_settle`` (no broker)."""

from __future__ import annotations

from aiormq.exceptions import DeliveryError, PublishError
from pamqp.commands import Basic

from tests.unit.jobs.test_consumer_settle import (
    BODY,
    NAMES,
    FakeMessage,
    FakePublisher,
    FakeRunner,
    settle,
    succeeded,
)
from worker.broker.names import HEADER_ERROR, HEADER_REASON
from worker.jobs.consumer import JobConsumer
from worker.jobs.metrics import WorkerMetrics


def consumer_of(runner: FakeRunner, publisher: FakePublisher, **options: int) -> JobConsumer:
    return JobConsumer(runner, publisher, NAMES, WorkerMetrics(), **options)  # type: ignore[arg-type]


async def test_a_refused_publish_leaves_the_message_unacked_and_asks_for_a_new_connection() -> None:
    publisher = FakePublisher(fail_with=DeliveryError(None, Basic.Nack(delivery_tag=1)))
    runner = FakeRunner(succeeded())
    consumer = consumer_of(runner, publisher)
    refused: list[str] = []
    consumer.on_publish_refused = lambda: refused.append("lose the link")
    message = FakeMessage()
    await settle(consumer, message)
    assert message.settled == [], "neither acked nor requeued: the broker redelivers it on the new connection"
    assert refused == ["lose the link"]

    publisher.fail_with = None
    again = FakeMessage(redelivered=True)
    await settle(consumer, again)
    assert again.settled == ["ack"]
    assert len(runner.runs) == 1, "settled again from memory: no second provider call"


async def test_a_returned_publish_is_a_crash_not_a_refused_channel() -> None:
    returned = PublishError.__new__(PublishError)  # aiormq builds it from the returned message itself
    Exception.__init__(returned, "NO_ROUTE")
    publisher = FakePublisher(fail_with=returned)
    consumer = consumer_of(FakeRunner(succeeded()), publisher)
    refused: list[str] = []
    consumer.on_publish_refused = lambda: refused.append("lose the link")
    message = FakeMessage()
    await settle(consumer, message)
    assert message.settled == ["reject(requeue=True)"] and refused == []


async def test_a_crash_on_the_last_delivery_the_queue_allows_is_dead_lettered_with_delivery_limit() -> None:
    publisher = FakePublisher()
    consumer = consumer_of(FakeRunner(crash=RuntimeError("a bug")), publisher, delivery_limit=5)
    earlier = FakeMessage(redelivered=True, headers={"x-delivery-count": 4})
    await settle(consumer, earlier)
    assert earlier.settled == ["reject(requeue=True)"], "the queue allows one more delivery"
    last = FakeMessage(redelivered=True, headers={"x-delivery-count": 5})
    await settle(consumer, last)
    assert last.settled == ["ack"]
    (dead,) = publisher.confirmed
    assert (dead.exchange, dead.body) == ("t.dlx", BODY)
    assert dead.headers == {HEADER_ERROR: "delivery_limit", HEADER_REASON: (
        "the worker failed on each of the 6 deliveries the queue allows (last: RuntimeError); not attempted again")}
