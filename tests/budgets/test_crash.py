"""A worker SIGKILLed while holding reservations: its leases expire, after which nothing stays reserved, the
calls count as spent at their reserved amount (the provider may have billed them), and the redelivered jobs
run on another worker within the budget."""

from __future__ import annotations

from pathlib import Path

import orjson

from schemas.models import CompletionJob, Provider
from tests.broker import broker_tap, publish_jobs
from tests.budgets.helpers import billed_usd, job, write_prices
from tests.conftest import Sealer
from tests.processes import kill, start_worker
from tests.waiting import wait_until
from worker.aggregator.pricing import load_prices
from worker.budgets.admin import BudgetAdmin
from worker.budgets.estimate import estimate
from worker.budgets.rules import Budget
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-test-BudgetCrash0123456789abcd"
WORKSPACE = "ws-crash"
JOBS = 5
LEASE_S = 3.0


async def test_a_killed_workers_reservations_expire_into_spend_after_the_lease(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer, store_url: str, tmp_path: Path
) -> None:
    prices_file = write_prices(tmp_path / "prices.json")
    prices = load_prices(prices_file)
    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
             "sealed_key": seal(WORKSPACE, KEY, Provider.OPENAI, base_url)}
    bodies = [job(f"crash-{i}", WORKSPACE, model) for i in range(JOBS)]
    worst = estimate(CompletionJob.model_validate_json(bodies[0]), prices).cost_usd
    assert worst is not None
    limit = 4 * JOBS * worst
    env = {"BYOK_STORE_URL": store_url, "BYOK_PRICES_FILE": prices_file, "BYOK_BUDGET_LEASE_S": str(LEASE_S)}
    admin = await BudgetAdmin.open(store_url, prices, migrate_schema=True)
    try:
        await admin.set(Budget(workspace_id=WORKSPACE, limit_usd=limit))
        simulator.latency_s = 8.0  # every call hangs until the worker is gone (the kill comes within seconds)
        doomed = start_worker(settings, **env)
        async with broker_tap(settings) as tap:
            await publish_jobs(settings, bodies)

            async def holding() -> bool:
                (status,) = await admin.list(WORKSPACE)
                return status.in_flight == JOBS

            await wait_until(holding, timeout=30, what="the worker holding a reservation per job")
            kill(doomed)
            (held,) = await admin.list(WORKSPACE)
            assert held.reserved_usd > 0, "a lease outlives its worker by up to BYOK_BUDGET_LEASE_S"

            async def expired() -> bool:
                (status,) = await admin.list(WORKSPACE)
                return status.reserved_usd == 0

            await wait_until(expired, timeout=LEASE_S + 10, what="the dead worker's leases to expire")
            (after,) = await admin.list(WORKSPACE)
            print(f"\ncrash [{store_url.split(':')[0]}]: {JOBS} calls held ${held.reserved_usd:.6f} when the worker "
                  f"was killed; after the {LEASE_S:g} s lease: reserved ${after.reserved_usd:.6f}, "
                  f"spent ${after.spent_usd:.6f} (the reserved amount), limit ${limit:.6f}")
            assert abs(after.spent_usd - held.reserved_usd) < 1e-12
            assert after.in_flight == 0

            simulator.latency_s = 0.0
            survivor = start_worker(settings, **env)
            try:
                await tap.wait_for(lambda: len(tap.results) >= JOBS, timeout_s=60)
            finally:
                survivor.stop()
            (final,) = await admin.list(WORKSPACE)
    finally:
        await admin.close()
    results = [orjson.loads(r.body) for r in tap.results]
    assert {r["status"] for r in results} == {"succeeded"}
    assert final.reserved_usd == 0
    # The dead worker's calls may be billed too (the provider answers a caller that left): still within.
    assert billed_usd(simulator, prices) <= final.spent_usd <= limit
