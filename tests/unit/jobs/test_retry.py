from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest

from worker.jobs.consumer import delay_step_ms
from worker.jobs.retry import backoff_delay
from worker.providers.retry_after import parse_retry_after


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_retry_after({"Retry-After": "7"}) == 7.0
    assert parse_retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    http_date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert parse_retry_after({"retry-after": http_date}, now=now) == pytest.approx(30.0)
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "-5"}) == 0.0


def test_backoff_grows_with_jitter_and_honours_hints() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(n, base_s=1.0, max_s=60.0, rng=rng) for n in range(1, 8)]
    for n, delay in enumerate(delays, start=1):
        ceiling = min(60.0, 2 ** (n - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert backoff_delay(3, base_s=1.0, max_s=60.0, hint_s=12.5) == 12.5


@pytest.mark.parametrize(("delay_s", "step"), [(0.2, 1000), (1.0, 1000), (1.01, 5000), (20, 60000), (9999, 300000)])
def test_delay_queue_step_waits_at_least_the_delay(delay_s: float, step: int) -> None:
    assert delay_step_ms(delay_s) == step
