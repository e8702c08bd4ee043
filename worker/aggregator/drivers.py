"""The cost drivers report: what drives a workspace's cost, per automation, per agent run and per model.

Output (the same from ``GET /v1/workspaces/{ws}/drivers`` and ``byok consumption <ws> --drivers --json``)::

    {"workspace_id", "since", "until", "prices_as_of", "total_cost_usd",
     "automations": [{"automation_id", "requests", "cost_usd", "cost_share", "input_tokens",
                      "system_prompt_share", "system_prompts": {"distinct", "top_fingerprint", "top_calls"},
                      "cache": {"read_share", "saved_usd", "open_saving_usd"},
                      "runs": null | {"count", "calls_per_run": {"p50", "p95", "max"},
                                      "cost_per_run_usd": {"p50", "p95", "max"},
                                      "top": [{"run", "calls", "cost_usd"}]}}],
     "models": [{"provider", "model", "requests", "cost_usd", "cheapest": null | {"model", "cost_usd"}}]}

Every amount is an estimate from the price table, priced per call with the entry in effect on its UTC day.
Each usage event counts once in every grouping, whatever tags its job carried: the automations' costs add
up to the total, and so do a run's calls. Estimates beyond pricing:

- ``system_prompt_share``: each call's input tokens (input + cache read + cache write) split by the
  characters of its system prompt over the characters of its whole text input (the usage event's ``shape``);
  calls without a shape (older workers) are left out of it.
- ``cache.saved_usd`` (net): what the same tokens would have cost with cache reads and writes billed as plain
  input, minus what they cost (so cache-write premiums count against the saving).
- ``cache.open_saving_usd``: for the calls repeating a system prompt of the automation (every call of a
  fingerprint after its first) that read and wrote nothing in the provider's cache, the estimated
  system-prompt tokens, when long enough for the provider to cache (``min_cacheable_tokens``), at the
  difference between the input and cached-input prices in effect today.
- ``cheapest``: the same tokens on the model of the same provider that would cost least in the price table,
  a price comparison only (it says nothing of quality).

Percentiles are nearest-rank. ``top`` lists the costliest runs (at most ``TOP_RUNS``).
"""

from __future__ import annotations

import math
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from schemas.models import Provider
from worker.aggregator.consumption import QueryError
from worker.aggregator.pricing import PriceEntry, PriceTable
from worker.aggregator.records import Counters, DriverCall
from worker.aggregator.store import Store
from worker.providers.prompt_cache import min_cacheable_tokens

DEFAULT_RUN_TAG = "agent_run"
TOP_RUNS = 10
COST_DECIMALS = 6
SHARE_DECIMALS = 4


def nearest_rank(values: Sequence[float], percent: float) -> float:
    """The nearest-rank percentile: the smallest value with at least ``percent`` % of the values at or below it."""
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def _usd(value: float | None) -> float | None:
    return None if value is None else round(value, COST_DECIMALS)


def _share(part: float, whole: float) -> float | None:
    return round(part / whole, SHARE_DECIMALS) if whole > 0 else None


def input_tokens(counters: Counters) -> int:
    """Every input token of a call, cached or not."""
    return counters.input_tokens + counters.cache_read_tokens + counters.cache_write_tokens


def system_tokens(call: DriverCall) -> float | None:
    """The estimated system-prompt tokens of a call: its input tokens in the proportion of its characters."""
    if call.system_chars is None or not call.input_chars:
        return None
    return input_tokens(call.counters) * min(call.system_chars / call.input_chars, 1.0)


@dataclass(frozen=True, slots=True)
class PricedCall:
    call: DriverCall
    entry: PriceEntry | None

    @property
    def cost(self) -> float | None:
        return self.entry.cost(self.call.counters) if self.entry is not None else None


@dataclass
class _Cost:
    """A sum of call costs: None while nothing in it has a price."""

    usd: float | None = None

    def add(self, cost: float | None) -> None:
        if cost is not None:
            self.usd = (self.usd or 0.0) + cost


def _runs(calls: Sequence[PricedCall], run_tag: str) -> dict[str, Any] | None:
    runs: dict[str, list[PricedCall]] = {}
    for priced in calls:
        run = priced.call.tags.get(run_tag)
        if isinstance(run, str):
            runs.setdefault(run, []).append(priced)
    if not runs:
        return None
    sizes = {run: len(members) for run, members in runs.items()}
    costs: dict[str, float | None] = {}
    for run, members in runs.items():
        cost = _Cost()
        for priced in members:
            cost.add(priced.cost)
        costs[run] = cost.usd
    calls_per_run = list(sizes.values())
    priced_runs = [cost for cost in costs.values() if cost is not None]  # a run with no price has no cost
    top = sorted(runs, key=lambda run: (-(costs[run] or 0.0), run))[:TOP_RUNS]
    return {
        "count": len(runs),
        "calls_per_run": {"p50": nearest_rank(calls_per_run, 50), "p95": nearest_rank(calls_per_run, 95),
                          "max": max(calls_per_run)},
        "cost_per_run_usd": {
            "p50": _usd(nearest_rank(priced_runs, 50)) if priced_runs else None,
            "p95": _usd(nearest_rank(priced_runs, 95)) if priced_runs else None,
            "max": _usd(max(priced_runs)) if priced_runs else None,
        },
        "top": [{"run": run, "calls": sizes[run], "cost_usd": _usd(costs[run])} for run in top],
    }


