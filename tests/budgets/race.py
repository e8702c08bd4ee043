"""The race, shared by ``test_race_sqlite`` and ``test_race_postgresql`` (one file each, so each stays under a
minute): 4 worker processes, prefetch 200 each, 3,000 jobs of one workspace against a block budget worth about
500 of them. What the provider billed, priced, never exceeds the budget; >= 90 % of it is used; every other job
ends ``budget_exceeded``; nothing stays reserved."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import orjson

from schemas.models import CompletionJob, Provider
from tests.aggregator.helpers import aggregator_settings
from tests.broker import broker_tap, publish_jobs, running_aggregator
from tests.budgets.helpers import billed_usd, job, write_prices
from tests.conftest import Sealer
from tests.processes import ByokProcess, start_worker
from tests.waiting import wait_until
from worker.aggregator.pricing import load_prices
from worker.budgets.admin import BudgetAdmin
from worker.budgets.estimate import estimate
from worker.budgets.rules import Action, Budget
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-test-BudgetRace0123456789abcdef"
WORKSPACE = "ws-race"
JOBS = 3000
WORKERS = 4
PREFETCH = 200
WORTH = 500
REFUSAL = re.compile(r"spent \$([0-9.]+), reserved \$([0-9.]+)")


async def race(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer, store_url: str, tmp_path: Path
) -> None:
    prices_file = write_prices(tmp_path / "prices.json")
    prices = load_prices(prices_file)
    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
             "sealed_key": seal(WORKSPACE, KEY, Provider.OPENAI, base_url)}
    bodies = [job(f"race-{i}", WORKSPACE, model) for i in range(JOBS)]
    worst = estimate(CompletionJob.model_validate_json(bodies[0]), prices).cost_usd
    assert worst is not None
    limit = round(WORTH * worst, 9)

    admin = await BudgetAdmin.open(store_url, prices, migrate_schema=True)
    workers: list[ByokProcess] = []
    try:
        await admin.set(Budget(workspace_id=WORKSPACE, limit_usd=limit, action=Action.BLOCK))
        env = {"BYOK_PREFETCH": str(PREFETCH), "BYOK_PRICES_FILE": prices_file, "BYOK_STORE_URL": store_url,
               "BYOK_LOG_LEVEL": "warning"}
        workers = list(await asyncio.gather(*(asyncio.to_thread(start_worker, settings, 60.0, **env)
                                              for _ in range(WORKERS))))
        agg = aggregator_settings(settings, store_url=store_url, prices_file=prices_file)
        async with running_aggregator(agg), broker_tap(settings, usage=False) as tap:
            started = time.monotonic()
            await publish_jobs(settings, bodies)
            await tap.wait_for(lambda: len(tap.results) >= JOBS, timeout_s=150)
            elapsed = time.monotonic() - started
            results = [orjson.loads(r.body) for r in tap.results]
            await tap.wait_for(lambda: len(tap.dead) >= sum(r["status"] == "failed" for r in results), timeout_s=30)

            async def settled() -> bool:
                (status,) = await admin.list(WORKSPACE)
                return status.reserved_usd == 0 and status.spent_usd >= billed_usd(simulator, prices) - 1e-12

            await wait_until(settled, timeout=30, what="reservations settled and usage stored")
            (status,) = await admin.list(WORKSPACE)
    finally:
        for worker in workers:
            worker.stop()
        await admin.close()

    succeeded = [r for r in results if r["status"] == "succeeded"]
    refused = [r for r in results if r["status"] == "failed"]
    assert {r["job_id"] for r in results} == {f"race-{i}" for i in range(JOBS)}
    assert all(r["error"]["code"] == "budget_exceeded" and r["attempts"] == 0 for r in refused), refused[:3]
    assert "resets" in refused[0]["error"]["message"] and f"limit ${limit:.6f}" in refused[0]["error"]["message"]
    assert {d.headers.get("x-byok-error") for d in tap.dead} == {"budget_exceeded"}
    # Each refusal says what was spent and reserved when it was decided: the budget was full by then.
    held_at_refusal = [float(spent) + float(reserved) for r in refused
                       for spent, reserved in REFUSAL.findall(r["error"]["message"])]
    assert len(held_at_refusal) == len(refused)
    fullest_first = min(held_at_refusal)
    billed = billed_usd(simulator, prices)
    calls = len(simulator.ledger.billed())
    overshoot = max(0.0, billed - limit)
    print(f"\nrace [{store_url.split(':')[0]}]: jobs {JOBS}, budget ${limit:.6f} (worth {WORTH} worst cases), "
          f"billed ${billed:.6f} ({billed / limit:.1%}, {calls} calls), refused {len(refused)}, "
          f"overshoot ${overshoot:.6f}, reserved at the end ${status.reserved_usd:.6f}, "
          f"spent in store ${status.spent_usd:.6f}; at every refusal spent + reserved was >= "
          f"{fullest_first / limit:.1%} of the budget; {elapsed:.1f} s")
    assert calls == len(succeeded)
    assert billed <= limit, f"overshoot: billed ${billed} against a ${limit} budget"
    assert billed >= 0.9 * limit, f"only {billed / limit:.1%} of the budget used"
    assert fullest_first >= 0.9 * limit, "a job was refused before 90 % of the budget was spent or reserved"
    assert len(succeeded) + len(refused) == JOBS and len(refused) > 0
    assert status.reserved_usd == 0
    assert abs(status.spent_usd - billed) < 1e-9
