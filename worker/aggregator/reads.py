"""Every read of the store, as plain functions over one open transaction (``Sql``).

Usage comes from the hourly rollups for the whole hours inside a range, and from the raw events for
the partial hours at its edges, so any ``since``/``until`` is exact to the microsecond.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from schemas.models import TOKEN_BUCKETS
from worker.aggregator.alerts import Alert, AlertKind, Severity
from worker.aggregator.db import Sql
from worker.aggregator.records import (
    COUNTER_NAMES,
    DAY_S,
    Counters,
    DriverCall,
    UnreportedRow,
    UsageRow,
    from_epoch_us,
)
from worker.aggregator.writes import ALERT_COLUMNS, placeholders

HOUR_US = 3_600_000_000
_LOWEST_US = -(2**62)
_HIGHEST_US = 2**62

Period = Literal["hour", "day"]

_RAW_COUNTERS = ("1", "CASE WHEN usage_reported THEN 0 ELSE 1 END", *TOKEN_BUCKETS)


@dataclass(frozen=True, slots=True)
class _Ranges:
    """Whole hours [first_hour, end_hour) from rollups, and the edge intervals from raw events."""

    first_hour: int
    end_hour: int
    raw: tuple[tuple[int, int], ...]


def _split(since_us: int | None, until_us: int | None) -> _Ranges:
    low = _LOWEST_US if since_us is None else since_us
    high = _HIGHEST_US if until_us is None else until_us
    first_hour = -(-low // HOUR_US) * 3600  # ceil, in seconds
    end_hour = high // HOUR_US * 3600  # floor, in seconds
    if first_hour >= end_hour:
        return _Ranges(0, 0, ((low, high),) if low < high else ())
    raw = tuple(r for r in ((low, first_hour * 1_000_000), (end_hour * 1_000_000, high)) if r[0] < r[1])
    return _Ranges(first_hour, end_hour, raw)


def usage_rows(
    sql: Sql, workspace_ids: Sequence[str], since_us: int | None, until_us: int | None, period: Period = "day"
) -> list[UsageRow]:
    """Counters per workspace, period, provider, model and automation, for ``since <= occurred_at < until``."""
    if not workspace_ids:
        return []
    ranges = _split(since_us, until_us)
    in_workspaces = f"workspace_id IN ({placeholders(len(workspace_ids))})"
    parts: list[str] = []
    params: list[Any] = []
    if ranges.first_hour < ranges.end_hour:
        parts.append(
            f"SELECT workspace_id, hour_start, provider, model, automation_id, {', '.join(COUNTER_NAMES)} "  # noqa: S608
            f"FROM usage_hourly WHERE {in_workspaces} AND hour_start >= ? AND hour_start < ?"
        )
        params += [*workspace_ids, ranges.first_hour, ranges.end_hour]
    if ranges.raw:
        edges = " OR ".join("(occurred_at_us >= ? AND occurred_at_us < ?)" for _ in ranges.raw)
        parts.append(
            "SELECT workspace_id, hour_start, provider, model, COALESCE(automation_id, '') AS automation_id, "  # noqa: S608
            + ", ".join(f"{expr} AS {name}" for expr, name in zip(_RAW_COUNTERS, COUNTER_NAMES, strict=True))
            + f" FROM usage_events WHERE {in_workspaces} AND ({edges})"
        )
        params += [*workspace_ids, *(bound for edge in ranges.raw for bound in edge)]
    if not parts:
        return []
    period_expr = "hour_start" if period == "hour" else f"hour_start - hour_start % {DAY_S}"
    statement = (
        f"SELECT workspace_id, {period_expr}, provider, model, automation_id, "  # noqa: S608
        + ", ".join(f"SUM({name})" for name in COUNTER_NAMES)
        + f" FROM ({' UNION ALL '.join(parts)}) AS u GROUP BY 1, 2, 3, 4, 5 ORDER BY 1, 2, 3, 4, 5"
    )
    return [
        UsageRow(
            workspace_id=str(row[0]), period_start=int(row[1]), provider=str(row[2]), model=str(row[3]),
            automation_id=str(row[4]) or None, counters=Counters.from_row(row[5:]),
        )
        for row in sql.query(statement, params)
    ]


def unreported_calls(
    sql: Sql, workspace_id: str, since_us: int | None, until_us: int | None, started_before_us: int
) -> list[UnreportedRow]:
    """Calls started in [since, until) and before ``started_before`` that no usage event reported and no
    ``not_billed`` record closed, per UTC day, provider, model and automation. A late usage event removes
    its call from here at once (it is then counted in ``requests``), so no call is counted twice."""
    clauses = ["c.workspace_id = ?", "c.started_at_us < ?", "c.ended_at_us IS NULL"]
    params: list[Any] = [workspace_id, started_before_us]
    for clause, value in (("c.started_at_us >= ?", since_us), ("c.started_at_us < ?", until_us)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    day_us = DAY_S * 1_000_000
    rows = sql.query(
        f"SELECT c.started_at_us - c.started_at_us % {day_us} AS day, c.provider, c.model, "  # noqa: S608
        "COALESCE(c.automation_id, '') AS automation, COUNT(*) FROM provider_calls c "
        f"WHERE {' AND '.join(clauses)} "
        "AND NOT EXISTS (SELECT 1 FROM usage_events e WHERE e.event_id = c.call_id) "
        "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
        params,
    )
    return [
        UnreportedRow(day_start=int(row[0]) // 1_000_000, provider=str(row[1]), model=str(row[2]),
                      automation_id=str(row[3]) or None, calls=int(row[4]))
        for row in rows
    ]


DRIVER_COLUMNS = (
    "e.event_id", "e.job_id", "e.automation_id", "e.provider", "e.model", "e.occurred_at_us", "e.usage_reported",
    *(f"e.{bucket}" for bucket in TOKEN_BUCKETS), "e.tags", "s.system_chars", "s.input_chars", "s.system_fingerprint",
)


def driver_calls(sql: Sql, workspace_id: str, since_us: int | None, until_us: int | None) -> list[DriverCall]:
    """Every usage event of the workspace with ``since <= occurred_at < until``, with its shape when it has one."""
    rows = sql.query(
        f"SELECT {', '.join(DRIVER_COLUMNS)} FROM usage_events e "  # noqa: S608 - constant names
        "LEFT JOIN usage_shapes s ON s.event_id = e.event_id "
        "WHERE e.workspace_id = ? AND e.occurred_at_us >= ? AND e.occurred_at_us < ? "
        "ORDER BY e.occurred_at_us, e.event_id",
        (workspace_id, _LOWEST_US if since_us is None else since_us, _HIGHEST_US if until_us is None else until_us),
    )
    calls = []
    for row in rows:
        tags = row[12]
        tags = orjson.loads(tags) if isinstance(tags, str | bytes) else tags
        calls.append(DriverCall(
            event_id=str(row[0]), job_id=str(row[1]), automation_id=row[2], provider=str(row[3]), model=str(row[4]),
            occurred_at=from_epoch_us(int(row[5])),
            counters=Counters(1, 0 if row[6] else 1, *(int(value) for value in row[7:12])),
            tags=tags if isinstance(tags, dict) else {},
            system_chars=None if row[13] is None else int(row[13]),
            input_chars=None if row[14] is None else int(row[14]),
            system_fingerprint=row[15],
        ))
    return calls


def count_failures(sql: Sql, workspace_id: str, code: str, after_us: int, until_us: int) -> int:
    """Failed results of ``code`` with ``after < finished_at <= until``."""
    rows = sql.query(
        "SELECT COUNT(*) FROM failed_results WHERE workspace_id = ? AND code = ? "
        "AND finished_at_us > ? AND finished_at_us <= ?",
        (workspace_id, code, after_us, until_us),
    )
    return int(rows[0][0])


def _alert(row: tuple[Any, ...]) -> Alert:
    values = dict(zip(ALERT_COLUMNS, row, strict=True))
    details = values["details"]
    return Alert(
        alert_id=values["alert_id"],
        dedupe_key=values["dedupe_key"],
        workspace_id=values["workspace_id"],
        kind=AlertKind(values["kind"]),
        severity=Severity(values["severity"]),
        message=values["message"],
        window_start=from_epoch_us(int(values["window_start_us"])),
        window_end=from_epoch_us(int(values["window_end_us"])),
        created_at=from_epoch_us(int(values["created_at_us"])),
        details=orjson.loads(details) if isinstance(details, str | bytes) else details,
    )


def list_alerts(
    sql: Sql, workspace_id: str, since_us: int | None, until_us: int | None, kind: str | None, limit: int
) -> list[Alert]:
    """The workspace's alerts, newest first, by creation time."""
    clauses: list[str] = ["workspace_id = ?"]
    params: list[Any] = [workspace_id]
    for clause, value in (("created_at_us >= ?", since_us), ("created_at_us < ?", until_us), ("kind = ?", kind)):
        if value is not None:
            clauses.append(clause)
            params.append(value)
    rows = sql.query(
        f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts WHERE {' AND '.join(clauses)} "  # noqa: S608
        "ORDER BY created_at_us DESC, alert_id LIMIT ?",
        (*params, limit),
    )
    return [_alert(row) for row in rows]


def alerts_by_id(sql: Sql, alert_ids: Sequence[str]) -> list[Alert]:
    if not alert_ids:
        return []
    rows = sql.query(
        f"SELECT {', '.join(ALERT_COLUMNS)} FROM alerts "  # noqa: S608
        f"WHERE alert_id IN ({placeholders(len(alert_ids))}) ORDER BY created_at_us, alert_id",
        tuple(alert_ids),
    )
    return [_alert(row) for row in rows]


def unpublished_count(sql: Sql) -> int:
    return int(sql.query("SELECT COUNT(*) FROM alerts WHERE published_at_us IS NULL")[0][0])
