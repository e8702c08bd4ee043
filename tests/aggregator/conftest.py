"""Stores on both backends: a temporary SQLite file, and a PostgreSQL schema of its own per test.

PostgreSQL must be reachable (127.0.0.1:5432, database ``test``): a missing server fails the tests.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from tests.aggregator.helpers import PG_BASE_URL, write_prices
from worker.aggregator.pricing import PriceTable, load_prices
from worker.aggregator.store import Store


def pg_schema_url(schema: str) -> str:
    return f"{PG_BASE_URL}?options=-csearch_path%3D{schema}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped after the test."""
    schema = f"byok_test_{secrets.token_hex(6)}"
    with psycopg.connect(PG_BASE_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield pg_schema_url(schema)
    finally:
        with psycopg.connect(PG_BASE_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'consumption.db'}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(store_url)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def prices_file(tmp_path: Path) -> str:
    return write_prices(tmp_path / "prices.json")


@pytest.fixture
def prices(prices_file: str) -> PriceTable:
    return load_prices(prices_file)
