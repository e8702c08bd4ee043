"""Builders for the aggregator tests: usage events, failed results, a small price table."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from schemas.models import CompletionResult, ErrorCode, Provider, ResultError, Status, UsageEvent
from worker.aggregator.alerts import Alert
from worker.aggregator.detector import AnomalyDetector
from worker.aggregator.handlers import BatchHandlers
from worker.aggregator.metrics import AggregatorMetrics
from worker.aggregator.settings import AggregatorSettings
from worker.aggregator.store import Store
from worker.settings import Settings

_ids = itertools.count(1)

PG_BASE_URL = "postgresql://127.0.0.1:5432/test"


def aggregator_settings(settings: Settings, **overrides: Any) -> AggregatorSettings:
    """The aggregator's settings on a test's broker, topology names and store (``settings`` is the worker's)."""
    values: dict[str, Any] = {
        "amqp_url": settings.amqp_url, "topology_prefix": settings.topology_prefix, "store_url": settings.store_url,
        "api_listen": "127.0.0.1:0", "shutdown_grace_s": settings.shutdown_grace_s, **overrides,
    }
    return AggregatorSettings(**values)


def at(text: str) -> datetime:
    """``"2025-03-01 10:15"`` as a UTC datetime."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def usage(
    when: str | datetime,
    *,
    workspace: str = "acme",
    provider: str = "openai",
    model: str = "gpt-4o-mini",
    automation: str | None = "a1",
    event_id: str | None = None,
    reported: bool = True,
    **tokens: int,
) -> UsageEvent:
    n = next(_ids)
    return UsageEvent(
        event_id=event_id or f"ev-{n}",
        job_id=f"job-{n}",
        workspace_id=workspace,
        automation_id=automation,
        provider=Provider(provider),
        model=model,
        occurred_at=at(when) if isinstance(when, str) else when,
        latency_ms=100.0,
        status=Status.SUCCEEDED,
        usage_reported=reported,
        **tokens,
    )


def failed(
    when: str | datetime, code: ErrorCode = ErrorCode.AUTH_FAILED, *, workspace: str = "acme", job_id: str | None = None
) -> CompletionResult:
    n = next(_ids)
    return CompletionResult(
        job_id=job_id or f"failed-{n}",
        workspace_id=workspace,
        automation_id="a1",
        status=Status.FAILED,
        provider=Provider.OPENAI,
        model="gpt-4o-mini",
        error=ResultError(code=code, message="provider said no", retryable=False, provider_status=401),
        attempts=1,
        latency_ms=10.0,
        finished_at=at(when) if isinstance(when, str) else when,
    )


# USD per million tokens. gpt-4o-mini doubles on 2025-03-02; mistral-mystery has no price at all.
TEST_PRICES: dict[str, Any] = {
    "version": "test-1",
    "prices": [
        {"provider": "openai", "model": "gpt-4o-mini", "effective_from": "2025-01-01", "input": 1.0,
         "cache_read": 0.5, "output": 2.0, "source": "test"},
        {"provider": "openai", "model": "gpt-4o-mini", "effective_from": "2025-03-02", "input": 2.0,
         "cache_read": 1.0, "output": 4.0, "source": "test: price change"},
        {"provider": "anthropic", "model": "claude-x", "effective_from": "2025-01-01", "input": 3.0,
         "cache_read": 0.3, "cache_write": 3.75, "output": 15.0, "source": "test"},
        {"provider": "ollama", "model": "*", "effective_from": "2020-01-01", "input": 0, "output": 0,
         "source": "test: self-hosted"},
    ],
}


def write_prices(path: Path, table: dict[str, Any] = TEST_PRICES) -> str:
    path.write_bytes(orjson.dumps(table))
    return str(path)


class Pipeline:
    """The aggregator's batch handling without the broker: the same handlers the consumers call."""

    def __init__(self, store: Store, detector: AnomalyDetector) -> None:
        self.store = store
        self.notified = 0
        self.handlers = BatchHandlers(store, detector, AggregatorMetrics(), self._notify)

    def _notify(self) -> None:
        self.notified += 1

    async def usage(self, events: Sequence[UsageEvent]) -> None:
        await self.handlers.usage(events)

    async def failures(self, results: Sequence[CompletionResult]) -> None:
        await self.handlers.failures(results)

    async def alerts(self, workspace: str = "acme") -> list[Alert]:
        return sorted(await self.store.alerts(workspace, limit=1000), key=lambda a: a.dedupe_key)
