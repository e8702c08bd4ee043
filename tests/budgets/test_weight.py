"""A workspace's weight in the fair share (``byok budgets set <ws> --weight 3``): with both workspaces' jobs
waiting in the worker, the weighted one takes three run slots for every one the other takes."""

from __future__ import annotations

from pathlib import Path

import orjson

from schemas.models import Provider
from tests.broker import broker_tap, byok, publish_jobs
from tests.budgets.helpers import job, write_prices
from tests.conftest import Sealer
from tests.processes import start_worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

JOBS = 60
WEIGHT = 3
SLOTS = 4


async def test_a_workspace_of_weight_3_gets_three_slots_to_one(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer, sqlite_url: str, tmp_path: Path
) -> None:
    simulator.latency_s = 0.05  # calls that overlap: both workspaces have jobs waiting while slots free up
    base_url = simulator.base_url(Provider.OPENAI)
    models = {ws: {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
                   "sealed_key": seal(ws, f"sk-test-Weight-{ws}-0123456789abcdef", Provider.OPENAI, base_url)}
              for ws in ("ws-heavy", "ws-light")}
    env = {"BYOK_STORE_URL": sqlite_url, "BYOK_PRICES_FILE": write_prices(tmp_path / "prices.json")}
    out = byok(settings, "budgets", "set", "ws-heavy", "--weight", str(WEIGHT), extra_env=env).stdout.decode()
    assert f"ws-heavy: block no limit a month, weight {WEIGHT};" in out
    worker = start_worker(settings, 60.0, BYOK_PREFETCH=str(SLOTS), BYOK_LOG_LEVEL="warning", **env)
    try:
        async with broker_tap(settings) as tap:
            # Published alternately: in queue order each workspace would get every other slot.
            bodies = [job(f"{ws}-{i}", ws, models[ws]) for i in range(JOBS) for ws in ("ws-heavy", "ws-light")]
            await publish_jobs(settings, bodies)
            await tap.wait_for(lambda: len(tap.results) >= 2 * JOBS, timeout_s=60)
    finally:
        worker.stop()
    results = [orjson.loads(r.body) for r in tap.results]
    assert {r["status"] for r in results} == {"succeeded"}, [r["error"] for r in results if r["error"]][:3]
    order = "".join("H" if r["workspace_id"] == "ws-heavy" else "L" for r in results)
    # While both have jobs waiting: past the start (the keys are unsealed, the first jobs run as they came) and
    # before the light workspace's last jobs run alone.
    both_waiting = results[16:56]
    heavy = sum(r["workspace_id"] == "ws-heavy" for r in both_waiting) / len(both_waiting)
    print(f"\nweight {WEIGHT}: ws-heavy had {heavy:.0%} of {len(both_waiting)} results while both waited; "
          f"results in order: {order}")
    assert 0.7 <= heavy <= 0.8, f"ws-heavy had {heavy:.0%} of the results, {WEIGHT / (WEIGHT + 1):.0%} expected"
