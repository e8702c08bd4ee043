"""SIGTERM with provider calls in flight longer than ``BYOK_SHUTDOWN_GRACE_S``: the grace period cuts them.

A real ``byok worker`` process: after SIGTERM it exits within the grace period (and a margin for closing the
connection), with the exit status the README gives for a stop (0); every cut job goes back to the queue and a
second worker answers it exactly once; the provider saw each job at most twice (the cut call and the call again).
"""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Any

import httpx
import pytest

from schemas.models import Provider
from tests.broker import BrokerTap, job_body, publish_jobs
from tests.conftest import Sealer
from tests.processes import start_worker
from tests.waiting import wait_until
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-test-Grace0123456789abcdef"
GRACE_S = 1.0
EXIT_MARGIN_S = 5.0
"""Closing the channel, the connection, the Vault and provider clients and the health server after the grace."""


def sealed_model(seal: Sealer, simulator: ProviderSimulator, workspace: str) -> dict[str, Any]:
    base_url = simulator.base_url(Provider.OPENAI)
    return {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
            "sealed_key": seal(workspace, KEY, Provider.OPENAI, base_url)}


def provider_calls_started(simulator: ProviderSimulator) -> int:
    return sum(1 for seen in simulator.ledger.requests() if seen.protocol is not None)


def in_flight(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=2).text
    for line in text.splitlines():
        if line.startswith("byok_jobs_in_flight "):
            return float(line.split()[1])
    return 0.0


@pytest.mark.timeout(120)
async def test_sigterm_cuts_calls_longer_than_the_grace_period_and_loses_no_job(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    simulator.latency_s = 10 * GRACE_S  # well past grace + margin: a worker that waited for them fails
    model = sealed_model(seal, simulator, "ws-grace")
    total = 12
    await publish_jobs(settings, [job_body(f"g-{i}", "ws-grace", model, content=f"job {i}") for i in range(total)])
    first = await asyncio.to_thread(start_worker, settings, BYOK_PREFETCH=str(total),
                                    BYOK_SHUTDOWN_GRACE_S=str(GRACE_S))
    try:
        await wait_until(lambda: provider_calls_started(simulator) >= total, timeout=30,
                         what="every job's provider call started on the first worker")
        assert await asyncio.to_thread(in_flight, first.health_port) == total
        signalled = time.monotonic()
        first.signal(signal.SIGTERM)
        code = await asyncio.to_thread(first.wait, GRACE_S + EXIT_MARGIN_S + 10)
        stopped_in = time.monotonic() - signalled
    finally:
        first.stop()
    log = first.log()
    results_from_first = len(tap.results)
    assert code == 0, f"the README gives 0 for a worker stopped by SIGTERM: {log[-2000:]}"
    assert stopped_in <= GRACE_S + EXIT_MARGIN_S, f"stopped {stopped_in:.1f}s after SIGTERM (grace {GRACE_S}s)"
    assert '"worker.grace_expired"' in log and f'"unfinished":{total}' in log, log[-3000:]
    assert results_from_first == 0, "no call could finish within the grace period"

    second = await asyncio.to_thread(start_worker, settings, BYOK_PREFETCH=str(total))
    simulator.latency_s = 0.0
    try:
        # A job is acked once its result and usage event are both confirmed: wait for both to arrive here.
        await tap.wait_for(lambda: len({r.json["job_id"] for r in tap.results}) == total
                           and len(tap.usage) >= total, timeout_s=60)
    finally:
        second.stop()
    by_job = [r.json["job_id"] for r in tap.results]
    calls = provider_calls_started(simulator)
    billed_to_results = sorted(r.json["job_id"] for r in tap.results if r.json["status"] == "succeeded")
    print(f"\n[sigterm-grace] sent={total} grace_s={GRACE_S} stopped_in_s={stopped_in:.2f} exit={code} "
          f"results={len(tap.results)} unique={len(set(by_job))} dead={len(tap.dead)} provider_calls={calls} "
          f"recalled={calls - total} billed={len(simulator.ledger.billed())} usage_events={len(tap.usage)}")
    assert sorted(by_job) == sorted(f"g-{i}" for i in range(total)), "each cut job answered exactly once"
    assert billed_to_results == sorted(by_job), "every job succeeded on the second worker"
    assert calls == 2 * total, "each job called once on the first worker (cut) and once again on the second"
    assert len(tap.usage) == total, "one usage event per answered call, none for a call whose answer never came"
    assert tap.dead == []
