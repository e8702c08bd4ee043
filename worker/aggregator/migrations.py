"""Versioned schema migrations, recorded in ``byok_schema_migrations``.

A migration is applied once, in a transaction, in version order. On PostgreSQL an advisory lock
serialises aggregators that start together; on SQLite ``BEGIN IMMEDIATE`` does the same. Times are
stored as integers (microseconds or seconds since the epoch, UTC), so both backends sort and bucket
them with the same SQL. ``{json}`` becomes TEXT on SQLite and JSONB on PostgreSQL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from worker.aggregator.db import Backend, Sql, StoreSchemaError

MIGRATIONS_TABLE = "byok_schema_migrations"
_PG_LOCK_KEY = 0x6279_6F6B_6167_67  # "byokagg"


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    statements: tuple[str, ...]


_TOKENS = """
    input_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "usage events, hourly rollups, workspace models, failed results, alerts",
        (
            f"""CREATE TABLE usage_events (
                event_id TEXT PRIMARY KEY,
                job_id TEXT NOT NULL,
                workspace_id TEXT NOT NULL,
                automation_id TEXT,
                provider TEXT NOT NULL,
                model TEXT NOT NULL,
                occurred_at_us BIGINT NOT NULL,
                hour_start BIGINT NOT NULL,
                status TEXT NOT NULL,
                latency_ms DOUBLE PRECISION NOT NULL,
                usage_reported BOOLEAN NOT NULL,{_TOKENS},
                tags {{json}} NOT NULL,
                raw_usage {{json}},
                received_at_us BIGINT NOT NULL
            )""",
            "CREATE INDEX usage_events_workspace_time ON usage_events (workspace_id, occurred_at_us)",
            f"""CREATE TABLE usage_hourly (
                workspace_id TEXT NOT NULL,
                hour_start BIGINT NOT NULL,
                provider TEXT NOT NULL,
                model TEXT NOT NULL,
                automation_id TEXT NOT NULL,
                requests BIGINT NOT NULL,
                unreported_requests BIGINT NOT NULL,{_TOKENS},
                PRIMARY KEY (workspace_id, hour_start, provider, model, automation_id)
            )""",
            """CREATE TABLE workspace_models (
                workspace_id TEXT NOT NULL,
                provider TEXT NOT NULL,
                model TEXT NOT NULL,
                first_seen_us BIGINT NOT NULL,
                first_event_id TEXT NOT NULL,
                PRIMARY KEY (workspace_id, provider, model)
            )""",
            """CREATE TABLE failed_results (
                workspace_id TEXT NOT NULL,
                job_id TEXT NOT NULL,
                automation_id TEXT,
                code TEXT NOT NULL,
                provider TEXT,
                model TEXT,
                provider_status INTEGER,
                finished_at_us BIGINT NOT NULL,
                received_at_us BIGINT NOT NULL,
                PRIMARY KEY (workspace_id, job_id)
            )""",
            "CREATE INDEX failed_results_burst ON failed_results (workspace_id, code, finished_at_us)",
            """CREATE TABLE alerts (
                alert_id TEXT PRIMARY KEY,
                dedupe_key TEXT NOT NULL UNIQUE,
                workspace_id TEXT NOT NULL,
                kind TEXT NOT NULL,
                severity TEXT NOT NULL,
                message TEXT NOT NULL,
                window_start_us BIGINT NOT NULL,
                window_end_us BIGINT NOT NULL,
                created_at_us BIGINT NOT NULL,
                details {json} NOT NULL,
                published_at_us BIGINT,
                claimed_until_us BIGINT
            )""",
            "CREATE INDEX alerts_workspace_time ON alerts (workspace_id, created_at_us)",
            "CREATE INDEX alerts_unpublished ON alerts (published_at_us, created_at_us)",
        ),
    ),
    Migration(
        2,
        "budgets and their reservations (worker.budgets)",
        (
            # automation_id '' is the workspace-wide budget; limit_usd and max_in_flight may each be NULL.
            """CREATE TABLE budgets (
                workspace_id TEXT NOT NULL,
                automation_id TEXT NOT NULL,
                limit_usd DOUBLE PRECISION,
                period TEXT NOT NULL,
                action TEXT NOT NULL,
                max_in_flight INTEGER,
                updated_at_us BIGINT NOT NULL,
                PRIMARY KEY (workspace_id, automation_id)
            )""",
            # One row per provider call admitted under a budget or cap (call_id = the usage event's event_id).
            # state 'live': the call is running, held until lease_until_us; 'settled': the call is over and
            # amount_usd is its actual cost (or the reserved amount when it may have been billed unreported).
            """CREATE TABLE budget_reservations (
                call_id TEXT PRIMARY KEY,
                workspace_id TEXT NOT NULL,
                automation_id TEXT NOT NULL,
                amount_usd DOUBLE PRECISION NOT NULL,
                state TEXT NOT NULL,
                holder TEXT NOT NULL,
                created_at_us BIGINT NOT NULL,
                lease_until_us BIGINT NOT NULL
            )""",
            "CREATE INDEX budget_reservations_workspace ON budget_reservations (workspace_id, created_at_us)",
        ),
    ),
    Migration(
        3,
        "usage shapes: the size of each call's input and its system prompt's fingerprint (cost drivers)",
        (
            """CREATE TABLE usage_shapes (
                event_id TEXT PRIMARY KEY,
                system_chars BIGINT NOT NULL,
                input_chars BIGINT NOT NULL,
                messages BIGINT NOT NULL,
                tools BIGINT NOT NULL,
                images BIGINT NOT NULL,
                system_fingerprint TEXT
            )""",
        ),
    ),
    Migration(
        4,
        "provider call records: calls that may be billed, completed by their usage event",
        (
            # One row per call record (call_id = the usage event's event_id). A call is reported when a usage
            # event has its id, closed when ended_at_us is set (not billed); otherwise it is open.
            """CREATE TABLE provider_calls (
                call_id TEXT PRIMARY KEY,
                job_id TEXT NOT NULL,
                workspace_id TEXT NOT NULL,
                automation_id TEXT,
                provider TEXT NOT NULL,
                model TEXT NOT NULL,
                started_at_us BIGINT NOT NULL,
                ended_at_us BIGINT,
                received_at_us BIGINT NOT NULL
            )""",
            "CREATE INDEX provider_calls_workspace_time ON provider_calls (workspace_id, started_at_us)",
        ),
    ),
    Migration(
        5,
        "budgets: a workspace's weight in the fair share of the workers' run slots",
        ("ALTER TABLE budgets ADD COLUMN weight INTEGER",),  # NULL: weight 1
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def _ensure_table(sql: Sql) -> None:
    if sql.backend is Backend.POSTGRESQL:
        sql.query("SELECT pg_advisory_xact_lock(?)", (_PG_LOCK_KEY,))
    sql.execute(
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE} "
        "(version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at_us BIGINT NOT NULL)"
    )


