"""Runs the anomaly rules after each batch: reads the numbers they need, returns the alerts raised.

Rules are evaluated on every event and failure of a batch, duplicates included: they read the stored
state (idempotent by dedupe key), so a batch redelivered after a crash is evaluated again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from schemas.models import CompletionResult, UsageEvent
from worker.aggregator.alerts import Alert
from worker.aggregator.anomalies import AnomalyRules, BurstCount, month_bounds
from worker.aggregator.records import HOUR_S, from_epoch_s, hour_of, to_epoch_us
from worker.aggregator.settings import AggregatorSettings
from worker.aggregator.store import Store
from worker.budgets.admin import BudgetAdmin


class AnomalyDetector:
    def __init__(
        self, store: Store, rules: AnomalyRules, settings: AggregatorSettings, budgets: BudgetAdmin | None = None
    ) -> None:
        self._store = store
        self.rules = rules
        self._settings = settings
        self._budgets_admin = budgets

    async def after_usage(self, events: Sequence[UsageEvent]) -> list[Alert]:
        if not events:
            return []
        alerts = self.rules.disallowed_models(events)
        alerts += await self._spikes(events)
        alerts += await self._budgets(events)
        alerts += await self._stored_budgets(events)
        return alerts

    async def _stored_budgets(self, events: Sequence[UsageEvent]) -> list[Alert]:
        """The budgets of ``byok budgets`` (the env budgets above stay monthly alert budgets beside them)."""
        if self._budgets_admin is None:
            return []
        now = datetime.now(UTC)
        alerts: list[Alert] = []
        for workspace in sorted({event.workspace_id for event in events}):
            for status in await self._budgets_admin.list(workspace):
                alerts += self.rules.stored_budget(status, now)
        return alerts

    async def _spikes(self, events: Sequence[UsageEvent]) -> list[Alert]:
        hours: dict[str, set[int]] = defaultdict(set)
        for event in events:
            hours[event.workspace_id].add(hour_of(to_epoch_us(event.occurred_at)))
        first = min(min(h) for h in hours.values()) - self._settings.spike_baseline_hours * HOUR_S
        last = max(max(h) for h in hours.values()) + HOUR_S
        rows = await self._store.usage(list(hours), from_epoch_s(first), from_epoch_s(last), "hour")
        return self.rules.spikes(rows, hours)

    async def _budgets(self, events: Sequence[UsageEvent]) -> list[Alert]:
        months: dict[datetime, set[str]] = defaultdict(set)
        for event in events:
            if self._settings.budget_for(event.workspace_id) is not None:
                months[month_bounds(event.occurred_at)[0]].add(event.workspace_id)
        alerts: list[Alert] = []
        for month_start, workspaces in sorted(months.items()):
            rows = await self._store.usage(sorted(workspaces), *month_bounds(month_start), "day")
            for workspace in sorted(workspaces):
                spent, unpriced = self.rules.month_cost(r for r in rows if r.workspace_id == workspace)
                alerts += self.rules.budget(workspace, month_start, spent, unpriced)
        return alerts

    async def after_failures(self, results: Sequence[CompletionResult]) -> list[Alert]:
        codes = {code.value for code in self._settings.error_burst_codes}
        ends: dict[tuple[str, str], datetime] = {}
        for result in results:
            if result.error is not None and result.error.code.value in codes:
                key = (result.workspace_id, result.error.code.value)
                ends[key] = max(ends.get(key, result.finished_at), result.finished_at)
        window = timedelta(seconds=self._settings.error_burst_window_s)
        alerts = []
        for (workspace, code), end in sorted(ends.items()):
            count = await self._store.count_failures(workspace, code, end - window, end)
            previous = await self._store.count_failures(workspace, code, end - 2 * window, end - window)
            alert = self.rules.error_burst(BurstCount(workspace, code, end, count, previous))
            if alert is not None:
                alerts.append(alert)
        return alerts
