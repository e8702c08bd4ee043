"""``group_by=hour``: the page's chart of short ranges, one row per UTC hour, adding up to the totals."""

from __future__ import annotations

from tests.aggregator.helpers import at
from tests.aggregator.test_consumption import dataset
from worker.aggregator.consumption import consumption
from worker.aggregator.pricing import PriceTable
from worker.aggregator.store import Store


async def test_rows_by_hour_add_up_to_the_totals(store: Store, prices: PriceTable) -> None:
    await store.ingest(dataset())
    by_hour = await consumption(store, prices, "acme", at("2025-03-01 00:00"), at("2025-03-03 00:00"),
                                ("hour", "automation"))
    by_day = await consumption(store, prices, "acme", at("2025-03-01 00:00"), at("2025-03-03 00:00"), ("day",))
    assert by_hour["totals"] == by_day["totals"]
    assert [(row["hour"], row["automation_id"], row["requests"]) for row in by_hour["rows"]] == [
        ("2025-03-01T10:00:00+00:00", "a1", 1),
        ("2025-03-01T10:00:00+00:00", "a2", 1),
        ("2025-03-01T23:00:00+00:00", "a1", 1),
        ("2025-03-02T00:00:00+00:00", None, 1),
        ("2025-03-02T12:00:00+00:00", "a1", 1),
        ("2025-03-02T12:00:00+00:00", "a2", 1),
    ]
    # Each hour priced with its own day's price: the sum of the rows is the total.
    priced = sum(row["cost_usd"] or 0 for row in by_hour["rows"])
    assert abs(priced - by_hour["totals"]["cost_usd"]) < 1e-6
    assert by_hour["prices_as_of"] == prices.version


async def test_an_hour_range_inside_a_day(store: Store, prices: PriceTable) -> None:
    await store.ingest(dataset())
    body = await consumption(store, prices, "acme", at("2025-03-01 10:30"), at("2025-03-01 23:59"), ("hour",))
    assert [(row["hour"], row["requests"]) for row in body["rows"]] == [
        ("2025-03-01T10:00:00+00:00", 1), ("2025-03-01T23:00:00+00:00", 1),
    ]
