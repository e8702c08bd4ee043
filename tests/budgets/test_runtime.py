"""Budgets changed at run time reach a running worker within BYOK_BUDGET_REFRESH_S, a workspace without one
makes no store round trip, and a job refused for its budget is replayed from the dead letters once raised."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson

from schemas.models import Provider
from tests.broker import broker_tap, byok, publish_jobs, running
from tests.budgets.helpers import job, write_prices
from tests.conftest import Sealer
from tests.waiting import wait_until
from worker.aggregator.pricing import load_prices
from worker.budgets.admin import BudgetAdmin
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-test-BudgetRuntime0123456789ab"
REFRESH_S = 1.0


async def test_budget_changes_apply_within_the_refresh_and_refused_jobs_replay_after_raising(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer, sqlite_url: str, tmp_path: Path
) -> None:
    prices_file = write_prices(tmp_path / "prices.json")
    env = {"BYOK_STORE_URL": sqlite_url, "BYOK_PRICES_FILE": prices_file}
    config = settings.model_copy(update={"store_url": settings.store_url.__class__(sqlite_url),
                                         "prices_file": prices_file, "budget_refresh_s": REFRESH_S})
    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
             "sealed_key": seal("ws-live", KEY, Provider.OPENAI, base_url)}
    async with running(Worker(config)) as worker, broker_tap(settings, copies=True) as tap:
        assert worker.budgets is not None
        await publish_jobs(settings, [job("before", "ws-live", model)])
        await tap.wait_for(lambda: len(tap.results) == 1)
        assert tap.result_for("before")["status"] == "succeeded"
        assert worker.budgets.round_trips == 0, "a workspace without a budget costs no store round trip"

        byok(settings, "budgets", "set", "ws-live", "--limit-usd", "0.000001", extra_env=env)
        changed = time.monotonic()
        await asyncio.sleep(REFRESH_S + 0.2)  # the stated time must pass: the change is due within it
        await publish_jobs(settings, [job("after", "ws-live", model)])
        await tap.wait_for(lambda: len(tap.results) == 2 and len(tap.dead) == 1)
        refused = tap.result_for("after")
        print(f"\nruntime: a budget set {time.monotonic() - changed:.2f} s earlier refused the next job: "
              f"{refused['error']['message']}")
        assert refused["status"] == "failed" and refused["error"]["code"] == "budget_exceeded"
        assert refused["error"]["retryable"] is False and refused["attempts"] == 0
        assert "ws-live" in refused["error"]["message"] and "resets" in refused["error"]["message"]
        assert tap.dead[0].headers["x-byok-error"] == "budget_exceeded"
        assert len(simulator.ledger.billed()) == 1

        byok(settings, "budgets", "set", "ws-live", "--limit-usd", "5", extra_env=env)
        await asyncio.sleep(REFRESH_S + 0.2)  # as above: the raised budget is due within the refresh
        replay = byok(settings, "dlq", "replay", "--reason", "budget_exceeded", extra_env=env)
        assert b"replayed 1" in replay.stderr
        await tap.wait_for(lambda: len(tap.results) == 3)
        assert tap.results[-1].json["job_id"] == "after" and tap.results[-1].json["status"] == "succeeded"
        assert len(simulator.ledger.billed()) == 2

        byok(settings, "budgets", "delete", "ws-live", extra_env=env)
        listed = byok(settings, "budgets", "list", "ws-live", extra_env=env).stdout.decode()
        assert listed.strip() == "no budgets"


async def test_a_live_worker_keeps_its_reservation_for_a_call_longer_than_the_lease(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer, sqlite_url: str, tmp_path: Path
) -> None:
    lease_s = 1.0
    prices_file = write_prices(tmp_path / "prices.json")
    env = {"BYOK_STORE_URL": sqlite_url, "BYOK_PRICES_FILE": prices_file}
    byok(settings, "budgets", "set", "ws-long", "--limit-usd", "5", extra_env=env)
    config = settings.model_copy(update={"store_url": settings.store_url.__class__(sqlite_url),
                                         "prices_file": prices_file, "budget_lease_s": lease_s})
    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
             "sealed_key": seal("ws-long", KEY, Provider.OPENAI, base_url)}
    simulator.latency_s = 6 * lease_s  # one call six leases long
    async with running(Worker(config)), broker_tap(settings) as tap:
        await publish_jobs(settings, [job("long", "ws-long", model)])
        await wait_until(lambda: len(simulator.ledger.requests()) == 1, what="the call to start")
        await asyncio.sleep(2.5 * lease_s)  # the lease must run out (and be renewed) while the call goes on
        admin = await BudgetAdmin.open(sqlite_url, load_prices(prices_file), migrate_schema=False)
        try:
            (held,) = await admin.list("ws-long")
        finally:
            await admin.close()
        assert held.in_flight == 1 and held.reserved_usd > 0 and held.spent_usd == 0, held
        await tap.wait_for(lambda: len(tap.results) == 1, timeout_s=20)
    after = orjson.loads(byok(settings, "budgets", "list", "ws-long", "--json", extra_env=env).stdout)
    assert tap.result_for("long")["status"] == "succeeded"
    assert after[0]["in_flight"] == 0 and after[0]["reserved_usd"] == 0 and after[0]["spent_usd"] > 0
    table = byok(settings, "consumption", "ws-long", extra_env=env).stdout.decode()
    assert f"Budget ws-long (block, month): $5.000000; spent ${after[0]['spent_usd']:,.6f}, reserved $0.000000" \
        in table, table
    as_json = orjson.loads(byok(settings, "consumption", "ws-long", "--json", extra_env=env).stdout)
    assert as_json["budgets"] == after
