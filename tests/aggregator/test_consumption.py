"""Known totals for every grouping and range, on SQLite and PostgreSQL, with estimated cost."""

from __future__ import annotations

from typing import Any

import pytest

from tests.aggregator.helpers import at, usage
from worker.aggregator.consumption import QueryError, consumption, parse_group_by, parse_instant
from worker.aggregator.pricing import PriceTable
from worker.aggregator.store import Store

# Costs with the test price table (USD per million tokens; gpt-4o-mini doubles on 2025-03-02).
E1 = (1000 * 1.0 + 200 * 0.5 + (300 + 50) * 2.0) / 1e6  # 0.0018, old price
E2 = (2000 * 1.0 + 100 * 2.0) / 1e6  # 0.0022
E3 = (500 * 3.0 + 1000 * 0.3 + 400 * 3.75 + 200 * 15.0) / 1e6  # 0.0063
E4 = (4000 * 2.0 + 1000 * 4.0) / 1e6  # 0.012, new price


def dataset() -> list[Any]:
    return [
        usage("2025-03-01 10:15", automation="a1", input_tokens=1000, cache_read_tokens=200, output_tokens=300,
              reasoning_tokens=50),
        usage("2025-03-01 10:45", automation="a2", input_tokens=2000, output_tokens=100),
        usage("2025-03-01 23:30", provider="anthropic", model="claude-x", automation="a1", input_tokens=500,
              cache_read_tokens=1000, cache_write_tokens=400, output_tokens=200),
        usage("2025-03-02 00:10", automation=None, input_tokens=4000, output_tokens=1000),
        usage("2025-03-02 12:00", provider="mistral", model="mistral-mystery", automation="a2", input_tokens=100,
              output_tokens=10),
        usage("2025-03-02 12:30", automation="a1", reported=False),
        # another workspace, same hours: never counted for acme
        usage("2025-03-01 10:20", workspace="other", input_tokens=999_999, output_tokens=999_999),
    ]


def counters(
    requests: int, input_tokens: int = 0, cache_read: int = 0, cache_write: int = 0, output: int = 0,
    reasoning: int = 0, unreported: int = 0, cost: float | None = 0.0, unpriced: bool = False,
    unreported_calls: int = 0,
) -> dict[str, Any]:
    return {
        "requests": requests, "input_tokens": input_tokens, "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write, "output_tokens": output, "reasoning_tokens": reasoning,
        "unreported_requests": unreported, "cost_usd": None if cost is None else pytest.approx(cost, abs=1e-9),
        "unpriced": unpriced, "unreported_calls": unreported_calls,
    }


CLAUDE = counters(1, 500, 1000, 400, 200, cost=E3)
MYSTERY = counters(1, 100, output=10, cost=None, unpriced=True)
MINI = counters(4, 7000, 200, 0, 1400, 50, unreported=1, cost=E1 + E2 + E4)
TOTALS = counters(6, 7600, 1200, 400, 1610, 50, unreported=1, cost=E1 + E2 + E3 + E4, unpriced=True)


@pytest.fixture
async def loaded(store: Store) -> Store:
    await store.ingest(dataset())
    return store


async def query(store: Store, prices: PriceTable, group_by: str | None = None, **kwargs: Any) -> dict[str, Any]:
    return await consumption(store, prices, "acme", group_by=parse_group_by(group_by), **kwargs)


async def test_default_grouping_is_one_row_per_model_with_provider(loaded: Store, prices: PriceTable) -> None:
    result = await query(loaded, prices)
    assert result["workspace_id"] == "acme"
    assert result["estimate"] is True
    assert result["totals"] == TOTALS
    assert result["rows"] == [
        {"provider": "anthropic", "model": "claude-x", **CLAUDE},
        {"provider": "mistral", "model": "mistral-mystery", **MYSTERY},
        {"provider": "openai", "model": "gpt-4o-mini", **MINI},
    ]
    assert result["unpriced_models"] == [{"provider": "mistral", "model": "mistral-mystery"}]


async def test_group_by_provider(loaded: Store, prices: PriceTable) -> None:
    result = await query(loaded, prices, "provider")
    assert result["rows"] == [
        {"provider": "anthropic", **CLAUDE}, {"provider": "mistral", **MYSTERY}, {"provider": "openai", **MINI},
    ]
    assert result["totals"] == TOTALS


async def test_group_by_automation(loaded: Store, prices: PriceTable) -> None:
    result = await query(loaded, prices, "automation")
    assert result["rows"] == [
        {"automation_id": None, **counters(1, 4000, output=1000, cost=E4)},
        {"automation_id": "a1", **counters(3, 1500, 1200, 400, 500, 50, unreported=1, cost=E1 + E3)},
        # a2 holds priced and unpriced usage: the priced part is costed, the row says it is incomplete
        {"automation_id": "a2", **counters(2, 2100, output=110, cost=E2, unpriced=True)},
    ]
    assert result["totals"] == TOTALS


