"""The consumption query: usage of one workspace over a range, grouped, with estimated cost.

Output (shared by the CLI's ``--json`` and the HTTP API)::

    {"workspace_id", "since", "until", "group_by", "estimate": true, "currency": "USD", "price_table",
     "totals": {"requests", "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
                "reasoning_tokens", "unreported_requests", "unreported_calls", "cost_usd", "unpriced"},
     "rows": [{<group keys>, <the same counters>, "cost_usd", "unpriced"}],
     "unpriced_models": [{"provider", "model"}]}

``requests`` counts usage events (billed provider calls), not jobs. ``unreported_calls`` counts provider calls
that started (a confirmed call record) longer than the grace period ago and never reported usage: the worker
died or lost the broker mid-call, and the provider may have billed them; their tokens are unknown, so they
are in no token count and no cost. A late usage event moves its call from there to ``requests``.
Cost is priced per UTC day with the entry in effect that day; ``cost_usd`` sums what is priced and is
``null`` when nothing in the row is priced; ``unpriced`` says that some usage in it has no price (so the
cost is missing or incomplete).
Grouping by ``model`` keys rows by provider and model, since one name can exist at two providers.
``hour`` keys rows by the UTC hour's start (``2025-03-01T10:00:00+00:00``), for charts of short ranges
(unreported calls are kept per day: by hour they sit in the day's first hour; the totals are exact).
``prices_as_of`` is the date (version) of the price table the estimates come from.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from schemas.models import TOKEN_BUCKETS
from worker.aggregator.pricing import PriceTable
from worker.aggregator.records import Counters, UnreportedRow, UsageRow
from worker.aggregator.store import Store

GROUPS = ("model", "automation", "provider", "day", "hour")
DEFAULT_GROUP_BY = ("model",)
COST_DECIMALS = 6
DEFAULT_UNREPORTED_GRACE_S = 600.0
"""``BYOK_UNREPORTED_GRACE_S``: a call still without usage this long after it started is unreported."""

# Row keys in output order, and which requested groups produce them.
_KEY_ORDER = ("day", "hour", "provider", "model", "automation_id")
_KEYS_FOR_GROUP = {
    "day": ("day",),
    "hour": ("hour",),
    "provider": ("provider",),
    "model": ("provider", "model"),
    "automation": ("automation_id",),
}

_REPORTED_COUNTERS = ("requests", *TOKEN_BUCKETS, "unreported_requests")


class QueryError(ValueError):
    """A consumption or anomalies query with a bad parameter (HTTP 400, CLI exit 2)."""


def parse_instant(text: str | None, name: str) -> datetime | None:
    """An ISO-8601 time with an explicit offset (``Z`` or ``+00:00``), or a bare date (midnight UTC)."""
    if text is None or text == "":
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise QueryError(f"{name}: not an ISO-8601 time: {text!r}") from None
    if value.tzinfo is None:
        if len(text) == 10:  # a date
            return value.replace(tzinfo=UTC)
        raise QueryError(f"{name}: the time needs an explicit UTC offset (Z or +00:00)")
    return value.astimezone(UTC)


def parse_group_by(values: str | Iterable[str] | None) -> tuple[str, ...]:
    """``model,automation`` (or several values) to a tuple of known groups; none means by model."""
    if values is None:
        return DEFAULT_GROUP_BY
    parts = [values] if isinstance(values, str) else list(values)
    groups = [g.strip().lower() for part in parts for g in part.split(",") if g.strip()]
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise QueryError(f"group_by: unknown {', '.join(unknown)} (choose from {', '.join(GROUPS)})")
    return tuple(dict.fromkeys(groups)) or DEFAULT_GROUP_BY


@dataclass
class _Sum:
    counters: Counters = field(default_factory=Counters)
    cost: float = 0.0
    priced: bool = False
    unpriced: bool = False
    unreported_calls: int = 0

    def add(self, counters: Counters, cost: float | None) -> None:
        self.counters = self.counters + counters
        if cost is None:
            self.unpriced = True
        else:
            self.cost += cost
            self.priced = True

    def as_dict(self) -> dict[str, Any]:
        values: dict[str, Any] = {name: getattr(self.counters, name) for name in _REPORTED_COUNTERS}
        values["unreported_calls"] = self.unreported_calls
        values["cost_usd"] = round(self.cost, COST_DECIMALS) if self.priced or not self.unpriced else None
        values["unpriced"] = self.unpriced
        return values


def _row_key(row: UsageRow | UnreportedRow, keys: Sequence[str]) -> tuple[str | None, ...]:
    values = {
        "day": row.period.date().isoformat(),
        "hour": row.period.isoformat(),
        "provider": row.provider,
        "model": row.model,
        "automation_id": row.automation_id,
    }
    return tuple(values[key] for key in keys)


def build_consumption(
    workspace_id: str,
    rows: Sequence[UsageRow],
    prices: PriceTable,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    unreported: Sequence[UnreportedRow] = (),
) -> dict[str, Any]:
    """Folds daily usage rows into the requested groups and prices each day with its own price; adds the
    calls that never reported to their groups."""
    wanted = {key for group in group_by for key in _KEYS_FOR_GROUP[group]}
    keys = tuple(key for key in _KEY_ORDER if key in wanted)
    totals = _Sum()
    groups: dict[tuple[str | None, ...], _Sum] = {}
    unpriced_models: set[tuple[str, str]] = set()
    for row in rows:
        cost = prices.cost(row.provider, row.model, row.period.date(), row.counters)
        if cost is None:
            unpriced_models.add((row.provider, row.model))
        totals.add(row.counters, cost)
        groups.setdefault(_row_key(row, keys), _Sum()).add(row.counters, cost)
    for open_calls in unreported:
        totals.unreported_calls += open_calls.calls
        groups.setdefault(_row_key(open_calls, keys), _Sum()).unreported_calls += open_calls.calls
    return {
        "workspace_id": workspace_id,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "group_by": list(group_by),
        "totals": totals.as_dict(),
        "rows": [
            {**dict(zip(keys, key, strict=True)), **groups[key].as_dict()}
            for key in sorted(groups, key=lambda k: tuple("" if v is None else v for v in k))
        ],
        "unpriced_models": [{"provider": p, "model": m} for p, m in sorted(unpriced_models)],
        "estimate": True,
        "currency": "USD",
        "price_table": prices.version,
        "prices_as_of": prices.version,
    }


async def consumption(
    store: Store,
    prices: PriceTable,
    workspace_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
    group_by: Sequence[str] = DEFAULT_GROUP_BY,
    *,
    unreported_grace_s: float = DEFAULT_UNREPORTED_GRACE_S,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Usage of ``workspace_id`` with ``since <= occurred_at < until`` (either may be open), and the calls
    started in that range more than ``unreported_grace_s`` before ``now`` that never reported."""
    unknown = sorted(set(group_by) - set(GROUPS))
    if unknown:
        raise QueryError(f"group_by: unknown {', '.join(unknown)}")
    if since is not None and until is not None and since >= until:
        raise QueryError("since must be before until")
    rows = await store.usage([workspace_id], since, until, "hour" if "hour" in group_by else "day")
    started_before = (now or datetime.now(UTC)) - timedelta(seconds=unreported_grace_s)
    unreported = await store.unreported_calls(workspace_id, since, until, started_before)
    return build_consumption(workspace_id, rows, prices, group_by or DEFAULT_GROUP_BY, since=since, until=until,
                             unreported=unreported)
