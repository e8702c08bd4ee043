"""Each event_id is counted once: within a batch, across batches, and across concurrent writers."""

from __future__ import annotations

import asyncio
import random

from tests.aggregator.helpers import at, usage
from worker.aggregator.consumption import consumption
from worker.aggregator.pricing import PriceTable
from worker.aggregator.store import Store


async def test_the_same_event_twice_is_counted_once(store: Store, prices: PriceTable) -> None:
    event = usage("2025-03-01 10:15", input_tokens=1000, output_tokens=100)
    first = await store.ingest([event, event])
    again = await store.ingest([event])
    assert (first.received, first.inserted, first.duplicates) == (2, 1, 1)
    assert (again.inserted, again.duplicates) == (0, 1)
    totals = (await consumption(store, prices, "acme"))["totals"]
    assert (totals["requests"], totals["input_tokens"], totals["output_tokens"]) == (1, 1000, 100)


async def test_a_duplicate_keeps_the_first_copy(store: Store, prices: PriceTable) -> None:
    """A republished event with other numbers (it should not happen) does not change the count."""
    await store.ingest([usage("2025-03-01 10:15", event_id="e-1", input_tokens=10)])
    await store.ingest([usage("2025-03-01 10:15", event_id="e-1", input_tokens=99)])
    assert (await consumption(store, prices, "acme"))["totals"]["input_tokens"] == 10


async def test_concurrent_aggregators_on_postgresql_count_each_event_once(pg_url: str, prices: PriceTable) -> None:
    """Three stores (three connections, as three aggregators would have) ingest overlapping, shuffled
    batches of the same 600 events at once: the totals are those of 600 events, rollups included."""
    events = [
        usage(f"2025-03-01 {10 + i % 3}:{i % 60:02d}", automation=f"a{i % 4}", input_tokens=i + 1,
              output_tokens=1)
        for i in range(600)
    ]
    stores = [await Store.open(pg_url) for _ in range(3)]
    try:
        rng = random.Random(7)

        async def aggregator(store: Store) -> int:
            mine = events[:]
            rng.shuffle(mine)
            inserted = 0
            for start in range(0, len(mine), 50):
                inserted += (await store.ingest(mine[start:start + 50])).inserted
            return inserted

        inserted = await asyncio.gather(*(aggregator(s) for s in stores))
        assert sum(inserted) == 600
        result = await consumption(stores[0], prices, "acme", group_by=("automation",))
        assert result["totals"]["requests"] == 600
        assert result["totals"]["input_tokens"] == sum(range(1, 601))
        assert [r["requests"] for r in result["rows"]] == [150, 150, 150, 150]
        # the raw events path (a range with mid-hour edges) agrees with the rollups
        edges = await consumption(stores[1], prices, "acme", at("2025-03-01 09:59"), at("2025-03-01 12:59:30"))
        assert edges["totals"]["requests"] == 600
    finally:
        for store in stores:
            await store.close()
