"""Retry timing: exponential backoff with full jitter that honours the provider's own hints."""

from __future__ import annotations

import random

from worker.providers.retry_after import MAX_HINT_S


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
