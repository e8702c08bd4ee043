"""The redelivery memo keeps the bodies it republishes, bounded in total bytes, and still settles a
redelivered job from memory; what the worker publishes is capped below the broker's message size."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import orjson
from aio_pika.abc import AbstractIncomingMessage

from schemas.models import (
    CompletionResult,
    ErrorCode,
    Output,
    Provider,
    Status,
    TokenCounts,
    UsageEvent,
)
from worker.broker.names import MAX_MESSAGE_BYTES, Topology
from worker.jobs.consumer import JobConsumer
from worker.jobs.metrics import WorkerMetrics
from worker.jobs.pipeline import Completed, Delivery, JobRunner
from worker.jobs.settled import RAW_USAGE_DROPPED, SettledMemo, settle

NAMES = Topology("memo")
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)


def completed(job_id: str, text: str, raw_usage: dict[str, Any] | None = None) -> Completed:
    counts = TokenCounts(input_tokens=3, output_tokens=1)
    result = CompletionResult(job_id=job_id, workspace_id="ws-memo", status=Status.SUCCEEDED, provider=Provider.OLLAMA,
                              model="llama3", output=Output(text=text, finish_reason="stop"), usage=counts,
                              attempts=1, latency_ms=1.0, finished_at=NOW, metadata={"run": "r-1"})
    usage = UsageEvent(event_id=f"ev-{job_id}", job_id=job_id, workspace_id="ws-memo", provider=Provider.OLLAMA,
                       model="llama3", occurred_at=NOW, latency_ms=1.0, status=Status.SUCCEEDED, raw_usage=raw_usage,
                       **counts.model_dump())
    return Completed(result, usage, None)


@dataclass
class FakeMessage:
    body: bytes
    message_id: str
    redelivered: bool = False
    routing_key: str = "completion"
    headers: dict[str, Any] = field(default_factory=dict)
    correlation_id: str | None = None
    reply_to: str | None = None
    channel: None = None
    acked: bool = False

    async def ack(self) -> None:
        self.acked = True

    async def reject(self, requeue: bool = False) -> None:
        raise AssertionError("not expected to be rejected")


@dataclass
class FakePublisher:
    sent: list[tuple[str, str, bytes, str | None]] = field(default_factory=list)

    async def publish(self, exchange: str, routing_key: str, body: bytes, *, message_id: str | None = None,
                      **_properties: Any) -> None:
        self.sent.append((exchange, routing_key, body, message_id))


class BigAnswers:
    """Answers every job with ``size`` characters of text, counting the calls."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.calls = 0

    async def run(self, delivery: Delivery) -> Completed:
        self.calls += 1
        job_id = orjson.loads(delivery.body)["job_id"]
        return completed(job_id, "x" * self.size)


async def deliver(consumer: JobConsumer, message: FakeMessage) -> None:
    consumer.on_message(cast(AbstractIncomingMessage, message))
    await asyncio.wait_for(consumer.idle.wait(), 10)
    assert message.acked


def test_the_memo_stays_under_its_byte_bound_evicting_the_oldest() -> None:
    memo = SettledMemo(max_entries=4096, max_bytes=1_000_000)
    for i in range(60):
        memo.remember(f"job-{i}", settle(completed(f"job-{i}", "y" * 100_000), NAMES, MAX_MESSAGE_BYTES))
        assert memo.total_bytes <= 1_000_000
    assert 0 < len(memo) < 10
    assert memo.get("job-59") is not None and memo.get("job-0") is None
    assert memo.total_bytes == sum(e.size for e in (memo.get(f"job-{i}") for i in range(60)) if e is not None)


def test_an_entry_larger_than_the_memo_is_not_kept() -> None:
    memo = SettledMemo(max_entries=10, max_bytes=50_000)
    memo.remember("small", settle(completed("small", "s"), NAMES, MAX_MESSAGE_BYTES))
    memo.remember("huge", settle(completed("huge", "h" * 60_000), NAMES, MAX_MESSAGE_BYTES))
    assert memo.get("huge") is None and memo.get("small") is not None


async def test_many_large_outcomes_stay_bounded_and_a_remembered_job_is_settled_again_without_a_call() -> None:
    runner, publisher = BigAnswers(200_000), FakePublisher()
    consumer = JobConsumer(cast(JobRunner, runner), cast(Any, publisher), NAMES, WorkerMetrics(),
                           remember_bytes=2_000_000)
    messages = [FakeMessage(orjson.dumps({"job_id": f"big-{i}"}), f"big-{i}") for i in range(40)]
    for message in messages:
        await deliver(consumer, message)
    assert consumer.recent.total_bytes <= 2_000_000
    assert runner.calls == 40
    first_run = list(publisher.sent)

    publisher.sent.clear()
    await deliver(consumer, FakeMessage(messages[-1].body, "big-39", redelivered=True))
    assert runner.calls == 40, "settled from memory: the provider is not called again"
    assert sorted(publisher.sent) == sorted(s for s in first_run if s[3] in {"big-39", "ev-big-39"})

    await deliver(consumer, FakeMessage(messages[0].body, "big-0", redelivered=True))
    assert runner.calls == 41, "an evicted job runs again"


async def test_a_redelivered_message_reusing_another_jobs_message_id_is_not_settled_with_its_result() -> None:
    runner, publisher = BigAnswers(10), FakePublisher()
    consumer = JobConsumer(cast(JobRunner, runner), cast(Any, publisher), NAMES, WorkerMetrics())
    await deliver(consumer, FakeMessage(orjson.dumps({"job_id": "victim"}), "shared-id"))
    publisher.sent.clear()
    await deliver(consumer, FakeMessage(orjson.dumps({"job_id": "intruder"}), "shared-id", redelivered=True))
    assert runner.calls == 2
    assert {s[3] for s in publisher.sent} == {"intruder", "ev-intruder"}, "nothing of the victim's is republished"


def test_a_result_over_the_cap_becomes_a_failed_provider_error_and_the_usage_event_still_goes_out() -> None:
    cap = 64 * 1024
    settled = settle(completed("huge", "z" * 200_000, raw_usage={"blob": "r" * 200_000}), NAMES, cap)
    result = orjson.loads(settled.result.body)
    assert len(settled.result.body) <= cap
    assert result["status"] == "failed" and result["output"] is None
    assert result["error"]["code"] == ErrorCode.PROVIDER_ERROR
    assert f"larger than the {cap} bytes" in result["error"]["message"]
    assert result["usage"]["output_tokens"] == 1, "the billed tokens are still reported"
    assert settled.result.routing_key == "ws-memo._.failed"
    assert settled.dead_letter is not None and settled.dead_letter.code is ErrorCode.PROVIDER_ERROR
    assert settled.usage is not None and len(settled.usage.body) <= cap
    usage = orjson.loads(settled.usage.body)
    assert usage["event_id"] == "ev-huge" and list(usage["raw_usage"]) == [RAW_USAGE_DROPPED]


def test_a_result_within_the_cap_is_published_as_it_is() -> None:
    outcome = completed("fits", "fine")
    settled = settle(outcome, NAMES, MAX_MESSAGE_BYTES)
    assert orjson.loads(settled.result.body) == outcome.result.model_dump(mode="json", by_alias=True)
    assert settled.dead_letter is None


def test_the_default_cap_is_below_rabbitmqs_default_max_message_size() -> None:
    assert MAX_MESSAGE_BYTES < 16 * 1024 * 1024
