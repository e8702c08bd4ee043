"""The one retry decision (``worker.jobs.retry.decide``), one row per case."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from schemas.models import ErrorCode
from worker.failures import InvalidJob, JobFailure, RetryableFailure, VaultUnavailable
from worker.jobs.pipeline import made_call
from worker.jobs.retry import Decision, DelayQueue, GiveUp, RetryPolicy, WaitInline, decide

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
POLICY = RetryPolicy(max_attempts=4, base_delay_s=1.0, max_delay_s=300.0, inline_max_s=2.0, window_s=900.0)


class Ceiling(random.Random):
    """Jitter that always picks the top of its range, so a backoff is exactly ``base * 2**(n-1)``."""

    def uniform(self, a: float, b: float) -> float:
        return b


def http_500(hint_s: float | None = None) -> RetryableFailure:
    return RetryableFailure(ErrorCode.PROVIDER_ERROR, "HTTP 500", provider_status=500, retry_after_s=hint_s)


VAULT_DOWN = VaultUnavailable("Vault is unreachable (ConnectError)")

# failure, provider called, attempts, transient failures, deadline in s, first seen s ago, decision
CASES = [
    ("401 is final", JobFailure(ErrorCode.AUTH_FAILED, "no", provider_status=401), True, 1, 0, None, 0,
     GiveUp()),
    ("invalid job is final", InvalidJob("bad"), True, 0, 0, None, 0, GiveUp()),
    ("billed, first call", http_500(), True, 1, 1, None, 0, WaitInline(1.0)),
    ("billed, inline max is still inline", http_500(), True, 2, 2, None, 0, WaitInline(2.0)),
    ("billed, over inline max goes to the delay queue", http_500(), True, 3, 3, None, 0, DelayQueue(4.0)),
    ("billed, at max attempts", http_500(), True, 4, 4, None, 0, GiveUp()),
    ("billed, past max attempts (redelivered)", http_500(), True, 5, 1, None, 0, GiveUp()),
    ("billed, earlier vault failures grow the backoff", http_500(), True, 1, 3, None, 0, DelayQueue(4.0)),
    ("unbilled, first vault failure", VAULT_DOWN, False, 0, 1, None, 0, WaitInline(1.0)),
    ("unbilled, not bounded by max attempts", VAULT_DOWN, False, 4, 1, None, 0, DelayQueue(8.0)),
    ("unbilled, backoff capped at max delay", VAULT_DOWN, False, 0, 12, None, 0, DelayQueue(300.0)),
    ("unbilled, retry window passed", VAULT_DOWN, False, 0, 12, None, 700, GiveUp()),
    ("hint replaces the backoff", http_500(hint_s=30.0), True, 1, 1, None, 0, DelayQueue(30.0)),
    ("short hint waits inline", http_500(hint_s=0.5), True, 3, 3, None, 0, WaitInline(0.5)),
    ("deadline nearer than the hint", http_500(hint_s=30.0), True, 1, 1, 10, 0, GiveUp()),
    ("deadline exactly at the delay", http_500(), True, 3, 3, 4, 0, GiveUp()),
    ("deadline just after the delay", http_500(), True, 3, 3, 5, 0, DelayQueue(4.0)),
    ("deadline set: the window does not apply", http_500(), True, 1, 1, 60, 10_000, WaitInline(1.0)),
    ("no deadline, window reached exactly", http_500(), True, 1, 1, None, 899, WaitInline(1.0)),
    ("no deadline, window would be passed", http_500(), True, 1, 1, None, 899.5, GiveUp()),
]


@pytest.mark.parametrize(
    ("failure", "provider_called", "attempts", "transient", "deadline_in_s", "seen_ago_s", "expected"),
    [pytest.param(*row[1:], id=row[0]) for row in CASES],
)
def test_decide(
    failure: JobFailure, provider_called: bool, attempts: int, transient: int,
    deadline_in_s: float | None, seen_ago_s: float, expected: Decision,
) -> None:
    decision = decide(
        failure, provider_called=provider_called, attempts=attempts, transient_failures=transient, now=NOW,
        deadline=None if deadline_in_s is None else NOW + timedelta(seconds=deadline_in_s),
        first_seen=NOW - timedelta(seconds=seen_ago_s), policy=POLICY, rng=Ceiling(),
    )
    assert decision == expected


def test_backoff_is_jittered_over_the_upper_half() -> None:
    rng = random.Random(7)
    for _ in range(50):
        decision = decide(http_500(), provider_called=True, attempts=3, transient_failures=3, now=NOW, deadline=None,
                          first_seen=NOW, policy=POLICY, rng=rng)
        assert isinstance(decision, DelayQueue | WaitInline)
        assert 2.0 <= decision.delay_s <= 4.0


@pytest.mark.parametrize(
    ("failure", "counted"),
    [
        (http_500(), True),
        (RetryableFailure(ErrorCode.PROVIDER_ERROR, "connection refused"), True),
        (JobFailure(ErrorCode.TIMEOUT, "the job's deadline passed during the provider call"), True),
        (JobFailure(ErrorCode.AUTH_FAILED, "no", provider_status=401), True),
        (JobFailure(ErrorCode.PROVIDER_ERROR, "unreadable provider response", provider_status=200), True),
        (InvalidJob("mistral accepts a temperature of at most 1.5"), False),
    ],
)
def test_which_failures_of_the_provider_step_count_as_a_call(failure: JobFailure, counted: bool) -> None:
    assert made_call(failure) is counted
