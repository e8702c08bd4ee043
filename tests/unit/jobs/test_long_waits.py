"""A wait longer than the longest delay queue (a provider's retry-after of ten minutes): the job carries
the time it ends and goes round the longest queue again, without a provider call, until then."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import orjson

from worker.broker.names import DELAY_STEPS_MS, HEADER_ATTEMPTS, HEADER_FIRST_SEEN, HEADER_NOT_BEFORE
from worker.jobs.consumer import delayed_headers
from worker.jobs.metrics import WorkerMetrics
from worker.jobs.pipeline import Completed, Delivery, JobRunner, RetryLater
from worker.jobs.retry import RetryPolicy
from worker.keys.unseal_cache import UnsealCache
from worker.providers.http_pool import HttpClientPool
from worker.settings import Settings

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
LONGEST_S = DELAY_STEPS_MS[-1] / 1000


def retry(delay_s: float) -> RetryLater:
    return RetryLater(delay_s, attempts=2, first_seen=NOW - timedelta(seconds=30), reason="429")


def test_a_wait_within_the_queues_carries_no_end_time() -> None:
    step, headers = delayed_headers({"x-death": [{}], "traceparent": "kept", "x-custom": "dropped", "CC": ["x"],
                                     HEADER_NOT_BEFORE: "stale"}, retry(10), NOW)
    assert step == 15_000
    first_seen = (NOW - timedelta(seconds=30)).isoformat()
    assert headers == {"traceparent": "kept", HEADER_ATTEMPTS: 2, HEADER_FIRST_SEEN: first_seen}


def test_a_wait_beyond_the_longest_queue_carries_its_end() -> None:
    step, headers = delayed_headers({}, retry(600), NOW)
    assert step == DELAY_STEPS_MS[-1]
    assert datetime.fromisoformat(headers[HEADER_NOT_BEFORE]) == NOW + timedelta(seconds=600)


class Ollama:
    """A provider that answers every chat call, counting them."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        return httpx.Response(200, json={"model": "llama3", "message": {"role": "assistant", "content": "hi"},
                                         "done": True, "done_reason": "stop", "prompt_eval_count": 3,
                                         "eval_count": 1})


def runner(provider: Ollama) -> JobRunner:
    policy = RetryPolicy.from_settings(Settings(inline_retry_max_s=2.0))
    http = HttpClientPool(connect_timeout_s=1, read_timeout_s=1, max_connections=4,
                          transport_factory=lambda: httpx.MockTransport(provider))
    # An Ollama job needs no key: the decryptor is never asked.
    # Ollama's default address is loopback: listed, as a deployment with a local Ollama would.
    return JobRunner(policy, allowed_hosts=frozenset({"127.0.0.1:11434"}), decryptor=None,  # type: ignore[arg-type]
                     http=http, cache=UnsealCache(ttl_s=1, max_entries=1), metrics=WorkerMetrics())


BODY = orjson.dumps({"job_id": "long-1", "workspace_id": "ws-long", "model": {"provider": "ollama", "name": "llama3"},
                     "input": {"messages": [{"role": "user", "content": "hello"}]}})


async def test_back_early_from_the_longest_queue_goes_round_again_without_a_call() -> None:
    provider = Ollama()
    not_before = datetime.now(UTC) + timedelta(seconds=LONGEST_S + 42)
    outcome = await runner(provider).run(Delivery(BODY, attempts_before=2, first_seen=NOW, not_before=not_before))
    assert isinstance(outcome, RetryLater)
    assert LONGEST_S + 40 < outcome.delay_s <= LONGEST_S + 42
    assert (outcome.attempts, outcome.first_seen) == (2, NOW)
    assert provider.calls == 0


async def test_once_the_wait_is_over_the_job_runs() -> None:
    provider = Ollama()
    outcome = await runner(provider).run(
        Delivery(BODY, attempts_before=2, first_seen=NOW, not_before=datetime.now(UTC) - timedelta(seconds=1)))
    assert isinstance(outcome, Completed) and outcome.result.status == "succeeded"
    assert outcome.result.attempts == 3 and provider.calls == 1
