"""Every provider protocol x every failure class, end to end through the worker and the simulator.

Asserts the result code, whether it was retried and the attempt count, and that every succeeded job's
usage (result and usage event, all five buckets) equals what the simulator billed for its call, cache and
reasoning tokens included; prints the provider x outcome table and the per-provider usage totals against
the simulator's ledger (``pytest -s``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from schemas.models import Provider, TokenCounts
from tests.broker import BrokerTap, job_body, publish_jobs, running
from tests.conftest import Sealer
from tests.waiting import wait_until
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEYS = {
    Provider.OPENAI: "sk-test-openai-matrix-000000000000",
    Provider.ANTHROPIC: "sk-ant-test-matrix-0000000000000000",
    Provider.MISTRAL: "MistralMatrixKey0000000000000000",
    Provider.OLLAMA: None,
}

# behaviour → (status, error code, attempts, retryable) with BYOK_MAX_ATTEMPTS=3
EXPECTED: dict[str, tuple[str, str | None, int, bool | None]] = {
    "ok": ("succeeded", None, 1, None),
    "auth": ("failed", "auth_failed", 1, False),
    "rate": ("failed", "rate_limited", 3, True),
    "quota": ("failed", "quota_exhausted", 1, False),
    "error": ("failed", "provider_error", 3, True),
    "overloaded": ("failed", "provider_error", 3, True),
    "nousage": ("succeeded", None, 1, None),
    "flaky-1": ("succeeded", None, 2, None),
    "slow-3000": ("failed", "timeout", 3, True),
}

BUCKETS = tuple(TokenCounts.model_fields)  # input, cache read, cache write, output, reasoning

# Succeeded jobs whose answers carry the buckets beyond plain input/output, in each provider's own shape:
# (provider, behaviour) → the buckets that must be non-zero in what the simulator billed.
USAGE_CASES: dict[tuple[Provider, str], frozenset[str]] = {
    # cached_tokens inside prompt_tokens, reasoning_tokens inside completion_tokens, in one answer
    (Provider.OPENAI, "cached-reasoning"): frozenset({"cache_read_tokens", "reasoning_tokens"}),
    # cache_read_input_tokens and cache_creation_input_tokens outside input_tokens
    (Provider.ANTHROPIC, "cached"): frozenset({"cache_read_tokens", "cache_write_tokens"}),
    # prompt_tokens_details.cached_tokens inside prompt_tokens, as with OpenAI
    (Provider.MISTRAL, "cached"): frozenset({"cache_read_tokens"}),
}
# Long enough that a quarter of the prompt (the simulator's Anthropic cache write) is at least one token.
USAGE_CONTENT = "a prompt of a dozen words or so, enough for cache reads and writes"


@pytest.fixture
def matrix_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "max_attempts": 3, "provider_read_timeout_s": 0.4, "retry_base_delay_s": 0.05, "prefetch": 200,
    })


@pytest.fixture
async def matrix_worker(matrix_settings: Settings, tap: BrokerTap) -> AsyncIterator[Worker]:
    async with running(Worker(matrix_settings)) as worker:
        yield worker


Billed = dict[tuple[Provider, str], TokenCounts]


def billed_by_call(simulator: ProviderSimulator) -> Billed:
    """The simulator's billed calls by (protocol, model): each job here has its own pair."""
    calls = simulator.ledger.billed()
    billed = {(c.protocol, c.model): c.usage for c in calls if c.usage is not None}
    assert len(billed) == len(calls), "two billed calls for one (protocol, model): a job was billed twice"
    return billed


def usage_mismatches(succeeded: list[dict[str, Any]], events: dict[str, dict[str, Any]], billed: Billed) -> list[str]:
    """Every succeeded job whose result.usage or usage event differs, in any bucket, from its billed call."""
    mismatches = []
    for result in succeeded:
        event, call = events[result["job_id"]], (Provider(result["provider"]), result["model"])
        reported = {name: event[name] for name in BUCKETS}
        if result["model"].endswith("nousage"):
            # A response without usage is flagged as unknown, never counted as zero, and was not billed.
            if result["usage"] is not None or event["usage_reported"] or call in billed:
                mismatches.append(f"{result['job_id']}: result {result['usage']}, event {reported}, "
                                  f"reported={event['usage_reported']}, billed={call in billed}")
            continue
        served = billed[call].model_dump() if call in billed else None
        if not event["usage_reported"] or not result["usage"] == reported == served:
            mismatches.append(f"{result['job_id']}: billed {served}, result {result['usage']}, event {reported}")
    return mismatches


def usage_totals(events: dict[str, dict[str, Any]], billed: Billed) -> dict[Provider, tuple[list[int], list[int]]]:
    """Per provider: [calls, *buckets] summed over the worker's usage events, and over the ledger's calls."""
    totals = {}
    for provider in KEYS:
        reported = [e for e in events.values() if e["provider"] == provider.value and e["usage_reported"]]
        served = [usage.model_dump() for (protocol, _), usage in billed.items() if protocol is provider]
        totals[provider] = ([len(reported), *(sum(e[name] for e in reported) for name in BUCKETS)],
                            [len(served), *(sum(u[name] for u in served) for name in BUCKETS)])
    return totals


