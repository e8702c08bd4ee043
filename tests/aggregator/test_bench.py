"""``bench_ingest`` runs on both backends (the figures themselves are for ``make bench``, not asserted)."""

from __future__ import annotations

from pathlib import Path

from tests.aggregator.helpers import PG_BASE_URL
from worker.aggregator.bench import bench_ingest, synthetic_events
from worker.aggregator.store import Store


async def test_bench_ingests_into_sqlite_and_postgresql(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    assert await bench_ingest(url, 1200) > 0
    store = await Store.open(url)
    try:
        rows = await store.usage([f"ws{i}" for i in range(20)], None, None)
    finally:
        await store.close()
    assert sum(row.counters.requests for row in rows) == 1200
    assert await bench_ingest(PG_BASE_URL, 600) > 0  # in a throwaway schema


def test_synthetic_events_are_distinct() -> None:
    events = synthetic_events(100, run_id="r")
    assert len({e.event_id for e in events}) == 100
