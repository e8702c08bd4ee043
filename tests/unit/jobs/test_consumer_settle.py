"""How ``JobConsumer`` settles a job message, without a broker: a fake message records its ack or reject, a fake
publisher holds each publish until the test confirms it, a fake runner returns the outcome under test."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from schemas.models import CompletionResult, ErrorCode, Output, Provider, ResultError, Status, TokenCounts, UsageEvent
from tests.waiting import wait_until
from worker.broker.names import HEADER_ATTEMPTS, HEADER_ERROR, HEADER_REASON, Topology
from worker.jobs.consumer import JobConsumer
from worker.jobs.metrics import WorkerMetrics
from worker.jobs.pipeline import Completed, DeadLetter, Delivery, Outcome, RetryLater, Unroutable

NAMES = Topology("t")
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
BODY = b'{"job_id": "job-1"}'


@dataclass
class Channel:
    is_closed: bool = False


@dataclass
class FakeMessage:
    """The parts of an incoming message the consumer reads, and how it was settled (in ``settled``)."""

    message_id: str = "job-1"
    body: bytes = BODY
    redelivered: bool = False
    routing_key: str = "completion"
    reply_to: str | None = None
    correlation_id: str | None = "corr-1"
    headers: dict[str, Any] = field(default_factory=dict)
    channel: Channel = field(default_factory=Channel)
    settled: list[str] = field(default_factory=list)

    async def ack(self) -> None:
        self.settled.append("ack")

    async def reject(self, requeue: bool = False) -> None:
        self.settled.append(f"reject(requeue={requeue})")


@dataclass
class Published:
    exchange: str
    routing_key: str
    body: bytes
    message_id: str | None
    headers: dict[str, Any] | None


@dataclass
class FakePublisher:
    """A publish returns when the test confirms it (``confirm``), or fails when ``fail_with`` is set."""

    hold: bool = False
    fail_with: Exception | None = None
    pending: list[Published] = field(default_factory=list)
    confirmed: list[Published] = field(default_factory=list)
    _confirm: asyncio.Event = field(default_factory=asyncio.Event)

    async def publish(self, exchange: str, routing_key: str, body: bytes, *, message_id: str | None = None,
                      headers: dict[str, Any] | None = None, correlation_id: str | None = None,
                      reply_to: str | None = None) -> None:
        published = Published(exchange, routing_key, body, message_id, headers)
        if self.fail_with is not None:
            raise self.fail_with
        self.pending.append(published)
        if self.hold:
            await self._confirm.wait()
        self.pending.remove(published)
        self.confirmed.append(published)

    def confirm(self) -> None:
        self._confirm.set()


@dataclass
class FakeRunner:
    """Returns ``outcome`` (or raises ``crash``); ``block`` keeps a run going until it is cancelled."""

    outcome: Outcome | None = None
    crash: Exception | None = None
    block: bool = False
    runs: list[Delivery] = field(default_factory=list)

    async def run(self, delivery: Delivery) -> Outcome:
        self.runs.append(delivery)
        if self.block:
            await asyncio.Event().wait()
        if self.crash is not None:
            raise self.crash
        assert self.outcome is not None
        return self.outcome


def succeeded() -> Completed:
    result = CompletionResult(
        job_id="job-1", workspace_id="ws-1", automation_id="auto-1", status=Status.SUCCEEDED,
        provider=Provider.OPENAI, model="gpt-4o-mini", output=Output(text="hi", finish_reason="stop"),
        usage=TokenCounts(input_tokens=3, output_tokens=1), attempts=1, latency_ms=12.0, finished_at=NOW,
    )
    usage = UsageEvent(
        event_id="ev-1", job_id="job-1", workspace_id="ws-1", automation_id="auto-1", provider=Provider.OPENAI,
        model="gpt-4o-mini", occurred_at=NOW, latency_ms=12.0, status=Status.SUCCEEDED, input_tokens=3,
        output_tokens=1,
    )
    return Completed(result, usage, None)


def failed() -> Completed:
    result = CompletionResult(
        job_id="job-1", workspace_id="ws-1", status=Status.FAILED, provider=Provider.OPENAI, model="gpt-4o-mini",
        error=ResultError(code=ErrorCode.AUTH_FAILED, message="the provider refused the key", retryable=False,
                          provider_status=401),
        attempts=1, latency_ms=12.0, finished_at=NOW,
    )
    return Completed(result, None, DeadLetter(ErrorCode.AUTH_FAILED, "the provider refused the key"))


def consumer_of(runner: FakeRunner, publisher: FakePublisher) -> JobConsumer:
    return JobConsumer(runner, publisher, NAMES, WorkerMetrics())  # type: ignore[arg-type]


async def settle(consumer: JobConsumer, message: FakeMessage) -> None:
    consumer.on_message(message)  # type: ignore[arg-type]
    await asyncio.wait_for(consumer.idle.wait(), 5)


def where(published: list[Published]) -> list[tuple[str, str]]:
    return sorted((p.exchange, p.routing_key) for p in published)


async def test_an_outcome_is_published_and_confirmed_before_the_ack() -> None:
    publisher = FakePublisher(hold=True)
    consumer = consumer_of(FakeRunner(succeeded()), publisher)
    message = FakeMessage(reply_to="amq.gen-reply")
    consumer.on_message(message)  # type: ignore[arg-type]
    await wait_until(lambda: len(publisher.pending) == 3, what="the result, the reply and the usage event sent")
    assert message.settled == [], "acked before the broker confirmed what the job produced"
    publisher.confirm()
    await asyncio.wait_for(consumer.idle.wait(), 5)
    assert message.settled == ["ack"]
    assert where(publisher.confirmed) == [("", "amq.gen-reply"), ("t.results", "ws-1.auto-1.succeeded"),
                                          ("t.usage", "ws-1.openai")]
    by_exchange = {p.exchange: p for p in publisher.confirmed}
    assert orjson.loads(by_exchange["t.results"].body)["job_id"] == "job-1"
    assert by_exchange[""].body == by_exchange["t.results"].body, "the reply is the result"
    assert (by_exchange["t.usage"].message_id, orjson.loads(by_exchange["t.usage"].body)["event_id"]) == ("ev-1",
                                                                                                           "ev-1")


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


async def test_a_failed_job_is_published_and_dead_lettered_with_its_code_then_acked() -> None:
    publisher = FakePublisher()
    message = FakeMessage(headers={"x-custom": "dropped", "CC": ["elsewhere"], "traceparent": TRACEPARENT})
    await settle(consumer_of(FakeRunner(failed()), publisher), message)
    assert message.settled == ["ack"]
    assert where(publisher.confirmed) == [("t.dlx", ""), ("t.results", "ws-1._.failed")]
    (dead,) = [p for p in publisher.confirmed if p.exchange == "t.dlx"]
    assert dead.body == BODY, "the dead letter keeps the original body"
    # Only the trace context of the publisher's headers travels on: never its routing headers (CC) or others.
    assert dead.headers == {"traceparent": TRACEPARENT, HEADER_ERROR: "auth_failed",
                            HEADER_REASON: "the provider refused the key"}


async def test_an_unroutable_message_is_dead_lettered_only_then_acked() -> None:
    publisher = FakePublisher()
    message = FakeMessage()
    await settle(consumer_of(FakeRunner(Unroutable(DeadLetter(ErrorCode.INVALID_JOB, "not JSON"))), publisher),
                 message)
    assert message.settled == ["ack"]
    assert [(p.exchange, p.body, p.headers) for p in publisher.confirmed] == [
        ("t.dlx", BODY, {HEADER_ERROR: "invalid_job", HEADER_REASON: "not JSON"})]


async def test_a_retry_goes_to_the_delay_queue_then_the_message_is_acked() -> None:
    publisher = FakePublisher()
    message = FakeMessage()
    await settle(consumer_of(FakeRunner(RetryLater(3.0, 1, NOW, "provider answered 500")), publisher), message)
    assert message.settled == ["ack"]
    (delayed,) = publisher.confirmed
    assert (delayed.exchange, delayed.routing_key, delayed.body) == ("t.jobs.delay", "5000", BODY)
    assert delayed.headers is not None
    assert delayed.headers[HEADER_ATTEMPTS] == 1


async def test_a_handler_crash_rejects_with_requeue() -> None:
    publisher = FakePublisher()
    message = FakeMessage()
    await settle(consumer_of(FakeRunner(crash=RuntimeError("a bug")), publisher), message)
    assert message.settled == ["reject(requeue=True)"]
    assert publisher.confirmed == []


async def test_a_cancelled_job_is_left_unacked_for_redelivery() -> None:
    runner = FakeRunner(block=True)
    consumer = consumer_of(runner, FakePublisher())
    message = FakeMessage()
    consumer.on_message(message)  # type: ignore[arg-type]
    await wait_until(lambda: runner.runs, what="the job running")
    (task,) = consumer.in_flight
    task.cancel()  # what a shutdown past its grace period does
    with pytest.raises(asyncio.CancelledError):
        await task
    assert message.settled == [], "a cancelled job is neither acked nor rejected"


async def test_a_publish_that_fails_is_not_acked() -> None:
    publisher = FakePublisher(fail_with=ConnectionError("publish not confirmed"))
    message = FakeMessage()
    await settle(consumer_of(FakeRunner(succeeded()), publisher), message)
    assert message.settled == ["reject(requeue=True)"]


async def test_a_publish_that_fails_with_its_channel_gone_is_left_to_the_broker() -> None:
    publisher = FakePublisher(fail_with=ConnectionError("channel closed"))
    message = FakeMessage(channel=Channel(is_closed=True))
    await settle(consumer_of(FakeRunner(succeeded()), publisher), message)
    assert message.settled == [], "the delivery died with its channel: the broker redelivers it"


async def test_a_redelivered_job_that_ran_here_is_settled_from_memory() -> None:
    runner = FakeRunner(succeeded())
    publisher = FakePublisher()
    consumer = consumer_of(runner, publisher)
    first, again = FakeMessage(), FakeMessage(redelivered=True)
    await settle(consumer, first)
    await settle(consumer, again)
    assert (first.settled, again.settled) == (["ack"], ["ack"])
    assert len(runner.runs) == 1, "the provider is not called twice for one job"
    results = [p for p in publisher.confirmed if p.exchange == "t.results"]
    usage = [p for p in publisher.confirmed if p.exchange == "t.usage"]
    assert len(results) == 2 and results[0].body == results[1].body, "the same result, published again"
    assert [p.message_id for p in usage] == ["ev-1", "ev-1"], "the same usage event id: counted once"


async def test_only_a_redelivery_is_settled_from_memory() -> None:
    runner = FakeRunner(succeeded())
    consumer = consumer_of(runner, FakePublisher())
    await settle(consumer, FakeMessage())
    await settle(consumer, FakeMessage(redelivered=False))
    assert len(runner.runs) == 2, "a new message with the same id is a new job"


async def test_a_moved_copy_of_a_job_that_ran_here_is_settled_from_memory() -> None:
    """The original's ack was lost after its move: it came back, ran here, and its overflow copy follows."""
    runner = FakeRunner(succeeded())
    consumer = consumer_of(runner, FakePublisher())
    await settle(consumer, FakeMessage(redelivered=True))
    copy = FakeMessage(routing_key="t.jobs.overflow")
    await settle(consumer, copy)
    assert copy.settled == ["ack"]
    assert len(runner.runs) == 1, "the provider is not called twice for one job"


async def test_a_retry_is_not_remembered() -> None:
    runner = FakeRunner(RetryLater(3.0, 1, NOW, "provider answered 500"))
    consumer = consumer_of(runner, FakePublisher())
    await settle(consumer, FakeMessage())
    await settle(consumer, FakeMessage(redelivered=True))
    assert len(runner.runs) == 2, "only a final outcome is settled from memory"
