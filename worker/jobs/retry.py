"""The retry decision: after a failure, wait in-process, wait in the delay queue, or give up.

``decide`` is the one place that decides; it is pure (the clock and the jitter come in as arguments).
Backoff is exponential with full jitter and honours the provider's own hints.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime

from worker.failures import JobFailure, RetryableFailure
from worker.providers.retry_after import MAX_HINT_S
from worker.settings import Settings


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    max_attempts: int
    """Provider calls per job; Vault outages (no call made) are bounded only by the deadline or window."""
    base_delay_s: float
    max_delay_s: float
    inline_max_s: float
    """Waits up to this long are slept in-process; longer ones go through the delay queue."""
    window_s: float
    """A job without a deadline stops retrying this long after it was first seen."""

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(
            max_attempts=settings.max_attempts,
            base_delay_s=settings.retry_base_delay_s,
            max_delay_s=settings.retry_max_delay_s,
            inline_max_s=settings.inline_retry_max_s,
            window_s=settings.max_retry_window_s,
        )


@dataclass(frozen=True, slots=True)
class WaitInline:
    """Sleep ``delay_s`` in-process, holding the consumer slot, then try again."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class DelayQueue:
    """Ack and come back through the delay queues after ``delay_s`` (``RetryLater``)."""

    delay_s: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """End the job ``failed`` with this failure."""


Decision = WaitInline | DelayQueue | GiveUp


def backoff_delay(
    attempt: int,
    *,
    base_s: float,
    max_s: float,
    hint_s: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """Delay before attempt ``attempt + 1`` (``attempt`` >= 1 calls made so far).

    The provider's hint when it gave one; otherwise jitter over the upper half of ``base * 2**(attempt-1)``.
    """
    if hint_s is not None:
        return min(max(hint_s, 0.0), MAX_HINT_S)
    ceiling = min(max_s, base_s * (2 ** max(attempt - 1, 0)))
    return (rng or random).uniform(ceiling / 2, ceiling)


def decide(
    failure: JobFailure,
    *,
    provider_called: bool,
    attempts: int,
    transient_failures: int,
    now: datetime,
    deadline: datetime | None,
    first_seen: datetime,
    policy: RetryPolicy,
    rng: random.Random | None = None,
) -> Decision:
    """What to do after ``failure``.

    ``provider_called``: the failure came from a provider call (not from unsealing the key).
    ``attempts``: provider calls made for the job so far, this one included.
    ``transient_failures``: retryable failures met in this delivery, this one included.
    """
    if not isinstance(failure, RetryableFailure):
        return GiveUp()
    if provider_called and attempts >= policy.max_attempts:
        return GiveUp()
    delay = backoff_delay(
        max(attempts, transient_failures), base_s=policy.base_delay_s, max_s=policy.max_delay_s,
        hint_s=failure.retry_after_s, rng=rng,
    )
    if deadline is not None and (deadline - now).total_seconds() <= delay:
        return GiveUp()
    if deadline is None and (now - first_seen).total_seconds() + delay > policy.window_s:
        return GiveUp()
    return WaitInline(delay) if delay <= policy.inline_max_s else DelayQueue(delay)
