"""The drivers report: its maths on known numbers, and the same report from a real store on both backends."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest

from schemas.models import UsageEvent, UsageShape
from tests.aggregator.helpers import at, usage, write_prices
from worker.aggregator.consumption import QueryError, consumption
from worker.aggregator.drivers import build_drivers, drivers, nearest_rank
from worker.aggregator.pricing import PriceTable, load_prices
from worker.aggregator.records import Counters, DriverCall
from worker.aggregator.store import Store

# USD per million tokens.
PRICES: dict[str, Any] = {
    "version": "drivers-test",
    "prices": [
        {"provider": "anthropic", "model": "claude-big", "effective_from": "2025-01-01", "input": 3.0,
         "cache_read": 0.3, "cache_write": 3.75, "output": 15.0, "source": "test"},
        {"provider": "anthropic", "model": "claude-small", "effective_from": "2025-01-01", "input": 1.0,
         "cache_read": 0.1, "cache_write": 1.25, "output": 5.0, "source": "test"},
        {"provider": "openai", "model": "gpt-a", "effective_from": "2025-01-01", "input": 1.0,
         "cache_read": 0.5, "output": 2.0, "source": "test"},
        {"provider": "openai", "model": "gpt-b", "effective_from": "2025-01-01", "input": 2.0,
         "output": 8.0, "reasoning": 10.0, "source": "test: reasoning priced apart"},
    ],
}
TODAY = date(2025, 3, 1)


@pytest.fixture
def table(tmp_path: Path) -> PriceTable:
    return load_prices(write_prices(tmp_path / "prices.json", PRICES))


def call(automation: str | None, provider: str, model: str, *, tags: dict[str, str] | None = None,
         system: int | None = None, chars: int | None = None, fingerprint: str | None = None,
         when: str = "2025-03-01 10:00", **tokens: int) -> DriverCall:
    return DriverCall(
        event_id=f"e{id(tokens)}", job_id="j", automation_id=automation, provider=provider, model=model,
        occurred_at=at(when), counters=Counters(1, 0, *(tokens.get(name, 0) for name in (
            "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens"))),
        tags=tags or {}, system_chars=system, input_chars=chars, system_fingerprint=fingerprint,
    )


def test_nearest_rank_percentiles() -> None:
    assert (nearest_rank([12, 3, 9, 4, 7, 5], 50), nearest_rank([12, 3, 9, 4, 7, 5], 95)) == (5, 12)
    assert (nearest_rank([1, 2], 50), nearest_rank([1, 2], 95), nearest_rank([7], 95)) == (1, 2, 7)
    assert nearest_rank(list(range(1, 101)), 95) == 95


def test_cache_saving_is_net_of_the_write_premium(table: PriceTable) -> None:
    calls = [
        call("bot", "anthropic", "claude-big", input_tokens=10, cache_write_tokens=1000, output_tokens=10),
        call("bot", "anthropic", "claude-big", input_tokens=10, cache_read_tokens=1000, output_tokens=10),
    ]
    report = build_drivers("acme", calls, table, today=TODAY)
    (bot,) = report["automations"]
    # no caching: 2 x (1010 x 3 + 10 x 15) = 6360; billed: (30 + 3750 + 150) + (30 + 300 + 150) = 4410
    assert bot["cost_usd"] == report["total_cost_usd"] == 0.00441
    assert bot["cache"]["saved_usd"] == 0.00195
    assert bot["cache"]["read_share"] == round(1000 / 2020, 4)
    assert bot["input_tokens"] == 2020
    assert bot["cache"]["open_saving_usd"] == 0.0


def test_system_prompt_share_weighs_calls_by_their_input_tokens(table: PriceTable) -> None:
    calls = [
        call("bot", "openai", "gpt-a", system=900, chars=1000, fingerprint="a" * 16, input_tokens=1000),
        call("bot", "openai", "gpt-a", system=0, chars=1000, input_tokens=3000),
        call("bot", "openai", "gpt-a", input_tokens=5000),  # an older worker's event: no shape, left out
    ]
    (bot,) = build_drivers("acme", calls, table, today=TODAY)["automations"]
    assert bot["system_prompt_share"] == round(900 / 4000, 4)
    assert bot["system_prompts"] == {"distinct": 1, "top_fingerprint": "a" * 16, "top_calls": 1}


def test_open_saving_counts_repeats_of_a_long_uncached_system_prompt(table: PriceTable) -> None:
    repeated = [call("bot", "openai", "gpt-a", system=1800, chars=2000, fingerprint="b" * 16, input_tokens=2000)
                for _ in range(3)]
    short = [call("bot", "openai", "gpt-a", system=900, chars=2000, fingerprint="c" * 16, input_tokens=2000)
             for _ in range(3)]  # 900 estimated tokens: under OpenAI's 1,024, nothing to cache
    cached = [call("bot", "openai", "gpt-a", system=1800, chars=2000, fingerprint="b" * 16, input_tokens=976,
                   cache_read_tokens=1024)]
    (bot,) = build_drivers("acme", repeated + short + cached, table, today=TODAY)["automations"]
    # the 2nd and 3rd call of "b": 1,800 tokens each at 1.0 - 0.5 USD per million
    assert bot["cache"]["open_saving_usd"] == 0.0018
    assert bot["system_prompts"] == {"distinct": 2, "top_fingerprint": "b" * 16, "top_calls": 4}


def test_runs_group_an_automation_by_the_run_tag_and_multi_tag_calls_count_once(table: PriceTable) -> None:
    sizes = {"r1": 3, "r2": 12, "r3": 5}
    calls = [call("agent", "openai", "gpt-a", tags={"agent_run": run, "step": str(n), "kb": "docs"},
                  input_tokens=1000 * (1 + (run == "r2")), output_tokens=100)
             for run, size in sizes.items() for n in range(size)]
    calls.append(call("agent", "openai", "gpt-a", input_tokens=1000))  # no run tag: in the cost, in no run
    calls.append(call(None, "openai", "gpt-a", input_tokens=500))
    report = build_drivers("acme", calls, table, today=TODAY)
    agent, unnamed = report["automations"]
    runs = agent["runs"]
    assert runs["count"] == 3
    assert runs["calls_per_run"] == {"p50": 5, "p95": 12, "max": 12}
    per_call = {"r1": 0.0012, "r2": 0.0022, "r3": 0.0012}
    expected = {run: round(sizes[run] * per_call[run], 6) for run in sizes}
    assert runs["cost_per_run_usd"] == {"p50": expected["r3"], "p95": expected["r2"], "max": expected["r2"]}
    assert [(r["run"], r["calls"], r["cost_usd"]) for r in runs["top"]] == [
        ("r2", 12, expected["r2"]), ("r3", 5, expected["r3"]), ("r1", 3, expected["r1"])]
    assert round(sum(expected.values()) + 0.001, 6) == agent["cost_usd"]
    assert unnamed["automation_id"] is None and unnamed["runs"] is None
    assert sum(a["requests"] for a in report["automations"]) == len(calls)
    assert round(sum(a["cost_usd"] for a in report["automations"]), 6) == report["total_cost_usd"]
    other_tag = build_drivers("acme", calls, table, run_tag="kb", today=TODAY)["automations"][0]["runs"]
    assert (other_tag["count"], other_tag["calls_per_run"]["max"]) == (1, 20)


def test_models_compare_the_same_tokens_on_the_cheapest_model_of_the_provider(table: PriceTable) -> None:
    calls = [
        call("bot", "anthropic", "claude-big", input_tokens=1000, cache_read_tokens=1000, output_tokens=100),
        call("bot", "openai", "gpt-b", input_tokens=1000, output_tokens=100, reasoning_tokens=100),
        call("bot", "mistral", "mistral-x", input_tokens=1000),
    ]
    report = build_drivers("acme", calls, table, today=TODAY)
    models = {m["model"]: m for m in report["models"]}
    # claude-small: 1000 x 1 + 1000 x 0.1 + 100 x 5 = 1600
    assert models["claude-big"]["cost_usd"] == 0.0048
    assert models["claude-big"]["cheapest"] == {"model": "claude-small", "cost_usd": 0.0016}
    # gpt-b prices reasoning apart: 2000 + 800 + 1000; gpt-a: 1000 + 200 + 200 (reasoning at the output price)
    assert models["gpt-b"]["cost_usd"] == 0.0038
    assert models["gpt-b"]["cheapest"] == {"model": "gpt-a", "cost_usd": 0.0014}
    assert models["mistral-x"] == {"provider": "mistral", "model": "mistral-x", "requests": 1, "cost_usd": None,
                                   "cheapest": None}
    assert [m["model"] for m in report["models"]] == ["claude-big", "gpt-b", "mistral-x"]


def test_an_unpriced_automation_has_no_cost_and_no_share(table: PriceTable) -> None:
    report = build_drivers("acme", [call("m", "mistral", "mistral-x", input_tokens=5),
                                    call("a", "openai", "gpt-a", input_tokens=1_000_000)], table, today=TODAY)
    assert [(a["automation_id"], a["cost_usd"], a["cost_share"]) for a in report["automations"]] == [
        ("a", 1.0, 1.0), ("m", None, None)]
    assert build_drivers("acme", [], table)["total_cost_usd"] is None
    runs = build_drivers("acme", [call("m", "mistral", "mistral-x", tags={"agent_run": "r"}, input_tokens=5)],
                         table, today=TODAY)["automations"][0]["runs"]
    assert runs["cost_per_run_usd"] == {"p50": None, "p95": None, "max": None}
    assert runs["top"] == [{"run": "r", "calls": 1, "cost_usd": None}]


def shaped(event: UsageEvent, *, system: str | None, chars: int, tags: dict[str, str] | None = None) -> UsageEvent:
    fingerprint = None if system is None else (system * 16)[:16]
    shape = UsageShape(system_chars=len(system or "") * 100, input_chars=chars, messages=1, tools=0, images=0,
                       system_fingerprint=fingerprint)
    return event.model_copy(update={"shape": shape, "tags": tags or {}})


async def test_a_store_reports_its_stored_shapes(store: Store, table: PriceTable) -> None:
    events = [
        shaped(usage("2025-03-01 10:00", automation="bot", input_tokens=800, output_tokens=10), system="a", chars=200,
               tags={"agent_run": "r1", "iteration": "1"}),
        shaped(usage("2025-03-01 10:05", automation="bot", input_tokens=800, output_tokens=10), system="a", chars=200,
               tags={"agent_run": "r1", "iteration": "2"}),
        shaped(usage("2025-03-01 11:00", automation="bot", input_tokens=800), system="b", chars=400),
        usage("2025-03-01 12:00", automation="tagger", input_tokens=100),  # from a worker before shapes
        usage("2025-03-02 09:00", automation="bot", input_tokens=100),
    ]
    await store.ingest(events)
    await store.ingest(events[:2])  # republished: counted once
    report = await drivers(store, table, "acme", at("2025-03-01 00:00"), at("2025-03-02 00:00"))
    assert report["since"] == "2025-03-01T00:00:00+00:00" and report["prices_as_of"] == "drivers-test"
    bot, tagger = report["automations"]
    assert (bot["automation_id"], bot["requests"], tagger["requests"]) == ("bot", 3, 1)
    # 100 system characters of 200 on two calls, of 400 on one: (400 + 400 + 200) / 2400
    assert bot["system_prompt_share"] == round(1000 / 2400, 4)
    assert bot["system_prompts"] == {"distinct": 2, "top_fingerprint": "a" * 16, "top_calls": 2}
    assert bot["runs"]["count"] == 1 and bot["runs"]["top"][0]["calls"] == 2
    assert tagger["system_prompt_share"] is None
    whole = await consumption(store, table, "acme", at("2025-03-01 00:00"), at("2025-03-02 00:00"))
    assert report["total_cost_usd"] == whole["totals"]["cost_usd"]
    with pytest.raises(QueryError):
        await drivers(store, table, "acme", at("2025-03-02 00:00"), at("2025-03-01 00:00"))
