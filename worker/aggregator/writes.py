"""Every write to the store, as plain functions over one open transaction (``Sql``).

Ingest is idempotent: ``usage_events.event_id`` is the primary key and the insert skips conflicts, and
the hourly rollups grow only by the events that insert returned. Rows are written in a sorted order,
so two aggregators writing the same PostgreSQL lock rows in the same order and never deadlock.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, TypeVar

import orjson

from schemas.models import TOKEN_BUCKETS, CallState, CompletionResult, ProviderCallRecord, UsageEvent
from worker.aggregator.alerts import Alert
from worker.aggregator.db import Backend, Sql
from worker.aggregator.records import (
    COUNTER_NAMES,
    Counters,
    IngestOutcome,
    NewModel,
    hour_of,
    to_epoch_us,
)

T = TypeVar("T")

ROWS_PER_STATEMENT = 200

EVENT_COLUMNS = (
    "event_id", "job_id", "workspace_id", "automation_id", "provider", "model", "occurred_at_us",
    "hour_start", "status", "latency_ms", "usage_reported", *TOKEN_BUCKETS, "tags", "raw_usage", "received_at_us",
)
EVENT_TYPES = (
    "text", "text", "text", "text", "text", "text", "bigint", "bigint", "text", "float8", "boolean", "bigint",
    "bigint", "bigint", "bigint", "bigint", "jsonb", "jsonb", "bigint",
)
HOURLY_KEY = ("workspace_id", "hour_start", "provider", "model", "automation_id")
ALERT_COLUMNS = (
    "alert_id", "dedupe_key", "workspace_id", "kind", "severity", "message", "window_start_us",
    "window_end_us", "created_at_us", "details",
)
CALL_COLUMNS = (
    "call_id", "job_id", "workspace_id", "automation_id", "provider", "model", "started_at_us", "ended_at_us",
    "received_at_us",
)
CALL_TYPES = ("text", "text", "text", "text", "text", "text", "bigint", "bigint", "bigint")
FAILURE_COLUMNS = (
    "workspace_id", "job_id", "automation_id", "code", "provider", "model", "provider_status",
    "finished_at_us", "received_at_us",
)

_UPSERT_HOURLY = (
    f"INSERT INTO usage_hourly ({', '.join(HOURLY_KEY + COUNTER_NAMES)}) "  # noqa: S608 - constant names
    f"VALUES ({', '.join('?' * (len(HOURLY_KEY) + len(COUNTER_NAMES)))}) "
    f"ON CONFLICT ({', '.join(HOURLY_KEY)}) DO UPDATE SET "
    + ", ".join(f"{name} = usage_hourly.{name} + excluded.{name}" for name in COUNTER_NAMES)
)


def chunked(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def placeholders(count: int) -> str:
    return ", ".join("?" * count)


def insert_returning(
    sql: Sql, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, conflict: str, returning: str,
    pg_types: Sequence[str] | None = None,
) -> list[tuple[Any, ...]]:
    """``INSERT … ON CONFLICT (…) DO NOTHING RETURNING …``: the rows that were new.

    Multi-row VALUES; on PostgreSQL, given the column types, one array per column through ``unnest``
    instead (one short statement to plan however many rows: several times faster)."""
    if pg_types is not None and sql.backend is Backend.POSTGRESQL:
        return _insert_unnest(sql, table, columns, rows, pg_types, conflict=conflict, returning=returning)
    inserted: list[tuple[Any, ...]] = []
    row_marks = f"({placeholders(len(columns))})"
    for chunk in chunked(rows, ROWS_PER_STATEMENT):
        statement = (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES {', '.join([row_marks] * len(chunk))} "  # noqa: S608
            f"ON CONFLICT ({conflict}) DO NOTHING RETURNING {returning}"
        )
        inserted.extend(sql.query(statement, [value for row in chunk for value in row]))
    return inserted


def _insert_unnest(
    sql: Sql, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], pg_types: Sequence[str], *,
    conflict: str, returning: str,
) -> list[tuple[Any, ...]]:
    if not rows:
        return []
    arrays = [list(column) for column in zip(*rows, strict=True)]
    statement = (
        f"INSERT INTO {table} ({', '.join(columns)}) "  # noqa: S608 - constant names and types
        f"SELECT * FROM unnest({', '.join(f'?::{kind}[]' for kind in pg_types)}) "
        f"ON CONFLICT ({conflict}) DO NOTHING RETURNING {returning}"
    )
    return sql.query(statement, arrays)


def _json(value: Any) -> str | None:
    return None if value is None else orjson.dumps(value).decode()


def _event_row(event: UsageEvent, received_us: int) -> tuple[Any, ...]:
    occurred_us = to_epoch_us(event.occurred_at)
    return (
        event.event_id, event.job_id, event.workspace_id, event.automation_id, event.provider.value,
        event.model, occurred_us, hour_of(occurred_us), event.status.value, event.latency_ms,
        event.usage_reported, event.input_tokens, event.cache_read_tokens, event.cache_write_tokens,
        event.output_tokens, event.reasoning_tokens, _json(event.tags) or "{}", _json(event.raw_usage),
        received_us,
    )


def ingest_events(sql: Sql, events: Sequence[UsageEvent], received_us: int) -> IngestOutcome:
    """Stores the events not seen before and adds exactly those to the rollups."""
    unique: dict[str, UsageEvent] = {}
    for event in events:
        unique.setdefault(event.event_id, event)
    ordered = [unique[event_id] for event_id in sorted(unique)]
    rows = [_event_row(event, received_us) for event in ordered]
    new_ids = {row[0] for row in insert_returning(
        sql, "usage_events", EVENT_COLUMNS, rows, conflict="event_id", returning="event_id", pg_types=EVENT_TYPES
    )}
    new_events = [event for event in ordered if event.event_id in new_ids]
    _add_to_rollups(sql, new_events)
    _record_shapes(sql, new_events)
    new_models = _record_models(sql, new_events)
    return IngestOutcome(received=len(events), inserted=len(new_events), new_models=tuple(new_models))


def _add_to_rollups(sql: Sql, events: Sequence[UsageEvent]) -> None:
    deltas: dict[tuple[str, int, str, str, str], Counters] = {}
    for event in events:
        key = (event.workspace_id, hour_of(to_epoch_us(event.occurred_at)), event.provider.value, event.model,
               event.automation_id or "")
        deltas[key] = deltas.get(key, Counters()) + Counters.of(event)
    sql.execute_many(_UPSERT_HOURLY, [key + deltas[key].as_tuple() for key in sorted(deltas)])


SHAPE_COLUMNS = ("event_id", "system_chars", "input_chars", "messages", "tools", "images", "system_fingerprint")


def _record_shapes(sql: Sql, events: Sequence[UsageEvent]) -> None:
    """The shape of each new event that carries one (the drivers report reads it)."""
    rows = [
        (event.event_id, shape.system_chars, shape.input_chars, shape.messages, shape.tools, shape.images,
         shape.system_fingerprint)
        for event in events if (shape := event.shape) is not None
    ]
    insert_returning(sql, "usage_shapes", SHAPE_COLUMNS, rows, conflict="event_id", returning="event_id")


def _known_workspaces(sql: Sql, workspace_ids: Sequence[str]) -> set[str]:
    known: set[str] = set()
    for chunk in chunked(workspace_ids, ROWS_PER_STATEMENT):
        rows = sql.query(
            f"SELECT DISTINCT workspace_id FROM workspace_models WHERE workspace_id IN ({placeholders(len(chunk))})",  # noqa: S608
            chunk,
        )
        known.update(str(row[0]) for row in rows)
    return known


def _record_models(sql: Sql, events: Sequence[UsageEvent]) -> list[NewModel]:
    """Remembers each (workspace, provider, model) pair; returns the pairs never seen before."""
    firsts: dict[tuple[str, str, str], UsageEvent] = {}
    for event in sorted(events, key=lambda e: (e.occurred_at, e.event_id)):
        firsts.setdefault((event.workspace_id, event.provider.value, event.model), event)
    if not firsts:
        return []
    known = _known_workspaces(sql, sorted({key[0] for key in firsts}))
    keys = sorted(firsts)
    rows = [(*key, to_epoch_us(firsts[key].occurred_at), firsts[key].event_id) for key in keys]
    inserted = insert_returning(
        sql, "workspace_models", ("workspace_id", "provider", "model", "first_seen_us", "first_event_id"), rows,
        conflict="workspace_id, provider, model", returning="workspace_id, provider, model",
    )
    return [
        NewModel(
            workspace_id=workspace, provider=provider, model=model,
            first_seen=firsts[(workspace, provider, model)].occurred_at,
            first_event_id=firsts[(workspace, provider, model)].event_id,
            workspace_known=workspace in known,
        )
        for workspace, provider, model in sorted((str(a), str(b), str(c)) for a, b, c in inserted)
    ]


def _call_row(record: ProviderCallRecord, received_us: int) -> tuple[Any, ...]:
    ended_us = None
    if record.state is CallState.NOT_BILLED:
        ended_us = to_epoch_us(record.ended_at or record.started_at)
    return (
        record.call_id, record.job_id, record.workspace_id, record.automation_id, record.provider.value,
        record.model, to_epoch_us(record.started_at), ended_us, received_us,
    )


def record_calls(sql: Sql, records: Sequence[ProviderCallRecord], received_us: int) -> int:
    """Stores each call once (by ``call_id``), and closes those a ``not_billed`` record ended, whichever of
    the two records came first; returns how many calls were new."""
    rows: dict[str, tuple[Any, ...]] = {}
    for record in records:
        row = _call_row(record, received_us)
        earlier = rows.get(record.call_id)
        if earlier is None or earlier[7] is None:
            rows[record.call_id] = row
    ordered = [rows[call_id] for call_id in sorted(rows)]
    inserted = insert_returning(sql, "provider_calls", CALL_COLUMNS, ordered, conflict="call_id",
                                returning="call_id", pg_types=CALL_TYPES)
    ended = [(row[7], row[0]) for row in ordered if row[7] is not None]
    sql.execute_many(
        "UPDATE provider_calls SET ended_at_us = ? WHERE call_id = ? AND ended_at_us IS NULL", ended
    )
    return len(inserted)


def record_failures(sql: Sql, results: Sequence[CompletionResult], received_us: int) -> int:
    """Stores failed results (one per workspace and job); returns how many were new."""
    rows = sorted(
        {
            (r.workspace_id, r.job_id): (
                r.workspace_id, r.job_id, r.automation_id, r.error.code.value,
                r.provider.value if r.provider else None, r.model, r.error.provider_status,
                to_epoch_us(r.finished_at), received_us,
            )
            for r in results
            if r.error is not None
        }.values()
    )
    return len(insert_returning(
        sql, "failed_results", FAILURE_COLUMNS, rows, conflict="workspace_id, job_id", returning="job_id"
    ))


def _alert_row(alert: Alert) -> tuple[Any, ...]:
    return (
        alert.alert_id, alert.dedupe_key, alert.workspace_id, alert.kind.value, alert.severity.value,
        alert.message, to_epoch_us(alert.window_start), to_epoch_us(alert.window_end),
        to_epoch_us(alert.created_at), _json(alert.details),
    )


def insert_alerts(sql: Sql, alerts: Sequence[Alert]) -> list[Alert]:
    """Stores alerts whose dedupe key is new; returns those (the others were raised before)."""
    unique = {alert.dedupe_key: alert for alert in reversed(alerts)}
    ordered = [unique[key] for key in sorted(unique)]
    inserted = {row[0] for row in insert_returning(
        sql, "alerts", ALERT_COLUMNS, [_alert_row(a) for a in ordered], conflict="dedupe_key",
        returning="alert_id",
    )}
    return [alert for alert in ordered if alert.alert_id in inserted]


def claim_unpublished(sql: Sql, now_us: int, lease_us: int, limit: int) -> list[str]:
    """Leases up to ``limit`` unpublished alerts to this publisher; returns their ids, oldest first."""
    lock = " FOR UPDATE SKIP LOCKED" if sql.backend is Backend.POSTGRESQL else ""
    rows = sql.query(
        "SELECT alert_id FROM alerts WHERE published_at_us IS NULL "  # noqa: S608 - constant text
        "AND (claimed_until_us IS NULL OR claimed_until_us < ?) "
        f"ORDER BY created_at_us, alert_id LIMIT ?{lock}",
        (now_us, limit),
    )
    ids = [str(row[0]) for row in rows]
    if ids:
        sql.execute(
            f"UPDATE alerts SET claimed_until_us = ? WHERE alert_id IN ({placeholders(len(ids))})",  # noqa: S608
            (now_us + lease_us, *ids),
        )
    return ids


def mark_published(sql: Sql, alert_ids: Sequence[str], now_us: int) -> None:
    for chunk in chunked(alert_ids, ROWS_PER_STATEMENT):
        sql.execute(
            "UPDATE alerts SET published_at_us = ?, claimed_until_us = NULL "  # noqa: S608
            f"WHERE alert_id IN ({placeholders(len(chunk))})",
            (now_us, *chunk),
        )


def release_claims(sql: Sql, alert_ids: Sequence[str]) -> None:
    for chunk in chunked(alert_ids, ROWS_PER_STATEMENT):
        sql.execute(
            "UPDATE alerts SET claimed_until_us = NULL "  # noqa: S608
            f"WHERE published_at_us IS NULL AND alert_id IN ({placeholders(len(chunk))})",
            tuple(chunk),
        )
