"""SIGTERM with provider calls in flight, some longer than ``BYOK_SHUTDOWN_GRACE_S``: the grace period cuts them.

A real ``byok worker`` process: after SIGTERM the calls that end within the grace period are answered by it;
it exits right after the grace period (and a margin for closing connections), with the exit status the README
gives for a stop (0); every cut job goes back to the queue and a second worker answers it exactly once; only
the cut calls are made again, and each answered call has one usage event.
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
GRACE_S = 1.5
EXIT_MARGIN_S = 5.0
"""Closing the channel, the connection, the Vault and provider clients and the health server after the grace."""


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
    base_url = simulator.base_url(Provider.OPENAI)
    sealed = seal("ws-grace", KEY, Provider.OPENAI, base_url)

    def model(name: str) -> dict[str, Any]:
        return {"provider": "openai", "name": name, "base_url": base_url, "sealed_key": sealed}

    # Quick calls end within the grace period; slow ones (well past grace + margin: a worker that waited for
    # them would fail the exit-time check) are cut.
    quick = [f"q-{i}" for i in range(6)]
    slow = [f"s-{i}" for i in range(6)]
    total = len(quick) + len(slow)
    await publish_jobs(settings, [
        *(job_body(j, "ws-grace", model(f"sim-slow-{int(GRACE_S * 300)}"), content=j) for j in quick),
        *(job_body(j, "ws-grace", model(f"sim-slow-{int(GRACE_S * 8000)}"), content=j) for j in slow),
    ])
    first = await asyncio.to_thread(start_worker, settings, BYOK_PREFETCH=str(total),
                                    BYOK_SHUTDOWN_GRACE_S=str(GRACE_S))
    try:
        await wait_until(lambda: provider_calls_started(simulator) >= total, timeout=30,
                         what="every job's provider call started on the first worker")
        in_flight_at_signal = await asyncio.to_thread(in_flight, first.health_port)
        signalled = time.monotonic()
        first.signal(signal.SIGTERM)
        code = await asyncio.to_thread(first.wait, GRACE_S + EXIT_MARGIN_S + 10)
        stopped_in = time.monotonic() - signalled
    finally:
        first.stop()
    log = first.log()
    from_first = sorted(r.json["job_id"] for r in tap.results)
    assert code == 0, f"the README gives 0 for a worker stopped by SIGTERM: {log[-2000:]}"
    assert stopped_in <= GRACE_S + EXIT_MARGIN_S, f"stopped {stopped_in:.1f}s after SIGTERM (grace {GRACE_S}s)"
    assert '"worker.grace_expired"' in log and f'"unfinished":{len(slow)}' in log, log[-3000:]
    assert from_first == sorted(quick), "the quick jobs finish within the grace period, the slow ones do not"

    second = await asyncio.to_thread(start_worker, settings, BYOK_PREFETCH=str(total))
    try:
        # A job is acked once its result and usage event are both confirmed: wait for both to arrive here.
        await tap.wait_for(lambda: len({r.json["job_id"] for r in tap.results}) == total
                           and len(tap.usage) >= total, timeout_s=60)
    finally:
        second.stop()
    by_job = [r.json["job_id"] for r in tap.results]
    calls = provider_calls_started(simulator)
    print(f"\n[sigterm-grace] sent={total} grace_s={GRACE_S} in_flight_at_sigterm={in_flight_at_signal:g} "
          f"stopped_in_s={stopped_in:.2f} exit={code} finished_in_grace={len(from_first)} cut={len(slow)} "
          f"results={len(tap.results)} unique={len(set(by_job))} dead={len(tap.dead)} provider_calls={calls} "
          f"recalled={calls - total} billed={len(simulator.ledger.billed())} usage_events={len(tap.usage)}")
    assert sorted(by_job) == sorted(quick + slow), "each job answered exactly once"
    assert all(r.json["status"] == "succeeded" for r in tap.results)
    assert calls == total + len(slow), "only the cut calls were made again"
    assert len(tap.usage) == total, "one usage event per answered call, none for a call whose answer never came"
    assert len({u.json["event_id"] for u in tap.usage}) == total
    assert tap.dead == []
