"""The anomaly and budget rules, as pure functions of numbers read from the store.

- spike: a workspace's (or one automation's) tokens or cost in an hour above ``spike_factor`` x its mean
  over its *active* hours (hours with usage) among the ``spike_baseline_hours`` before, and at least the
  floor; hours without usage are left out (a daily or weekly pattern is not a spike), and a scope with
  fewer than ``spike_min_active_hours`` active hours in that window has no baseline yet and never spikes;
- unexpected model: a workspace uses a (provider, model) for the first time (its very first model sets
  its baseline and raises nothing), or a model outside its allowlist (once a day per model);
- error burst: at least ``error_burst_threshold`` failed results of one code (auth_failed,
  quota_exhausted by default) in the trailing ``error_burst_window_s``;
- budget: month-to-date estimated cost reaches each ratio (80 %, 100 %) of the monthly budget.

Each alert carries the numbers that triggered it and a dedupe key naming its window.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from fnmatch import fnmatchcase

from schemas.models import UsageEvent
from worker.aggregator.alerts import Alert, AlertKind, Severity, make_alert
from worker.aggregator.pricing import PriceTable
from worker.aggregator.records import HOUR_S, NewModel, UsageRow, from_epoch_s
from worker.aggregator.settings import AggregatorSettings
from worker.budgets.ledger import BudgetStatus

WORKSPACE_SCOPE = "*"


def month_bounds(moment: datetime) -> tuple[datetime, datetime]:
    start = datetime(moment.year, moment.month, 1, tzinfo=UTC)
    end = datetime(moment.year + moment.month // 12, moment.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    return start, start + timedelta(days=1)


@dataclass(frozen=True, slots=True)
class HourValue:
    tokens: int = 0
    cost_usd: float = 0.0

    def __add__(self, other: HourValue) -> HourValue:
        return HourValue(self.tokens + other.tokens, self.cost_usd + other.cost_usd)

    @property
    def active(self) -> bool:
        """An hour with usage: it counts in a spike baseline (empty hours do not)."""
        return self.tokens > 0 or self.cost_usd > 0


@dataclass(frozen=True, slots=True)
class BurstCount:
    workspace_id: str
    code: str
    window_end: datetime
    count: int
    previous_count: int


class AnomalyRules:
    def __init__(self, settings: AggregatorSettings, prices: PriceTable) -> None:
        self._settings = settings
        self._prices = prices

    # ---------------------------------------------------------------- unexpected model

    def first_use(self, new_models: Sequence[NewModel]) -> list[Alert]:
        """Alerts for models new to a workspace that had used others; a brand-new workspace's first
        model (the earliest event) is its baseline, its other new models alert."""
        alerts: list[Alert] = []
        by_workspace: dict[str, list[NewModel]] = defaultdict(list)
        for new in new_models:
            by_workspace[new.workspace_id].append(new)
        for models in by_workspace.values():
            ordered = sorted(models, key=lambda m: (m.first_seen, m.first_event_id))
            unexpected = ordered if ordered[0].workspace_known else ordered[1:]
            alerts.extend(self._first_use_alert(new) for new in unexpected)
        return alerts

    def _first_use_alert(self, new: NewModel) -> Alert:
        return make_alert(
            AlertKind.UNEXPECTED_MODEL, new.workspace_id, f"first_use:{new.provider}/{new.model}",
            day_bounds(new.first_seen.date()),
            f"workspace {new.workspace_id} used {new.provider}/{new.model} for the first time",
            {"reason": "first_use", "provider": new.provider, "model": new.model,
             "first_seen": new.first_seen.isoformat(), "event_id": new.first_event_id},
        )

    def allowlist(self, workspace_id: str) -> list[str] | None:
        lists = self._settings.model_allowlist
        if lists is None:
            return None
        return lists.get(workspace_id, lists.get(WORKSPACE_SCOPE))

    def allowed(self, workspace_id: str, provider: str, model: str) -> bool:
        patterns = self.allowlist(workspace_id)
        if patterns is None:
            return True
        return any(fnmatchcase(model, p) or fnmatchcase(f"{provider}/{model}", p) for p in patterns)

    def disallowed_models(self, events: Iterable[UsageEvent]) -> list[Alert]:
        """One alert a day per workspace and model outside the workspace's allowlist."""
        seen: dict[tuple[str, str, str, date], int] = defaultdict(int)
        for event in events:
            if not self.allowed(event.workspace_id, event.provider.value, event.model):
                seen[(event.workspace_id, event.provider.value, event.model, event.occurred_at.date())] += 1
        return [
            make_alert(
                AlertKind.UNEXPECTED_MODEL, workspace, f"not_allowed:{provider}/{model}", day_bounds(day),
                f"workspace {workspace} used {provider}/{model}, which is not in its allowlist",
                {"reason": "not_allowed", "provider": provider, "model": model, "day": day.isoformat(),
                 "requests_in_batch": count, "allowlist": self.allowlist(workspace)},
            )
            for (workspace, provider, model, day), count in sorted(seen.items())
        ]

    # ---------------------------------------------------------------- spikes

    def hourly_values(self, rows: Iterable[UsageRow]) -> dict[tuple[str, str, int], HourValue]:
        """(workspace, scope, hour start) -> tokens and priced cost; scope ``*`` is the whole workspace."""
        values: dict[tuple[str, str, int], HourValue] = defaultdict(HourValue)
        for row in rows:
            cost = self._prices.cost(row.provider, row.model, row.period.date(), row.counters) or 0.0
            value = HourValue(row.counters.tokens, cost)
            values[(row.workspace_id, WORKSPACE_SCOPE, row.period_start)] += value
            if row.automation_id is not None:
                values[(row.workspace_id, row.automation_id, row.period_start)] += value
        return values

    def spikes(self, rows: Iterable[UsageRow], hours: Mapping[str, Iterable[int]]) -> list[Alert]:
        """Spike alerts for the given (workspace -> hour starts), from hourly rows covering each of those
        hours and the baseline hours before them."""
        values = self.hourly_values(rows)
        wanted = {workspace: set(starts) for workspace, starts in hours.items()}
        alerts = []
        for workspace, scope, hour in sorted(values):
            if hour in wanted.get(workspace, ()):
                alerts.extend(self._spike_alerts(values, workspace, scope, hour))
        return alerts

    def _spike_alerts(
        self, values: Mapping[tuple[str, str, int], HourValue], workspace: str, scope: str, hour: int
    ) -> list[Alert]:
        settings = self._settings
        span = settings.spike_baseline_hours
        current = values[(workspace, scope, hour)]
        window = (values.get((workspace, scope, hour - i * HOUR_S)) for i in range(1, span + 1))
        active = [h for h in window if h is not None and h.active]
        if len(active) < settings.spike_min_active_hours:
            return []  # no history yet (a new scope, or one idle for the whole window): nothing to compare to
        n = len(active)
        checks = (
            ("tokens", float(current.tokens), sum(h.tokens for h in active) / n, float(settings.spike_floor_tokens)),
            ("cost_usd", current.cost_usd, sum(h.cost_usd for h in active) / n, settings.spike_floor_cost_usd),
        )
        alerts = []
        for metric, value, mean, floor in checks:
            if value >= floor and value > settings.spike_factor * mean and value > 0:
                alerts.append(self._spike_alert(workspace, scope, hour, metric, value, mean, n, floor))
        return alerts

    def _spike_alert(
        self, workspace: str, scope: str, hour: int, metric: str, value: float, mean: float, active_hours: int,
        floor: float,
    ) -> Alert:
        settings = self._settings
        start = from_epoch_s(hour)
        who = f"workspace {workspace}" if scope == WORKSPACE_SCOPE else f"automation {scope} of {workspace}"
        ratio = None if mean == 0 else round(value / mean, 2)  # 0: active hours with no priced cost
        shown = f"{value:.0f} tokens" if metric == "tokens" else f"${value:.2f}"
        over = f"its {active_hours} active hours of the last {settings.spike_baseline_hours} h"
        return make_alert(
            AlertKind.SPIKE, workspace, f"{scope}:{metric}", (start, start + timedelta(hours=1)),
            f"{who} used {shown} in the hour from {start:%Y-%m-%d %H:00}Z, "
            + (f"{ratio}x its mean over {over}" if ratio is not None else f"with none in {over}"),
            {"metric": metric, "scope": "workspace" if scope == WORKSPACE_SCOPE else "automation",
             "automation_id": None if scope == WORKSPACE_SCOPE else scope, "hour_start": start.isoformat(),
             "value": round(value, 6), "baseline_mean": round(mean, 6),
             "baseline_hours": settings.spike_baseline_hours, "active_hours": active_hours,
             "min_active_hours": settings.spike_min_active_hours, "ratio": ratio,
             "factor": settings.spike_factor, "floor": floor},
        )

    # ---------------------------------------------------------------- error bursts

    def error_burst(self, burst: BurstCount) -> Alert | None:
        settings = self._settings
        if burst.count < settings.error_burst_threshold:
            return None
        window = settings.error_burst_window_s
        bucket = int(burst.window_end.timestamp()) // window * window
        start = from_epoch_s(bucket)
        return make_alert(
            AlertKind.ERROR_BURST, burst.workspace_id, burst.code, (start, start + timedelta(seconds=window)),
            f"workspace {burst.workspace_id}: {burst.count} jobs failed with {burst.code} "
            f"in {window} s (previous window: {burst.previous_count})",
            {"code": burst.code, "count": burst.count, "previous_window_count": burst.previous_count,
             "window_s": window, "threshold": settings.error_burst_threshold,
             "counted_until": burst.window_end.isoformat()},
            severity=Severity.CRITICAL,
        )

    # ---------------------------------------------------------------- budgets

    def month_cost(self, rows: Iterable[UsageRow]) -> tuple[float, bool]:
        """Estimated cost of daily rows, and whether some of that usage has no price."""
        total, unpriced = 0.0, False
        for row in rows:
            cost = self._prices.cost(row.provider, row.model, row.period.date(), row.counters)
            if cost is None:
                unpriced = True
            else:
                total += cost
        return total, unpriced

    def stored_budget(self, status: BudgetStatus, now: datetime) -> list[Alert]:
        """Alerts for a budget in the store (``byok budgets``), block or alert, at each ratio of its limit."""
        budget = status.budget
        if budget.limit_usd is None:
            return []
        window = (budget.period_start(now), budget.resets_at(now))
        alerts = []
        for ratio in self._settings.budget_alert_ratios:
            if status.spent_usd < ratio * budget.limit_usd:
                continue
            percent = round(ratio * 100)
            alerts.append(make_alert(
                AlertKind.BUDGET, budget.workspace_id, f"{budget.scope}:{budget.period.value}:{percent}pct", window,
                f"budget {budget.scope} ({budget.action.value}) has spent an estimated ${status.spent_usd:.2f} of "
                f"${budget.limit_usd:.2f} this {budget.period.value} ({status.spent_usd / budget.limit_usd:.0%}, "
                f"threshold {percent} %)",
                {"budget": budget.scope, "automation_id": budget.automation_id, "period": budget.period.value,
                 "action": budget.action.value, "period_start": window[0].isoformat(),
                 "budget_usd": budget.limit_usd, "spent_usd": round(status.spent_usd, 6),
                 "reserved_usd": round(status.reserved_usd, 6), "ratio": round(status.spent_usd / budget.limit_usd, 4),
                 "threshold_ratio": ratio, "estimate": True},
                severity=Severity.CRITICAL if ratio >= 1 else Severity.WARNING,
            ))
        return alerts

    def budget(self, workspace: str, month_start: datetime, spent: float, unpriced: bool) -> list[Alert]:
        budget = self._settings.budget_for(workspace)
        if budget is None:
            return []
        start, end = month_bounds(month_start)
        alerts = []
        for ratio in self._settings.budget_alert_ratios:
            if spent < ratio * budget:
                continue
            percent = round(ratio * 100)
            alerts.append(make_alert(
                AlertKind.BUDGET, workspace, f"{percent}pct", (start, end),
                f"workspace {workspace} has spent an estimated ${spent:.2f} of its ${budget:.2f} budget "
                f"for {start:%Y-%m} ({spent / budget:.0%}, threshold {percent} %)",
                {"month": f"{start:%Y-%m}", "budget_usd": budget, "spent_usd": round(spent, 6),
                 "ratio": round(spent / budget, 4), "threshold_ratio": ratio, "unpriced_usage": unpriced,
                 "estimate": True},
                severity=Severity.CRITICAL if ratio >= 1 else Severity.WARNING,
            ))
        return alerts
