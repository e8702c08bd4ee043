"""The two SQL backends behind one small interface: SQLite (default) and PostgreSQL (scale-out).

Both are driven synchronously from one dedicated thread per connection, so the event loop never
blocks on I/O and a connection is never shared between threads. SQL is written once, with ``?``
placeholders; the PostgreSQL dialect rewrites them for psycopg.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo
import psycopg.errors

T = TypeVar("T")
Params = Sequence[Any]

_TRANSIENT_RETRIES = 8


class Backend(StrEnum):
    SQLITE = "sqlite"
    POSTGRESQL = "postgresql"


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The database cannot be reached or is busy: retry the same work later."""


class StoreDataError(StoreError):
    """The database refused this data: retrying the same input fails again."""


class StoreSchemaError(StoreError):
    """The store's schema is missing, or at a version this code does not know."""


@dataclass(frozen=True, slots=True)
class StoreUrl:
    backend: Backend
    target: str  # a file path (or ``:memory:``) for SQLite, a libpq URL for PostgreSQL

    @property
    def in_memory(self) -> bool:
        return self.backend is Backend.SQLITE and self.target == ":memory:"


def parse_store_url(url: str) -> StoreUrl:
    """``sqlite:///relative/path``, ``sqlite:////absolute/path``, ``sqlite:///:memory:`` or ``postgresql://…``."""
    if url.startswith("sqlite:///"):
        path = url.removeprefix("sqlite:///")
        if not path:
            raise ValueError("a sqlite store URL needs a path: sqlite:///relative/path or sqlite:////absolute/path")
        return StoreUrl(Backend.SQLITE, path)
    if url.startswith(("postgresql://", "postgres://")):
        return StoreUrl(Backend.POSTGRESQL, url)
    raise ValueError("BYOK_STORE_URL must start with sqlite:/// or postgresql:// (got another scheme)")


@lru_cache(maxsize=512)
def _to_pyformat(sql: str) -> str:
    return sql.replace("%", "%%").replace("?", "%s")


class Sql:
    """One open connection, used only from its own thread. Rows come back as tuples."""

    def __init__(self, url: StoreUrl, *, create: bool) -> None:
        self.backend = url.backend
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[tuple[Any, ...]] | None = None
        if url.backend is Backend.SQLITE:
            self._sqlite = _connect_sqlite(url.target, create=create)
        else:
            conninfo = url.target
            if "application_name" not in psycopg.conninfo.conninfo_to_dict(conninfo):
                conninfo = psycopg.conninfo.make_conninfo(conninfo, application_name="byok-aggregator")
            self._pg = psycopg.connect(conninfo, autocommit=True)

    @property
    def json_type(self) -> str:
        return "TEXT" if self.backend is Backend.SQLITE else "JSONB"

    @property
    def broken(self) -> bool:
        return self._pg is not None and (self._pg.closed or self._pg.broken)

    def query(self, sql: str, params: Params = ()) -> list[tuple[Any, ...]]:
        if self._sqlite is not None:
            return self._sqlite.execute(sql, params).fetchall()
        assert self._pg is not None
        cursor = self._pg.execute(_to_pyformat(sql), params)
        return cursor.fetchall() if cursor.description is not None else []

    def execute(self, sql: str, params: Params = ()) -> int:
        """Runs one statement; returns the number of rows it changed."""
        if self._sqlite is not None:
            return self._sqlite.execute(sql, params).rowcount
        assert self._pg is not None
        return self._pg.execute(_to_pyformat(sql), params).rowcount

    def execute_many(self, sql: str, rows: Sequence[Params]) -> None:
        if not rows:
            return
        if self._sqlite is not None:
            self._sqlite.executemany(sql, rows)
            return
        assert self._pg is not None
        with self._pg.cursor() as cursor:
            cursor.executemany(_to_pyformat(sql), rows)

    @contextmanager
    def transaction(self, *, write: bool) -> Iterator[None]:
        begin = "BEGIN IMMEDIATE" if write and self.backend is Backend.SQLITE else "BEGIN"
        self.execute(begin)
        try:
            yield
        except BaseException:
            if not self.broken:
                with suppress(Exception):  # the original error matters, not a failed rollback
                    self.execute("ROLLBACK")
            raise
        self.execute("COMMIT")

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            self._pg.close()


def _connect_sqlite(path: str, *, create: bool) -> sqlite3.Connection:
    if path == ":memory:":
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    else:
        file = Path(path)
        if create:
            file.parent.mkdir(parents=True, exist_ok=True)
        elif not file.exists():
            raise StoreSchemaError(f"no consumption store at {file}: has `byok aggregator` run yet?")
        conn = sqlite3.connect(file, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn


def _classify(exc: Exception) -> StoreError | None:
    """Our error type for a driver error, or None when it is not a database error at all."""
    if isinstance(exc, sqlite3.OperationalError):
        return StoreUnavailable(f"sqlite: {exc}")
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError | sqlite3.ProgrammingError | OverflowError):
        return StoreDataError(f"sqlite: {exc}")
    if isinstance(exc, psycopg.errors.DataError | psycopg.errors.IntegrityError):
        return StoreDataError(f"postgresql: {type(exc).__name__}: {exc}")
    if isinstance(exc, psycopg.OperationalError | psycopg.errors.AdminShutdown | psycopg.InterfaceError):
        return StoreUnavailable(f"postgresql: {type(exc).__name__}: {exc}")
    return None


def _conflict(exc: Exception) -> bool:
    """Two writers collided: the transaction can simply run again."""
    return isinstance(exc, psycopg.errors.DeadlockDetected | psycopg.errors.SerializationFailure)


class Database:
    """A connection on its own thread. ``run`` executes a function inside one transaction there."""

    def __init__(self, url: StoreUrl, *, create: bool, name: str) -> None:
        self._url = url
        self._create = create
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"byok-{name}")
        self._sql: Sql | None = None

    @property
    def backend(self) -> Backend:
        return self._url.backend

    async def run(self, work: Callable[[Sql], T], *, write: bool) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run_sync, work, write)

    def _connection(self) -> Sql:
        if self._sql is not None and self._sql.broken:
            self._sql.close()
            self._sql = None
        if self._sql is None:
            try:
                self._sql = Sql(self._url, create=self._create)
            except (sqlite3.Error, psycopg.Error) as exc:
                raise StoreUnavailable(f"{self._url.backend.value}: cannot connect: {exc}") from exc
        return self._sql

    def _run_sync(self, work: Callable[[Sql], T], write: bool) -> T:
        """Runs ``work`` in a transaction, again after a conflict, and once more on a fresh connection if
        the old one broke (a server restart). Every write here is idempotent, so a retry whose first try
        did commit changes nothing."""
        reconnected = False
        for attempt in range(_TRANSIENT_RETRIES):
            sql = self._connection()
            try:
                with sql.transaction(write=write):
                    return work(sql)
            except Exception as exc:
                if _conflict(exc) and attempt + 1 < _TRANSIENT_RETRIES:
                    time.sleep(0.005 * (attempt + 1))
                    continue
                if sql.broken and not reconnected:
                    reconnected = True
                    continue
                mapped = _classify(exc)
                if mapped is None:
                    raise
                raise mapped from exc
        raise StoreUnavailable("the transaction kept conflicting with another writer")

    async def close(self) -> None:
        def _close() -> None:
            if self._sql is not None:
                self._sql.close()
                self._sql = None

        await asyncio.get_running_loop().run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True)
