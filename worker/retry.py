"""Retry timing: exponential backoff with full jitter that honours the provider's own hints."""

from __future__ import annotations

import random
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

MAX_HINT_S = 24 * 3600.0


def parse_retry_after(headers: Mapping[str, str], now: datetime | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``retry-after`` (delta seconds or an HTTP date)."""
    lowered = {k.lower(): v for k, v in headers.items()}
    millis = lowered.get("retry-after-ms")
    if millis is not None:
        try:
            return min(max(float(millis) / 1000.0, 0.0), MAX_HINT_S)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return min(max(float(value), 0.0), MAX_HINT_S)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    delta = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(delta, 0.0), MAX_HINT_S)


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