def applied_versions(sql: Sql) -> list[int]:
    return sorted(int(row[0]) for row in sql.query(f"SELECT version FROM {MIGRATIONS_TABLE}"))  # noqa: S608


def _check_known(versions: list[int]) -> None:
    if versions and versions[-1] > LATEST_VERSION:
        raise StoreSchemaError(
            f"the store's schema is at version {versions[-1]}, newer than this aggregator's {LATEST_VERSION}"
        )


def migrate(sql: Sql) -> list[int]:
    """Applies what is missing, inside the caller's write transaction; returns the versions applied now."""
    _ensure_table(sql)
    done = set(applied_versions(sql))
    _check_known(sorted(done))
    applied = []
    for migration in MIGRATIONS:
        if migration.version in done:
            continue
        for statement in migration.statements:
            sql.execute(statement.replace("{json}", sql.json_type))
        sql.execute(
            f"INSERT INTO {MIGRATIONS_TABLE} (version, name, applied_at_us) VALUES (?, ?, ?)",  # noqa: S608
            (migration.version, migration.name, time.time_ns() // 1000),
        )
        applied.append(migration.version)
    return applied


def check_current(sql: Sql) -> None:
    """For readers that must not migrate (the CLI): the schema is exactly the one this code writes."""
    if sql.backend is Backend.SQLITE:
        exists = sql.query("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (MIGRATIONS_TABLE,))
    else:
        exists = sql.query("SELECT 1 FROM pg_catalog.pg_tables WHERE tablename = ? "
                           "AND schemaname = ANY (current_schemas(false))", (MIGRATIONS_TABLE,))
    if not exists:
        raise StoreSchemaError("the consumption store is empty: has `byok aggregator` run yet?")
    versions = applied_versions(sql)
    _check_known(versions)
    missing = sorted({migration.version for migration in MIGRATIONS} - set(versions))
    if missing:
        # Numbers are reserved per feature: a store may be at the latest version and still miss an earlier one.
        raise StoreSchemaError(
            f"the store's schema lacks migration {', '.join(map(str, missing))} (it is at version "
            f"{versions[-1] if versions else 0}, this code needs {LATEST_VERSION}): start `byok aggregator` once "
            "to migrate it"
        )
