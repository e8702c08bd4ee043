"""Every provider protocol x every failure class, end to end through the worker and the simulator.

Asserts the result code, whether it was retried and the attempt count, and that usage equals what the
simulator billed; prints the provider x outcome table (``pytest -s``).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from schemas.models import Provider
from tests.broker import BrokerTap, job_body, publish_jobs
from tests.conftest import Sealer
from worker.service import Worker
from worker.settings import Settings
from worker.simulator import ProviderSimulator

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


@pytest.fixture
def matrix_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "max_attempts": 3, "provider_read_timeout_s": 0.4, "retry_base_delay_s": 0.05, "prefetch": 200,
    })


@pytest.fixture
async def matrix_worker(matrix_settings: Settings, tap: BrokerTap) -> Any:
    worker = Worker(matrix_settings)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    await asyncio.wait_for(worker.ready.wait(), 30)
    yield worker
    stop.set()
    await asyncio.wait_for(task, 30)


@pytest.mark.timeout(120)
async def test_provider_by_outcome(
    matrix_settings: Settings, simulator: ProviderSimulator, matrix_worker: Worker, tap: BrokerTap, seal: Sealer
) -> None:
    # The simulator's 429 says retry-after: 1 s; waits up to BYOK_INLINE_RETRY_MAX_S (2 s) stay in process.
    bodies, jobs = [], {}
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
    await publish_jobs(matrix_settings, bodies)
    await tap.wait_for(lambda: len(tap.results) == len(bodies), timeout_s=60)

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
    assert not failures, "\n".join(failures)

    # Exact usage: every succeeded job's usage equals what the simulator billed for its call.
    billed = {c.usage.model_dump_json() for c in simulator.ledger.billed() if c.usage is not None}
    succeeded = [r.json for r in tap.results if r.json["status"] == "succeeded"]
    assert len(simulator.ledger.billed()) == len(succeeded) - len(KEYS) == len(tap.usage) - len(KEYS)
    for result in succeeded:
        # A response without usage is flagged as unknown, never counted as zero.
        assert (result["usage"] is None) == result["model"].endswith("nousage")
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
    import asyncio

    delayed = settings.model_copy(update={"inline_retry_max_s": 0.0, "max_attempts": 3})
    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "sim-flaky-1", "base_url": base_url,
             "sealed_key": seal("ws-delay", KEYS[Provider.OPENAI], Provider.OPENAI, base_url)}
    first = Worker(delayed)
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    await asyncio.wait_for(first.ready.wait(), 30)
    await publish_jobs(delayed, [job_body("delay-1", "ws-delay", model, content="delay me")])
    # The first call fails with a 500; the job leaves the worker for the 1 s delay queue.
    while first.metrics.delayed._value.get() < 1:
        await asyncio.sleep(0.02)
    stop.set()
    await asyncio.wait_for(task, 30)
    assert tap.results == [], "nothing may be final while the job waits in the delay queue"

    second = Worker(delayed)
    stop2 = asyncio.Event()
    task2 = asyncio.create_task(second.run(stop2))
    try:
        await tap.wait_for(lambda: len(tap.results) == 1, timeout_s=20)
    finally:
        stop2.set()
        await asyncio.wait_for(task2, 30)
    result = tap.results[0].json
    assert result["status"] == "succeeded"
    assert result["attempts"] == 2, "the attempt made before the delay counts"
    assert [c.status for c in simulator.ledger.calls] == [500, 200]
