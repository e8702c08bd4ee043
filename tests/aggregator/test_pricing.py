"""The price table: the shipped one, overrides, effective dates, and what an unpriced model looks like."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest

from tests.aggregator.helpers import TEST_PRICES, usage, write_prices
from worker.aggregator.consumption import consumption
from worker.aggregator.pricing import PriceTableError, load_prices
from worker.aggregator.records import Counters
from worker.aggregator.store import Store


def test_the_shipped_table_prices_the_current_models() -> None:
    table = load_prices()
    assert table.origin.endswith("worker/data/prices.json")
    assert all(entry.source for entry in table.file.prices)
    expected = {
        ("openai", "gpt-4o-mini"): (0.15, 0.60),
        ("openai", "gpt-4.1"): (2.00, 8.00),
        ("openai", "o3-mini"): (1.10, 4.40),
        ("anthropic", "claude-3-5-haiku-latest"): (0.80, 4.00),
        ("anthropic", "claude-sonnet-4-20250514"): (3.00, 15.00),
        ("anthropic", "claude-opus-4-1-20250805"): (15.00, 75.00),
        ("mistral", "mistral-small-latest"): (0.10, 0.30),
    }
    for (provider, model), (input_price, output_price) in expected.items():
        entry = table.price(provider, model, date(2025, 9, 1))
        assert entry is not None, model
        assert (entry.input, entry.output) == (input_price, output_price), model


def test_a_price_change_applies_from_its_effective_date() -> None:
    table = load_prices()
    before = table.price("openai", "gpt-4o", date(2024, 9, 1))
    after = table.price("openai", "gpt-4o", date(2024, 11, 1))
    assert before is not None and after is not None
    assert (before.input, after.input) == (5.00, 2.50)
    assert table.price("openai", "gpt-4.1", date(2025, 4, 13)) is None  # before it existed: no price


def test_self_hosted_ollama_is_priced_at_zero_and_unknown_models_are_unpriced() -> None:
    table = load_prices()
    assert table.cost("ollama", "llama3.2", date(2025, 1, 1), Counters(1, 0, 100, 0, 0, 100, 0)) == 0.0
    assert table.cost("openai", "sim-ok", date(2025, 1, 1), Counters(1, 0, 100)) is None


def test_cost_bills_reasoning_at_the_output_price_and_defaults_cache_prices_to_input(tmp_path: Path) -> None:
    table = load_prices(write_prices(tmp_path / "p.json"))
    counts = Counters(requests=1, input_tokens=1_000_000, cache_read_tokens=1_000_000,
                      cache_write_tokens=1_000_000, output_tokens=1_000_000, reasoning_tokens=1_000_000)
    # input 1 + cache read 0.5 + cache write (no price: input's) 1 + output 2 + reasoning 2
    assert table.cost("openai", "gpt-4o-mini", date(2025, 2, 1), counts) == pytest.approx(6.5)


def test_a_bad_price_file_is_refused(tmp_path: Path) -> None:
    duplicate = {**TEST_PRICES, "prices": [TEST_PRICES["prices"][0], TEST_PRICES["prices"][0]]}
    with pytest.raises(PriceTableError, match="two prices"):
        load_prices(write_prices(tmp_path / "dup.json", duplicate))
    negative = {**TEST_PRICES, "prices": [{**TEST_PRICES["prices"][0], "input": -1}]}
    with pytest.raises(PriceTableError, match=r"neg\.json: prices\.0\.input: Input should be greater than"):
        load_prices(write_prices(tmp_path / "neg.json", negative))


@pytest.mark.parametrize(("content", "problem"), [
    (b"sk-proj-Zx9secretKEYvalue0123456789\n", "not JSON"),
    (b"provider: openai\nkey: sk-proj-Zx9secretKEYvalue0123456789\n", "not JSON"),
    (b'{"version": "sk-proj-Zx9secretKEYvalue0123456789", "prices": "sk-proj-Zx9secretKEYvalue0123456789"}',
     "prices: Input should be a valid array"),
])
def test_a_price_file_error_says_what_is_wrong_and_never_quotes_the_file(
    tmp_path: Path, content: bytes, problem: str
) -> None:
    path = tmp_path / "prices.txt"
    path.write_bytes(content)
    with pytest.raises(PriceTableError) as caught:
        load_prices(str(path))
    message = str(caught.value)
    assert message.startswith(f"price table {path}: ")
    assert problem in message
    assert "Zx9secret" not in message and "sk-proj" not in message


async def test_the_same_usage_costs_twice_as_much_after_the_price_doubles(store: Store, tmp_path: Path) -> None:
    prices = load_prices(write_prices(tmp_path / "p.json"))
    await store.ingest([usage("2025-03-01 23:59", input_tokens=1_000_000),
                        usage("2025-03-02 00:01", input_tokens=1_000_000)])
    result = await consumption(store, prices, "acme", group_by=("day",))
    assert [row["cost_usd"] for row in result["rows"]] == [pytest.approx(1.0), pytest.approx(2.0)]
    assert result["totals"]["cost_usd"] == pytest.approx(3.0)


async def test_an_unpriced_model_is_reported_unpriced_never_zero(store: Store, tmp_path: Path) -> None:
    prices = load_prices(write_prices(tmp_path / "p.json"))
    await store.ingest([usage("2025-03-01 10:00", provider="mistral", model="mistral-mystery", input_tokens=500)])
    result = await consumption(store, prices, "acme")
    assert result["rows"][0]["cost_usd"] is None
    assert result["rows"][0]["unpriced"] is True
    assert result["totals"]["cost_usd"] is None
    assert result["totals"]["unpriced"] is True
    assert result["unpriced_models"] == [{"provider": "mistral", "model": "mistral-mystery"}]
