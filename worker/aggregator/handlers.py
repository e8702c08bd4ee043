"""What one batch leads to: the store first, then the anomaly rules, then the alert outbox."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import structlog

from schemas.models import CompletionResult, ProviderCallRecord, UsageEvent
from worker.aggregator.alerts import Alert
from worker.aggregator.detector import AnomalyDetector
from worker.aggregator.metrics import AggregatorMetrics
from worker.aggregator.store import Store

log = structlog.get_logger("byok.aggregator")


class BatchHandlers:
    """``usage`` and ``failures`` are the consumers' handlers; ``notify`` wakes the alert publisher."""

    def __init__(
        self, store: Store, detector: AnomalyDetector, metrics: AggregatorMetrics, notify: Callable[[], None]
    ) -> None:
        self._store = store
        self._detector = detector
        self._metrics = metrics
        self._notify = notify

    async def usage(self, messages: Sequence[UsageEvent | ProviderCallRecord]) -> None:
        events = [m for m in messages if isinstance(m, UsageEvent)]
        calls = [m for m in messages if isinstance(m, ProviderCallRecord)]
        outcome = await self._store.ingest(events, self._detector.rules.first_use, calls)
        if calls:
            self._metrics.call_records.inc(len(calls))
        self._metrics.usage_events.labels(result="new").inc(outcome.inserted)
        self._metrics.usage_events.labels(result="duplicate").inc(outcome.duplicates)
        await self._raise(await self._detector.after_usage(events), stored_already=outcome.alerts_raised)

    async def failures(self, results: Sequence[CompletionResult]) -> None:
        await self._store.record_failures(results)
        for result in results:
            if result.error is not None:
                self._metrics.failed_results.labels(code=result.error.code.value).inc()
        await self._raise(await self._detector.after_failures(results))

    async def _raise(self, alerts: Sequence[Alert], *, stored_already: int = 0) -> None:
        """Stores the alerts (those raised before are dropped by dedupe key) and wakes the publisher."""
        stored = await self._store.add_alerts(alerts)
        if stored_already:
            self._metrics.alerts.labels(kind="unexpected_model").inc(stored_already)
        for alert in stored:
            self._metrics.alerts.labels(kind=alert.kind.value).inc()
            log.info("alert raised", workspace_id=alert.workspace_id, kind=alert.kind.value,
                     dedupe_key=alert.dedupe_key, message=alert.message)
        if stored or stored_already:
            self._notify()
