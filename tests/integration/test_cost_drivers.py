"""The cost drivers scenario, through the real worker, broker, aggregator and store, against the simulator.

Three automations in one workspace: a support bot on Anthropic with a long system prompt repeated on every
call (cache ``auto``), a research agent on OpenAI iterating 3 to 12 calls per run, each job carrying several
tags, and a small tagger on Mistral. The drivers report is checked against what the simulator's ledger knows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import aiohttp
import orjson

from schemas.models import Provider, TokenCounts, UsageEvent
from tests.aggregator.helpers import aggregator_settings
from tests.broker import BrokerTap, broker_tap, byok, publish_jobs, running, running_aggregator
from tests.conftest import Sealer
from tests.waiting import wait_until
from worker.aggregator.drivers import nearest_rank
from worker.aggregator.pricing import PriceEntry, load_prices
from worker.aggregator.records import Counters
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator, words

WORKSPACE = "ws-drivers"
KEY = "sk-test-Drivers0123456789abcdefXYZ"
RUN_SIZES = (3, 5, 7, 12, 4, 9)
SUPPORT_CALLS = 8
TAGGER_CALLS = 4
# About 1,600 words (the simulator's tokens) and 9,000 characters: over Anthropic's 1,024-token minimum both ways.
SYSTEM_PROMPT = " ".join(
    f"Clause {n}: answer politely, quote the relevant policy section and never promise refunds." for n in range(130)
)
SUPPORT_MODEL = "claude-sonnet-4-5"


def _model(simulator: ProviderSimulator, seal: Sealer, provider: Provider, name: str) -> dict[str, Any]:
    base_url = simulator.base_url(provider)
    return {"provider": provider.value, "name": name, "base_url": base_url,
            "sealed_key": seal(WORKSPACE, KEY, provider, base_url)}


def _job(job_id: str, automation: str, model: dict[str, Any], text: str, **extra: Any) -> bytes:
    spec: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "max_tokens": 40}
    spec.update(extra.pop("input", {}))
    return orjson.dumps({"job_id": job_id, "workspace_id": WORKSPACE, "automation_id": automation,
                         "model": model, "input": spec, **extra})


async def _get(url: str) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        assert response.status == 200, await response.text()
        return await response.json()


def _cost(entry: PriceEntry, usage: TokenCounts, *, uncached: bool = False) -> float:
    counters = Counters(1, 0, usage.input_tokens, usage.cache_read_tokens, usage.cache_write_tokens,
                        usage.output_tokens, usage.reasoning_tokens)
    return entry.uncached_cost(counters) if uncached else entry.cost(counters)


async def _settle(tap: BrokerTap, count: int) -> None:
    await tap.wait_for(lambda: len(tap.results) >= count)
    failed = [r.json for r in tap.results if r.json["status"] != "succeeded"]
    assert not failed, failed


def _automation(report: dict[str, Any], automation_id: str) -> dict[str, Any]:
    (found,) = [a for a in report["automations"] if a["automation_id"] == automation_id]
    return found


def _cents(value: float) -> int:
    return round(value * 100)


async def test_the_drivers_report_names_what_drives_the_cost(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer, capsys: Any
) -> None:
    support = _model(simulator, seal, Provider.ANTHROPIC, SUPPORT_MODEL)
    agent = _model(simulator, seal, Provider.OPENAI, "gpt-4o-mini")
    tagger = _model(simulator, seal, Provider.MISTRAL, "mistral-small-latest")
    support_jobs = [_job(f"support-{n}", "support-bot", support, f"Customer {n} says the printer shows error E{n}",
                         input={"system": SYSTEM_PROMPT}) for n in range(SUPPORT_CALLS)]
    agent_jobs = [
        _job(f"agent-{run}-{step}", "research-agent", agent, f"Step {step} of the research on topic {run}",
             input={"system": "You are a careful researcher."},
             tags={"agent_run": f"run-{run}", "iteration": str(step), "source": "knowledge-base"})
        for run, size in enumerate(RUN_SIZES) for step in range(size)
    ]
    tagger_jobs = [_job(f"tag-{n}", "tagger", tagger, f"Tag ticket {n}") for n in range(TAGGER_CALLS)]
    total_calls = len(support_jobs) + len(agent_jobs) + len(tagger_jobs)

    aggregator = aggregator_settings(settings, aggregator_batch_wait_ms=20)
    async with (broker_tap(settings, copies=True) as tap, running_aggregator(aggregator) as agg,
                running(Worker(settings))):
        # The first support call writes the cache; the others, sent once it is written, read it.
        await publish_jobs(settings, support_jobs[:1])
        await _settle(tap, 1)
        await publish_jobs(settings, support_jobs[1:] + agent_jobs + tagger_jobs)
        await _settle(tap, total_calls)
        url = f"{agg.api_url}/v1/workspaces/{WORKSPACE}/drivers"
        report = await wait_until(
            lambda: _until_counted(url, total_calls), timeout=30, what="every call in the drivers report")
        usage = [UsageEvent.model_validate_json(m.body) for m in tap.usage]

    ledger = simulator.ledger.billed()
    assert len(ledger) == total_calls == len(usage)
    prices = load_prices(None)

    # The shape is on every usage event, with no text: the fingerprint of the support bot's prompt, its size.
    support_usage = [u for u in usage if u.automation_id == "support-bot"]
    assert all(u.shape is not None for u in usage)
    assert {u.shape.system_chars for u in support_usage if u.shape} == {len(SYSTEM_PROMPT)}
    assert SYSTEM_PROMPT[:40] not in b"".join(m.body for m in tap.usage).decode()

    # The system-prompt-heavy automation is named, its share within 5 points of the simulator's truth.
    heavy = max(report["automations"], key=lambda a: a["system_prompt_share"] or 0.0)
    assert heavy["automation_id"] == "support-bot"
    support_ledger = [c for c in ledger if c.protocol is Provider.ANTHROPIC]
    assert len(support_ledger) == SUPPORT_CALLS
    system_words = words(SYSTEM_PROMPT) * SUPPORT_CALLS
    all_words = sum(c.usage.input_tokens + c.usage.cache_read_tokens + c.usage.cache_write_tokens
                    for c in support_ledger if c.usage)
    truth = system_words / all_words
    assert abs(heavy["system_prompt_share"] - truth) <= 0.05, (heavy["system_prompt_share"], truth)
    fingerprint = support_usage[0].shape.system_fingerprint if support_usage[0].shape else None
    assert fingerprint is not None
    assert heavy["system_prompts"] == {"distinct": 1, "top_fingerprint": fingerprint, "top_calls": SUPPORT_CALLS}

    # Cache auto on Anthropic: the first call wrote the prompt, every later one read it (the ledger says so)…
    first, *later = sorted(support_ledger, key=lambda c: c.at)
    assert first.usage and first.usage.cache_write_tokens >= words(SYSTEM_PROMPT) and not first.usage.cache_read_tokens
    assert all(c.usage and c.usage.cache_read_tokens >= words(SYSTEM_PROMPT) for c in later)
    # …and the realised saving is the ledger's difference between no caching and what was billed.
    entry = prices.price("anthropic", SUPPORT_MODEL, first_day(usage))
    assert entry is not None
    ledger_saving = sum(_cost(entry, c.usage, uncached=True) - _cost(entry, c.usage) for c in support_ledger if c.usage)
    assert ledger_saving > 0
    assert heavy["cache"]["saved_usd"] == round(ledger_saving, 6)
    assert heavy["cache"]["read_share"] > 0.8

    # The agent's calls per run, exactly; and its per-run costs add up to its cost.
    runs = _automation(report, "research-agent")["runs"]
    assert runs["count"] == len(RUN_SIZES)
    assert runs["calls_per_run"] == {"p50": nearest_rank(RUN_SIZES, 50), "p95": nearest_rank(RUN_SIZES, 95),
                                     "max": max(RUN_SIZES)} == {"p50": 5, "p95": 12, "max": 12}
    assert sorted(run["calls"] for run in runs["top"]) == sorted(RUN_SIZES)
    agent_cost = _automation(report, "research-agent")["cost_usd"]
    assert _cents(sum(run["cost_usd"] for run in runs["top"])) == _cents(agent_cost)

    # Three tags per agent job, each call counted once: every grouping sums to the total, to the cent.
    consumption = orjson.loads(byok(settings, "consumption", WORKSPACE, "--json").stdout)
    assert consumption["totals"]["requests"] == total_calls
    assert sum(a["requests"] for a in report["automations"]) == total_calls
    assert sum(m["requests"] for m in report["models"]) == total_calls
    assert sum(run["calls"] for run in runs["top"]) == len(agent_jobs)
    assert _cents(report["total_cost_usd"]) == _cents(consumption["totals"]["cost_usd"])
    assert _cents(sum(a["cost_usd"] for a in report["automations"])) == _cents(consumption["totals"]["cost_usd"])
    assert _cents(sum(m["cost_usd"] for m in report["models"])) == _cents(consumption["totals"]["cost_usd"])
    assert abs(sum(a["cost_share"] for a in report["automations"]) - 1.0) < 0.001
    assert [a["automation_id"] for a in report["automations"]] == sorted(
        (a["automation_id"] for a in report["automations"]),
        key=lambda name: -_automation(report, name)["cost_usd"])

    # The CLI's JSON is the API's; its table is what an owner reads.
    assert orjson.loads(byok(settings, "consumption", WORKSPACE, "--drivers", "--json").stdout) == report
    table = byok(settings, "consumption", WORKSPACE, "--drivers").stdout.decode()
    for name in ("support-bot", "research-agent", "tagger", "run-3", "estimate"):
        assert name in table
    with capsys.disabled():
        print(f"\nsystem_prompt_share of support-bot: report {heavy['system_prompt_share']:.4f}, simulator "
              f"{truth:.4f}; saved_usd: report {heavy['cache']['saved_usd']:.6f}, ledger {ledger_saving:.6f}; "
              f"calls per run {sorted(RUN_SIZES)} -> {runs['calls_per_run']}; total {report['total_cost_usd']:.6f}, "
              f"consumption {consumption['totals']['cost_usd']:.6f}")
        print(f"\n$ byok consumption {WORKSPACE} --drivers\n{table}")


def first_day(usage: Sequence[UsageEvent]) -> Any:
    return min(u.occurred_at for u in usage).date()


async def _until_counted(url: str, calls: int) -> dict[str, Any] | None:
    report: dict[str, Any] = await _get(url)
    counted = sum(a["requests"] for a in report["automations"])
    return report if counted >= calls else None


async def test_cache_off_marks_nothing(settings: Settings, simulator: ProviderSimulator, seal: Sealer) -> None:
    support = _model(simulator, seal, Provider.ANTHROPIC, SUPPORT_MODEL)
    jobs = [_job(f"off-{n}", "support-bot", support, f"Customer {n} asks", input={"system": SYSTEM_PROMPT,
                                                                                  "cache": "off"})
            for n in range(3)]
    async with broker_tap(settings) as tap, running(Worker(settings)):
        for job in jobs:  # one after the other: each could have read what the one before wrote
            await publish_jobs(settings, [job])
            await _settle(tap, jobs.index(job) + 1)
    billed = simulator.ledger.billed()
    assert len(billed) == 3
    assert all(c.usage and c.usage.cache_read_tokens == c.usage.cache_write_tokens == 0 for c in billed)
    assert all(c.usage and c.usage.input_tokens > words(SYSTEM_PROMPT) for c in billed)
