"""The ledger on SQLite and PostgreSQL: reserve, settle, release, leases, caps, scopes, and many connections
reserving at once against one budget."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from functools import partial

from tests.aggregator.helpers import TEST_PRICES, usage
from worker.aggregator.db import Database, parse_store_url
from worker.aggregator.migrations import migrate
from worker.aggregator.pricing import PriceFile, PriceTable
from worker.aggregator.store import Store
from worker.budgets import ledger
from worker.budgets.admin import put_budget
from worker.budgets.rules import Action, Budget, Period

PRICES = PriceTable(PriceFile.model_validate(TEST_PRICES), "test")


async def _open(url: str) -> Database:
    db = Database(parse_store_url(url), create=True, name="ledger-test")
    await db.run(migrate, write=True)
    return db


def _reserve(db: Database, call_id: str, cost: float | None, *, automation: str | None = None,
             lease_s: float = 60.0, now: datetime | None = None) -> asyncio.Future[ledger.Reservation]:
    return asyncio.ensure_future(db.run(partial(
        ledger.reserve, call_id=call_id, workspace_id="acme", automation_id=automation, cost_usd=cost,
        holder="test", lease_s=lease_s, prices=PRICES, now=now or datetime.now(UTC)), write=True))


async def _status(db: Database, budget: Budget) -> ledger.BudgetStatus:
    return await db.run(lambda sql: ledger.budget_status(sql, budget, PRICES, datetime.now(UTC)), write=False)


async def _put(db: Database, budget: Budget) -> None:
    await db.run(partial(put_budget, budget=budget), write=True)


async def test_reserve_settle_release_and_usage_replacing_a_settled_call(store_url: str) -> None:
    db = await _open(store_url)
    store = await Store.open(store_url)
    try:
        budget = Budget(workspace_id="acme", limit_usd=1.0)
        await _put(db, budget)
        assert isinstance(await _reserve(db, "c1", 0.6), ledger.Admitted)
        refused = await _reserve(db, "c2", 0.5)
        assert isinstance(refused, ledger.Refused) and refused.status.reserved_usd == 0.6
        assert "limit $1.000000" in refused.message("openai", "gpt-4o-mini")
        assert isinstance(await _reserve(db, "c3", 0.4), ledger.Admitted)  # exactly fills the limit

        await db.run(partial(ledger.release, call_id="c3"), write=True)
        await db.run(partial(ledger.settle, call_id="c1", amount_usd=0.1), write=True)
        status = await _status(db, budget)
        assert (round(status.spent_usd, 9), status.reserved_usd, status.in_flight) == (0.1, 0.0, 0)

        # The usage event of c1 arrives: it counts instead of the settled reservation (not both).
        # 50,000 input tokens at $2 a million (the test table's current gpt-4o-mini price) = $0.1.
        await store.ingest([usage(datetime.now(UTC), event_id="c1", automation=None, input_tokens=50_000)])
        assert round((await _status(db, budget)).spent_usd, 9) == 0.1
        # Usage from before the budget existed counts as spent too.
        await store.ingest([usage(datetime.now(UTC), event_id="old", automation=None, input_tokens=100_000)])
        assert round((await _status(db, budget)).spent_usd, 9) == 0.3
        assert isinstance(await _reserve(db, "c4", 0.71), ledger.Refused)
        assert isinstance(await _reserve(db, "c5", 0.7), ledger.Admitted)
        # Pruning drops c1 (its usage counts instead) and nothing that still counts.
        assert await db.run(partial(ledger.prune, before=datetime.now(UTC) - timedelta(days=40)), write=True) == 1
        assert round((await _status(db, budget)).spent_usd + (await _status(db, budget)).reserved_usd, 9) == 1.0
    finally:
        await store.close()
        await db.close()


async def test_an_expired_lease_counts_as_spent_and_no_longer_in_flight(store_url: str) -> None:
    db = await _open(store_url)
    try:
        budget = Budget(workspace_id="acme", limit_usd=1.0, max_in_flight=1)
        await _put(db, budget)
        past = datetime.now(UTC) - timedelta(seconds=120)
        assert isinstance(await _reserve(db, "dead", 0.25, lease_s=60, now=past), ledger.Admitted)
        status = await _status(db, budget)
        assert (status.spent_usd, status.reserved_usd, status.in_flight) == (0.25, 0.0, 0)
        assert isinstance(await _reserve(db, "live", 0.25), ledger.Admitted)
        at_cap = await _reserve(db, "third", 0.25)
        assert isinstance(at_cap, ledger.AtCap) and at_cap.in_flight == 1
        await db.run(partial(ledger.renew, call_ids=["live"], until=datetime.now(UTC) + timedelta(hours=1)),
                     write=True)
        assert (await _status(db, budget)).reserved_usd == 0.25
    finally:
        await db.close()


async def test_scopes_alert_budgets_and_unpriced_models(store_url: str) -> None:
    db = await _open(store_url)
    try:
        await _put(db, Budget(workspace_id="acme", automation_id="a1", limit_usd=0.5, period=Period.DAY))
        await _put(db, Budget(workspace_id="other", limit_usd=0.01))
        assert isinstance(await _reserve(db, "x1", 0.4, automation="a1"), ledger.Admitted)
        assert isinstance(await _reserve(db, "x2", 0.4, automation="a1"), ledger.Refused)
        assert isinstance(await _reserve(db, "x3", 0.4, automation="a2"), ledger.Admitted)  # not that budget
        refused = await _reserve(db, "x4", None, automation="a1")
        assert isinstance(refused, ledger.Refused) and refused.needed_usd is None
        assert "has no price" in refused.message("openai", "mystery")
        await _put(db, Budget(workspace_id="acme", automation_id="a1", limit_usd=0.01, action=Action.ALERT))
        assert await _reserve(db, "x5", None, automation="a1") == ledger.Admitted(0.0, recorded=False)
    finally:
        await db.close()


async def test_many_connections_reserving_at_once_never_exceed_the_limit(store_url: str) -> None:
    """Eight connections (eight threads, as eight workers would have) race 400 reservations for 128 slots
    (1/128 of a dollar each: exact in binary, so the count is exact too)."""
    dbs = [await _open(store_url) for _ in range(8)]
    try:
        budget = Budget(workspace_id="acme", limit_usd=1.0)
        await _put(dbs[0], budget)
        outcomes = await asyncio.gather(*(_reserve(dbs[i % 8], f"r{i}", 1 / 128) for i in range(400)))
        admitted = sum(isinstance(o, ledger.Admitted) for o in outcomes)
        assert admitted == 128, admitted
        status = await _status(dbs[0], budget)
        assert round(status.reserved_usd, 9) == 1.0
    finally:
        for db in dbs:
            await db.close()


def test_period_bounds_are_utc_calendar_periods() -> None:
    moment = datetime(2025, 12, 31, 23, 59, tzinfo=UTC)
    month = Budget(workspace_id="w", limit_usd=1)
    day = Budget(workspace_id="w", limit_usd=1, period=Period.DAY)
    assert month.period_start(moment) == datetime(2025, 12, 1, tzinfo=UTC)
    assert month.resets_at(moment) == datetime(2026, 1, 1, tzinfo=UTC)
    assert day.resets_at(moment) == datetime(2026, 1, 1, tzinfo=UTC)
    assert day.period_start(moment) == datetime(2025, 12, 31, tzinfo=UTC)

