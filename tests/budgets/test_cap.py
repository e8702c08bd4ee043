"""The in-flight cap: ``--max-in-flight 5`` with 3 worker processes; the provider never sees more than 5 calls
of that workspace at once, and every job still succeeds (calls over the cap wait in the delay queue)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson

from schemas.models import Provider
from tests.broker import broker_tap, byok, publish_jobs
from tests.budgets.helpers import job, write_prices
from tests.conftest import Sealer
from tests.processes import ByokProcess, start_worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator
from worker.testing.simulator.ledger import key_fingerprint

KEY = "sk-test-BudgetCap0123456789abcdef"
OTHER_KEY = "sk-test-BudgetCapOther0123456789ab"
JOBS = 60
CAP = 5


async def test_max_in_flight_caps_calls_across_workers_and_every_job_succeeds(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer, sqlite_url: str, tmp_path: Path
) -> None:
    simulator.latency_s = 0.3  # calls that overlap, so three workers at prefetch 20 would far exceed the cap
    prices_file = write_prices(tmp_path / "prices.json")
    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
             "sealed_key": seal("ws-capped", KEY, Provider.OPENAI, base_url)}
    free = {**model, "sealed_key": seal("ws-free", OTHER_KEY, Provider.OPENAI, base_url)}
    env = {"BYOK_STORE_URL": sqlite_url, "BYOK_PRICES_FILE": prices_file}
    out = byok(settings, "budgets", "set", "ws-capped", "--max-in-flight", str(CAP), extra_env=env).stdout.decode()
    assert "max in flight 5" in out
    workers: list[ByokProcess] = []
    try:
        workers = list(await asyncio.gather(*(asyncio.to_thread(
            start_worker, settings, 60.0, BYOK_PREFETCH="20", BYOK_LOG_LEVEL="warning", **env) for _ in range(3))))
        async with broker_tap(settings) as tap:
            bodies = [job(f"cap-{i}", "ws-capped", model) for i in range(JOBS)]
            bodies += [job(f"free-{i}", "ws-free", free) for i in range(JOBS)]
            await publish_jobs(settings, bodies)
            await tap.wait_for(lambda: len(tap.results) >= 2 * JOBS, timeout_s=60)
    finally:
        for worker in workers:
            worker.stop()
    results = [orjson.loads(r.body) for r in tap.results]
    assert {r["status"] for r in results} == {"succeeded"}, [r["error"] for r in results if r["error"]][:3]
    assert all(r["attempts"] == 1 for r in results), "waiting at the cap is not an attempt"
    peak = simulator.ledger.peak_in_flight
    capped, uncapped = peak[key_fingerprint(KEY) or ""], peak[key_fingerprint(OTHER_KEY) or ""]
    delayed = len(tap.delayed)
    print(f"\ncap: {JOBS} jobs at --max-in-flight {CAP} on 3 workers: peak {capped} concurrent calls, "
          f"{delayed} waits through the delay queue; the uncapped workspace peaked at {uncapped}")
    assert capped <= CAP
    assert capped == CAP, "the cap was never reached: the test did not load it"
    assert uncapped > CAP, "the uncapped workspace is not held to another's cap"
    assert delayed > 0
    assert all(d.json["workspace_id"] == "ws-capped" for d in tap.delayed)
