"""Store URLs, versioned migrations, and readers that must not migrate."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import pytest

from worker.aggregator.db import Backend, StoreSchemaError, parse_store_url
from worker.aggregator.migrations import LATEST_VERSION, MIGRATIONS, MIGRATIONS_TABLE
from worker.aggregator.store import Store


@pytest.mark.parametrize(
    ("url", "backend", "target"),
    [
        ("sqlite:///./byok.db", Backend.SQLITE, "./byok.db"),
        ("sqlite:///data/byok.db", Backend.SQLITE, "data/byok.db"),
        ("sqlite:////var/lib/byok/byok.db", Backend.SQLITE, "/var/lib/byok/byok.db"),
        ("postgresql://u@db:5432/byok", Backend.POSTGRESQL, "postgresql://u@db:5432/byok"),
    ],
)
def test_store_urls(url: str, backend: Backend, target: str) -> None:
    parsed = parse_store_url(url)
    assert (parsed.backend, parsed.target) == (backend, target)


@pytest.mark.parametrize("url", ["mysql://x", "sqlite://relative.db", "sqlite:///", "byok.db"])
def test_other_urls_are_refused(url: str) -> None:
    with pytest.raises(ValueError, match="sqlite"):
        parse_store_url(url)


async def test_migrations_are_recorded_and_applied_once(store_url: str) -> None:
    for _ in range(2):  # a second aggregator (or a restart) finds the schema current
        store = await Store.open(store_url)
        versions = await store.schema_versions()
        await store.close()
        # Numbers are reserved per feature, so the list may have gaps; it ends at the latest.
        assert versions == [migration.version for migration in MIGRATIONS]
        assert versions[-1] == LATEST_VERSION


async def test_a_reader_never_creates_or_migrates(tmp_path: Path, pg_url: str) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreSchemaError, match="no consumption store"):
        await Store.open(f"sqlite:///{missing}", migrate_schema=False)
    assert not missing.exists()
    with pytest.raises(StoreSchemaError, match="empty"):
        await Store.open(pg_url, migrate_schema=False)
    await (await Store.open(pg_url)).close()
    await (await Store.open(pg_url, migrate_schema=False)).close()


async def test_a_schema_newer_than_the_code_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'future.db'}"
    await (await Store.open(url)).close()
    with contextlib.closing(sqlite3.connect(tmp_path / "future.db")) as conn, conn:
        conn.execute(f"INSERT INTO {MIGRATIONS_TABLE} VALUES (?, 'future', 0)", (LATEST_VERSION + 1,))  # noqa: S608
    with pytest.raises(StoreSchemaError, match="newer"):
        await Store.open(url)


async def test_a_reader_refuses_a_store_missing_an_earlier_migration(tmp_path: Path) -> None:
    """Migration numbers are reserved per feature: a store at the latest version may still lack one before it."""
    url = f"sqlite:///{tmp_path / 'gap.db'}"
    await (await Store.open(url)).close()
    with contextlib.closing(sqlite3.connect(tmp_path / "gap.db")) as conn, conn:
        conn.execute(f"DELETE FROM {MIGRATIONS_TABLE} WHERE version = 3")  # noqa: S608
        conn.execute("DROP TABLE usage_shapes")
    with pytest.raises(StoreSchemaError, match="lacks migration 3"):
        await Store.open(url, migrate_schema=False)
    await (await Store.open(url)).close()  # the aggregator applies what is missing
    await (await Store.open(url, migrate_schema=False)).close()