@pytest.mark.timeout(120)
async def test_provider_by_outcome(
    matrix_settings: Settings, simulator: ProviderSimulator, matrix_worker: Worker, tap: BrokerTap, seal: Sealer
) -> None:
    # The simulator's 429 says retry-after: 1 s; waits up to BYOK_INLINE_RETRY_MAX_S (2 s) stay in process.
    bodies, jobs, usage_jobs = [], {}, {}
    for provider, key in KEYS.items():
        base_url = simulator.base_url(provider)
        model: dict[str, Any] = {"provider": provider.value, "base_url": base_url}
        if key is not None:
            model["sealed_key"] = seal("ws-matrix", key, provider, base_url)
        for behaviour in EXPECTED:
            job_id = f"{provider.value}-{behaviour}"
            jobs[job_id] = (provider, behaviour)
            bodies.append(job_body(job_id, "ws-matrix", {**model, "name": f"sim-{behaviour}"},
                                   content=f"matrix {job_id}"))
        for behaviour in (b for p, b in USAGE_CASES if p is provider):
            job_id = f"{provider.value}-usage-{behaviour}"
            usage_jobs[job_id] = (provider, behaviour)
            bodies.append(job_body(job_id, "ws-matrix", {**model, "name": f"sim-{behaviour}"},
                                   content=f"{USAGE_CONTENT} ({job_id})"))
    succeeding = sum(EXPECTED[b][0] == "succeeded" for _, b in jobs.values()) + len(usage_jobs)
    await publish_jobs(matrix_settings, bodies)
    await tap.wait_for(lambda: len(tap.results) == len(bodies) and len(tap.usage) == succeeding, timeout_s=60)

    rows = []
    failures = []
    for job_id, (provider, behaviour) in jobs.items():
        result = tap.result_for(job_id)
        # Ollama itself takes no key, but a proxy in front of it can answer 401 or a quota 429 the same way.
        expected = EXPECTED[behaviour]
        error = result["error"] or {}
        got = (result["status"], error.get("code"), result["attempts"], error.get("retryable"))
        rows.append((provider.value, behaviour, *got, error.get("provider_status")))
        if got != expected:
            failures.append(f"{job_id}: got {got}, expected {expected}")
    print("\nprovider   outcome     status     error_code       attempts retryable http")
    for row in rows:
        print(f"{row[0]:<10} {row[1]:<11} {row[2]:<10} {row[3] or '-':<16} {row[4]:<8} {row[5]!s:<9} {row[6] or '-'}")
    for job_id in usage_jobs:
        result = tap.result_for(job_id)
        if (result["status"], result["attempts"], result["error"]) != ("succeeded", 1, None):
            failures.append(f"{job_id}: got {result['status']} after {result['attempts']}: {result['error']}")

    # Exact usage: every succeeded job's result.usage and usage event equal, in all five buckets, what the
    # simulator billed for its call; summed per provider, the worker's events equal the ledger.
    billed = billed_by_call(simulator)
    events = {u.json["job_id"]: u.json for u in tap.usage}
    totals = usage_totals(events, billed)
    print("usage      calls " + " ".join(f"{name.removesuffix('_tokens'):>11}" for name in BUCKETS)
          + "   (worker usage events vs simulator ledger)")
    for provider, (reported, served) in totals.items():
        print(f"{provider.value:<10} {reported[0]:<5} " + " ".join(f"{n:>11}" for n in reported[1:])
              + ("   == ledger" if reported == served else f"   != ledger {served}"))
    assert not failures, "\n".join(failures)

    succeeded = [r.json for r in tap.results if r.json["status"] == "succeeded"]
    assert len(succeeded) == succeeding
    assert len(simulator.ledger.billed()) == len(succeeded) - len(KEYS) == len(tap.usage) - len(KEYS)
    assert len(events) == len(tap.usage), "one usage event per succeeded job"
    assert set(events) == {r["job_id"] for r in succeeded}
    mismatches = usage_mismatches(succeeded, events, billed)
    assert not mismatches, "\n".join(mismatches)
    assert all(reported == served for reported, served in totals.values()), totals
    # The cases meant to carry cache and reasoning tokens really did, through the worker.
    for job_id, (provider, behaviour) in usage_jobs.items():
        served = billed[(provider, f"sim-{behaviour}")]
        beyond = {name for name in ("cache_read_tokens", "cache_write_tokens", "reasoning_tokens")
                  if getattr(served, name)}
        assert beyond == USAGE_CASES[(provider, behaviour)], f"{job_id} was billed {served}"
    unreported = [u.json for u in tap.usage if not u.json["usage_reported"]]
    assert sorted(u["job_id"] for u in unreported) == sorted(f"{p.value}-nousage" for p in KEYS)
    assert {u.json["event_id"] for u in tap.usage} and len({u.json["event_id"] for u in tap.usage}) == len(tap.usage)
    assert billed, "the simulator billed nothing"
    # Failed jobs are dead-lettered with their code.
    dead_codes = sorted(d.headers["x-byok-error"] for d in tap.dead)
    assert dead_codes == sorted(r.json["error"]["code"] for r in tap.results if r.json["status"] == "failed")


@pytest.mark.timeout(120)
async def test_long_waits_go_through_the_delay_queue_and_survive_a_restart(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    delayed = settings.model_copy(update={"inline_retry_max_s": 0.0, "max_attempts": 3})
    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "sim-flaky-1", "base_url": base_url,
             "sealed_key": seal("ws-delay", KEYS[Provider.OPENAI], Provider.OPENAI, base_url)}
    async with running(Worker(delayed)) as first:
        await publish_jobs(delayed, [job_body("delay-1", "ws-delay", model, content="delay me")])
        # The first call fails with a 500; the job leaves the worker for the 1 s delay queue.
        await wait_until(lambda: first.metrics.delayed._value.get() == 1, what="the job sent to the delay queue")
    assert tap.results == [], "nothing may be final while the job waits in the delay queue"

    async with running(Worker(delayed)):
        await tap.wait_for(lambda: len(tap.results) == 1, timeout_s=20)
    result = tap.results[0].json
    assert result["status"] == "succeeded"
    assert result["attempts"] == 2, "the attempt made before the delay counts"
    assert [c.status for c in simulator.ledger.calls] == [500, 200]
