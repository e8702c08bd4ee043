"""The consumption store: SQLite by default, PostgreSQL by URL, one async interface.

Writes go through one connection on its own thread and reads through another, so API queries never
wait behind a batch being ingested (SQLite in WAL mode lets the reader see the last commit).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime

from schemas.models import CompletionResult, ProviderCallRecord, UsageEvent
from worker.aggregator import reads, writes
from worker.aggregator.alerts import Alert
from worker.aggregator.db import Backend, Database, Sql, StoreUrl, parse_store_url
from worker.aggregator.migrations import applied_versions, check_current, migrate
from worker.aggregator.records import DriverCall, IngestOutcome, NewModel, UnreportedRow, UsageRow, to_epoch_us

FirstUseRule = Callable[[Sequence[NewModel]], Sequence[Alert]]


def _now_us() -> int:
    return time.time_ns() // 1000


def _us(moment: datetime | None) -> int | None:
    return None if moment is None else to_epoch_us(moment)


class Store:
    def __init__(self, url: StoreUrl, writer: Database, reader: Database) -> None:
        self.url = url
        self._writer = writer
        self._reader = reader

    @classmethod
    async def open(cls, url: str, *, migrate_schema: bool = True) -> Store:
        """Connects and brings the schema up to date; with ``migrate_schema=False`` (readers such as the
        CLI) it creates nothing and fails unless the schema is already current."""
        parsed = parse_store_url(url)
        writer = Database(parsed, create=migrate_schema, name="store-write")
        reader = writer if parsed.in_memory else Database(parsed, create=False, name="store-read")
        store = cls(parsed, writer, reader)
        try:
            await writer.run(migrate if migrate_schema else check_current, write=migrate_schema)
        except BaseException:
            await store.close()
            raise
        return store

    @property
    def writer(self) -> Database:
        """The write connection, shared with the budgets' admin (``worker.budgets.admin``)."""
        return self._writer

    @property
    def backend(self) -> Backend:
        return self.url.backend

    async def close(self) -> None:
        await self._writer.close()
        if self._reader is not self._writer:
            await self._reader.close()

    async def schema_versions(self) -> list[int]:
        return await self._reader.run(applied_versions, write=False)

    async def ping(self) -> None:
        await self._reader.run(lambda sql: sql.query("SELECT 1"), write=False)

    # ------------------------------------------------------------------ writes

    async def ingest(
        self, events: Sequence[UsageEvent], first_use: FirstUseRule | None = None,
        calls: Sequence[ProviderCallRecord] = (),
    ) -> IngestOutcome:
        """Counts each new ``event_id`` once, in one transaction with its rollups, its workspace-model
        record, the alerts ``first_use`` raises for models used for the first time, and the provider-call
        records of the same batch."""
        received_us = _now_us()

        def work(sql: Sql) -> IngestOutcome:
            if calls:
                writes.record_calls(sql, calls, received_us)
            outcome = writes.ingest_events(sql, events, received_us)
            if first_use is not None and outcome.new_models:
                raised = writes.insert_alerts(sql, first_use(outcome.new_models))
                outcome = replace(outcome, alerts_raised=len(raised))
            return outcome

        return await self._writer.run(work, write=True)

    async def record_failures(self, results: Sequence[CompletionResult]) -> int:
        received_us = _now_us()
        return await self._writer.run(lambda sql: writes.record_failures(sql, results, received_us), write=True)

    async def add_alerts(self, alerts: Sequence[Alert]) -> list[Alert]:
        """Stores the alerts not raised before (by dedupe key) and returns them."""
        if not alerts:
            return []
        return await self._writer.run(lambda sql: writes.insert_alerts(sql, alerts), write=True)

    async def claim_unpublished(self, limit: int, lease_s: float) -> list[Alert]:
        now_us, lease_us = _now_us(), int(lease_s * 1_000_000)

        def work(sql: Sql) -> list[Alert]:
            return reads.alerts_by_id(sql, writes.claim_unpublished(sql, now_us, lease_us, limit))

        return await self._writer.run(work, write=True)

    async def mark_published(self, alert_ids: Sequence[str]) -> None:
        now_us = _now_us()
        await self._writer.run(lambda sql: writes.mark_published(sql, alert_ids, now_us), write=True)

    async def release_claims(self, alert_ids: Sequence[str]) -> None:
        await self._writer.run(lambda sql: writes.release_claims(sql, alert_ids), write=True)

    # ------------------------------------------------------------------ reads

    async def usage(
        self, workspace_ids: Sequence[str], since: datetime | None, until: datetime | None,
        period: reads.Period = "day",
    ) -> list[UsageRow]:
        ids = sorted(set(workspace_ids))
        return await self._reader.run(
            lambda sql: reads.usage_rows(sql, ids, _us(since), _us(until), period), write=False
        )

    async def unreported_calls(
        self, workspace_id: str, since: datetime | None, until: datetime | None, started_before: datetime,
    ) -> list[UnreportedRow]:
        """Open calls of ``workspace_id`` started in [since, until) and before ``started_before``, per day."""
        before_us = to_epoch_us(started_before)
        return await self._reader.run(
            lambda sql: reads.unreported_calls(sql, workspace_id, _us(since), _us(until), before_us), write=False
        )

    async def driver_calls(
        self, workspace_id: str, since: datetime | None, until: datetime | None
    ) -> list[DriverCall]:
        return await self._reader.run(
            lambda sql: reads.driver_calls(sql, workspace_id, _us(since), _us(until)), write=False
        )

    async def count_failures(self, workspace_id: str, code: str, after: datetime, until: datetime) -> int:
        after_us, until_us = to_epoch_us(after), to_epoch_us(until)
        return await self._reader.run(
            lambda sql: reads.count_failures(sql, workspace_id, code, after_us, until_us), write=False
        )

    async def alerts(
        self, workspace_id: str, *, since: datetime | None = None, until: datetime | None = None,
        kind: str | None = None, limit: int = 100,
    ) -> list[Alert]:
        return await self._reader.run(
            lambda sql: reads.list_alerts(sql, workspace_id, _us(since), _us(until), kind, limit), write=False
        )

    async def unpublished_alerts(self) -> int:
        return await self._reader.run(reads.unpublished_count, write=False)
