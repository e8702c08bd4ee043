"""The budget store unreachable: BYOK_BUDGET_FAIL_MODE=closed holds a budgeted workspace's calls in the delay
queue until it answers again; open lets them through unreserved. An unbudgeted workspace never waits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from schemas.models import Provider
from tests.broker import broker_tap, publish_jobs, running
from tests.budgets.helpers import job, write_prices
from tests.conftest import Sealer
from tests.faults import TcpProxy
from worker.aggregator.pricing import load_prices
from worker.budgets.admin import BudgetAdmin
from worker.budgets.rules import Budget
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-test-BudgetFailMode0123456789a"


@pytest.fixture
async def pg_proxy() -> AsyncIterator[TcpProxy]:
    proxy = TcpProxy("127.0.0.1", 5432)
    await proxy.start()
    yield proxy
    await proxy.stop()


@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_store_unreachable(
    mode: str, settings: Settings, simulator: ProviderSimulator, seal: Sealer, pg_url: str, pg_proxy: TcpProxy,
    tmp_path: Path,
) -> None:
    prices_file = write_prices(tmp_path / "prices.json")
    admin = await BudgetAdmin.open(pg_url, load_prices(prices_file), migrate_schema=True)
    await admin.set(Budget(workspace_id="ws-held", limit_usd=5.0))
    proxied = pg_url.replace("127.0.0.1:5432", f"127.0.0.1:{pg_proxy.port}")
    config = settings.model_copy(update={"store_url": settings.store_url.__class__(proxied),
                                         "prices_file": prices_file, "budget_fail_mode": mode})
    base_url = simulator.base_url(Provider.OPENAI)
    held = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
            "sealed_key": seal("ws-held", KEY, Provider.OPENAI, base_url)}
    free = {**held, "sealed_key": seal("ws-unbudgeted", KEY, Provider.OPENAI, base_url)}
    try:
        async with running(Worker(config)), broker_tap(settings) as tap:
            pg_proxy.refusing = True
            await pg_proxy.cut()
            await publish_jobs(settings, [job("held", "ws-held", held), job("free", "ws-unbudgeted", free)])
            if mode == "closed":
                await tap.wait_for(lambda: len(tap.delayed) >= 1 and len(tap.results) == 1)
                assert tap.result_for("free")["status"] == "succeeded"
                assert tap.delayed[0].json["job_id"] == "held"
                assert len(simulator.ledger.billed()) == 1, "no call for the budgeted workspace while closed"
                pg_proxy.refusing = False
            await tap.wait_for(lambda: len(tap.results) == 2, timeout_s=30)
            assert tap.result_for("held")["status"] == "succeeded"
            assert tap.result_for("held")["attempts"] == 1
            (status,) = await admin.list("ws-held")
            reserved_calls = status.spent_usd > 0
            print(f"\nfail mode {mode}: the budgeted job {'waited' if mode == 'closed' else 'ran'} "
                  f"({len(tap.delayed)} delay-queue waits), reserved in the store: {reserved_calls}")
            assert reserved_calls is (mode == "closed"), "open mode lets the call through without a reservation"
            assert (len(tap.delayed) > 0) is (mode == "closed")
    finally:
        await admin.close()