async def test_group_by_day_prices_each_day_with_its_own_price(loaded: Store, prices: PriceTable) -> None:
    result = await query(loaded, prices, "day")
    assert result["rows"] == [
        {"day": "2025-03-01", **counters(3, 3500, 1200, 400, 600, 50, cost=E1 + E2 + E3)},
        {"day": "2025-03-02", **counters(3, 4100, 0, 0, 1010, 0, unreported=1, cost=E4, unpriced=True)},
    ]


async def test_group_by_day_and_model(loaded: Store, prices: PriceTable) -> None:
    result = await query(loaded, prices, "day,model")
    assert result["group_by"] == ["day", "model"]
    assert result["rows"] == [
        {"day": "2025-03-01", "provider": "anthropic", "model": "claude-x", **CLAUDE},
        {"day": "2025-03-01", "provider": "openai", "model": "gpt-4o-mini",
         **counters(2, 3000, 200, 0, 400, 50, cost=E1 + E2)},
        {"day": "2025-03-02", "provider": "mistral", "model": "mistral-mystery", **MYSTERY},
        {"day": "2025-03-02", "provider": "openai", "model": "gpt-4o-mini",
         **counters(2, 4000, 0, 0, 1000, 0, unreported=1, cost=E4)},
    ]


async def test_group_by_everything_gives_one_row_per_event_here(loaded: Store, prices: PriceTable) -> None:
    result = await query(loaded, prices, "model,automation,provider,day")
    keys = [(r["day"], r["provider"], r["model"], r["automation_id"]) for r in result["rows"]]
    assert keys == [
        ("2025-03-01", "anthropic", "claude-x", "a1"),
        ("2025-03-01", "openai", "gpt-4o-mini", "a1"),
        ("2025-03-01", "openai", "gpt-4o-mini", "a2"),
        ("2025-03-02", "mistral", "mistral-mystery", "a2"),
        ("2025-03-02", "openai", "gpt-4o-mini", None),
        ("2025-03-02", "openai", "gpt-4o-mini", "a1"),
    ]
    assert [r["requests"] for r in result["rows"]] == [1] * 6
    assert [r["cost_usd"] for r in result["rows"]] == [
        pytest.approx(E3), pytest.approx(E1), pytest.approx(E2), None, pytest.approx(E4), 0.0,
    ]
    assert result["totals"] == TOTALS


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        # mid-hour edges on both sides: raw events at the edges, rollups in between
        ("2025-03-01T10:30:00Z", "2025-03-02T00:30:00+00:00",
         counters(3, 6500, 1000, 400, 1300, cost=E2 + E3 + E4)),
        # whole hours only: rollups alone
        ("2025-03-01T10:00:00Z", "2025-03-01T11:00:00Z", counters(2, 3000, 200, 0, 400, 50, cost=E1 + E2)),
        # a bare date is midnight UTC; until is open
        ("2025-03-02", None, counters(3, 4100, 0, 0, 1010, 0, unreported=1, cost=E4, unpriced=True)),
        # until is exclusive, to the microsecond
        (None, "2025-03-01T10:15:00Z", counters(0)),
        ("2025-03-01T10:15:00Z", "2025-03-01T10:15:00.000001Z", counters(1, 1000, 200, 0, 300, 50, cost=E1)),
    ],
)
async def test_ranges(
    loaded: Store, prices: PriceTable, since: str | None, until: str | None, expected: dict[str, Any]
) -> None:
    result = await query(loaded, prices, since=parse_instant(since, "since"), until=parse_instant(until, "until"))
    assert result["totals"] == expected
    assert sum(row["requests"] for row in result["rows"]) == expected["requests"]


async def test_an_unknown_workspace_has_zero_totals(loaded: Store, prices: PriceTable) -> None:
    result = await consumption(loaded, prices, "nobody")
    assert result["rows"] == []
    assert result["totals"] == counters(0)


def test_bad_parameters_are_query_errors() -> None:
    with pytest.raises(QueryError, match="offset"):
        parse_instant("2025-03-01T10:00:00", "since")
    with pytest.raises(QueryError, match="ISO-8601"):
        parse_instant("yesterday", "since")
    with pytest.raises(QueryError, match="unknown tag"):
        parse_group_by("model,tag")
    assert parse_group_by(["day", "model,day"]) == ("day", "model")
    assert parse_instant("2025-03-01T12:00:00+02:00", "since") == at("2025-03-01 10:00")


async def test_since_must_precede_until(store: Store, prices: PriceTable) -> None:
    with pytest.raises(QueryError, match="before"):
        await consumption(store, prices, "acme", at("2025-03-02 00:00"), at("2025-03-01 00:00"))