def _open_saving(calls: Sequence[PricedCall], prices: PriceTable, today: date) -> float:
    seen: set[str] = set()
    saving = 0.0
    for priced in calls:
        call = priced.call
        fingerprint = call.system_fingerprint
        if fingerprint is None:
            continue
        if fingerprint not in seen:
            seen.add(fingerprint)  # the first call of a prompt writes the cache whatever happens
            continue
        counters = call.counters
        if counters.cache_read_tokens or counters.cache_write_tokens:
            continue  # the provider caches this call's prefix already
        estimated = system_tokens(call)
        minimum = min_cacheable_tokens(Provider(call.provider), call.model)
        entry = prices.price(call.provider, call.model, today)
        if estimated is None or minimum is None or entry is None or estimated < minimum:
            continue
        uncached = min(estimated, float(counters.input_tokens))
        saving += uncached * max(entry.input - entry.cache_read_price, 0.0) / 1_000_000
    return saving


def _automation(
    automation_id: str | None, calls: Sequence[PricedCall], total: float | None, prices: PriceTable, run_tag: str,
    today: date,
) -> dict[str, Any]:
    cost = _Cost()
    saved = 0.0
    for priced in calls:
        cost.add(priced.cost)
        if priced.entry is not None:
            saved += priced.entry.uncached_cost(priced.call.counters) - priced.entry.cost(priced.call.counters)
    tokens = sum(input_tokens(p.call.counters) for p in calls)
    cache_reads = sum(p.call.counters.cache_read_tokens for p in calls)
    shaped = [(system_tokens(p.call), input_tokens(p.call.counters)) for p in calls]
    shaped_system = sum(estimate for estimate, _ in shaped if estimate is not None)
    shaped_input = sum(whole for estimate, whole in shaped if estimate is not None)
    fingerprints = Tally(p.call.system_fingerprint for p in calls if p.call.system_fingerprint is not None)
    top = min(fingerprints, key=lambda fp: (-fingerprints[fp], fp)) if fingerprints else None
    return {
        "automation_id": automation_id,
        "requests": len(calls),
        "cost_usd": _usd(cost.usd),
        "cost_share": _share(cost.usd, total) if cost.usd is not None and total is not None else None,
        "input_tokens": tokens,
        "system_prompt_share": _share(shaped_system, shaped_input),
        "system_prompts": {"distinct": len(fingerprints), "top_fingerprint": top,
                           "top_calls": fingerprints[top] if top is not None else 0},
        "cache": {"read_share": _share(cache_reads, tokens), "saved_usd": _usd(saved),
                  "open_saving_usd": _usd(_open_saving(calls, prices, today))},
        "runs": _runs(calls, run_tag),
    }


@dataclass
class _ModelSum:
    calls: list[PricedCall] = field(default_factory=list)
    cost: _Cost = field(default_factory=_Cost)


def _cheapest(provider: str, calls: Sequence[PricedCall], prices: PriceTable) -> dict[str, Any] | None:
    totals: dict[str, float] = {}
    models_on: dict[date, list[tuple[str, PriceEntry]]] = {}
    for priced in calls:
        call = priced.call
        day = call.occurred_at.date()
        if day not in models_on:
            models_on[day] = prices.models_of(provider, day)
        for name, entry in models_on[day]:
            totals[name] = totals.get(name, 0.0) + entry.cost(call.counters)
    if not totals:
        return None
    name = min(totals, key=lambda model: (totals[model], model))
    return {"model": name, "cost_usd": _usd(totals[name])}


def build_drivers(
    workspace_id: str, calls: Sequence[DriverCall], prices: PriceTable, *, run_tag: str = DEFAULT_RUN_TAG,
    since: datetime | None = None, until: datetime | None = None, today: date | None = None,
) -> dict[str, Any]:
    today = today or datetime.now(UTC).date()
    priced = [PricedCall(call, prices.price(call.provider, call.model, call.occurred_at.date())) for call in calls]
    total = _Cost()
    by_automation: dict[str | None, list[PricedCall]] = {}
    by_model: dict[tuple[str, str], _ModelSum] = {}
    for item in priced:
        total.add(item.cost)
        by_automation.setdefault(item.call.automation_id, []).append(item)
        model = by_model.setdefault((item.call.provider, item.call.model), _ModelSum())
        model.calls.append(item)
        model.cost.add(item.cost)
    automations = [
        _automation(automation_id, members, total.usd, prices, run_tag, today)
        for automation_id, members in by_automation.items()
    ]
    automations.sort(key=lambda a: (-(a["cost_usd"] or 0.0), a["automation_id"] or ""))
    ordered = sorted(by_model, key=lambda key: (-(by_model[key].cost.usd or 0.0), key))
    models = [
        {"provider": provider, "model": model, "requests": len(by_model[(provider, model)].calls),
         "cost_usd": _usd(by_model[(provider, model)].cost.usd),
         "cheapest": _cheapest(provider, by_model[(provider, model)].calls, prices)}
        for provider, model in ordered
    ]
    return {
        "workspace_id": workspace_id,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "prices_as_of": prices.version,
        "total_cost_usd": _usd(total.usd),
        "automations": automations,
        "models": models,
    }


async def drivers(
    store: Store, prices: PriceTable, workspace_id: str, since: datetime | None = None,
    until: datetime | None = None, *, run_tag: str = DEFAULT_RUN_TAG,
) -> dict[str, Any]:
    """The drivers of ``workspace_id``'s cost with ``since <= occurred_at < until`` (either may be open)."""
    if since is not None and until is not None and since >= until:
        raise QueryError("since must be before until")
    calls = await store.driver_calls(workspace_id, since, until)
    return build_drivers(workspace_id, calls, prices, run_tag=run_tag, since=since, until=until)


__all__ = ["DEFAULT_RUN_TAG", "TOP_RUNS", "build_drivers", "drivers", "nearest_rank"]
