"""Plain records passed between the store, the anomaly rules and the consumption query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from schemas.models import TOKEN_BUCKETS, UsageEvent

HOUR_S = 3600
DAY_S = 86_400

COUNTER_NAMES = ("requests", "unreported_requests", *TOKEN_BUCKETS)


@dataclass(frozen=True, slots=True)
class Counters:
    """What a group of usage events adds up to. ``requests`` counts events (billed provider calls)."""

    requests: int = 0
    unreported_requests: int = 0
    input_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0

    @property
    def tokens(self) -> int:
        return (self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
                + self.output_tokens + self.reasoning_tokens)

    def __add__(self, other: Counters) -> Counters:
        return Counters(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, name) for name in COUNTER_NAMES)

    @classmethod
    def of(cls, event: UsageEvent) -> Counters:
        return cls(
            requests=1,
            unreported_requests=0 if event.usage_reported else 1,
            input_tokens=event.input_tokens,
            cache_read_tokens=event.cache_read_tokens,
            cache_write_tokens=event.cache_write_tokens,
            output_tokens=event.output_tokens,
            reasoning_tokens=event.reasoning_tokens,
        )

    @classmethod
    def from_row(cls, values: Sequence[Any]) -> Counters:
        return cls(*(int(value or 0) for value in values))


@dataclass(frozen=True, slots=True)
class UsageRow:
    """Usage of one workspace, period (an hour or a day), provider, model and automation."""

    workspace_id: str
    period_start: int  # epoch seconds, UTC
    provider: str
    model: str
    automation_id: str | None
    counters: Counters

    @property
    def period(self) -> datetime:
        return from_epoch_s(self.period_start)


@dataclass(frozen=True, slots=True)
class UnreportedRow:
    """Provider calls of one day, provider, model and automation that started and never reported usage."""

    day_start: int  # epoch seconds, UTC
    provider: str
    model: str
    automation_id: str | None
    calls: int

    @property
    def period(self) -> datetime:
        return from_epoch_s(self.day_start)


@dataclass(frozen=True, slots=True)
class DriverCall:
    """One usage event as the drivers report reads it: its counters, tags and input shape (None when the
    event came from a worker before shapes)."""

    event_id: str
    job_id: str
    automation_id: str | None
    provider: str
    model: str
    occurred_at: datetime
    counters: Counters
    tags: dict[str, Any]
    system_chars: int | None = None
    input_chars: int | None = None
    system_fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class NewModel:
    """A (provider, model) a workspace used for the first time, found while ingesting."""

    workspace_id: str
    provider: str
    model: str
    first_seen: datetime
    first_event_id: str
    workspace_known: bool  # the workspace had used other models before this batch


@dataclass(frozen=True, slots=True)
class IngestOutcome:
    received: int
    inserted: int
    new_models: tuple[NewModel, ...] = ()
    alerts_raised: int = 0  # first-use alerts stored in the same transaction

    @property
    def duplicates(self) -> int:
        return self.received - self.inserted


def to_epoch_us(moment: datetime) -> int:
    delta = moment.astimezone(UTC) - EPOCH
    return (delta.days * DAY_S + delta.seconds) * 1_000_000 + delta.microseconds


def from_epoch_us(value: int) -> datetime:
    return datetime.fromtimestamp(value // 1_000_000, UTC).replace(microsecond=value % 1_000_000)


def from_epoch_s(value: int) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def hour_of(epoch_us: int) -> int:
    """The start of the UTC hour holding ``epoch_us``, in epoch seconds."""
    seconds = epoch_us // 1_000_000
    return seconds - seconds % HOUR_S


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
