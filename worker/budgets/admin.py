"""Budgets managed at run time: set (insert or replace), list with what is spent and reserved, delete.

Shared by ``byok budgets`` and the aggregator's ``/v1/workspaces/{ws}/budgets``; both go through
``BudgetAdmin`` on the consumption store, and workers pick a change up within ``BYOK_BUDGET_REFRESH_S``.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import partial

from worker.aggregator.db import Database, Sql, parse_store_url
from worker.aggregator.migrations import check_current, migrate
from worker.aggregator.pricing import PriceTable
from worker.budgets.ledger import BudgetStatus, all_budgets, statuses
from worker.budgets.rules import Budget


def put_budget(sql: Sql, budget: Budget) -> None:
    values = (budget.limit_usd, budget.period.value, budget.action.value, budget.max_in_flight, budget.weight,
              time.time_ns() // 1000)
    changed = sql.execute(
        "UPDATE budgets SET limit_usd = ?, period = ?, action = ?, max_in_flight = ?, weight = ?, updated_at_us = ? "
        "WHERE workspace_id = ? AND automation_id = ?", (*values, budget.workspace_id, budget.automation_id or ""),
    )
    if not changed:
        sql.execute(
            "INSERT INTO budgets (limit_usd, period, action, max_in_flight, weight, updated_at_us, workspace_id, "
            "automation_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*values, budget.workspace_id, budget.automation_id or ""),
        )


def delete_budget(sql: Sql, workspace_id: str, automation_id: str | None) -> bool:
    return sql.execute("DELETE FROM budgets WHERE workspace_id = ? AND automation_id = ?",
                       (workspace_id, automation_id or "")) > 0


class BudgetAdmin:
    """The budgets of one store. ``migrate_schema=False`` for readers that must not change the schema."""

    def __init__(self, db: Database, prices: PriceTable) -> None:
        self._db = db
        self._prices = prices

    @classmethod
    async def open(cls, store_url: str, prices: PriceTable, *, migrate_schema: bool) -> BudgetAdmin:
        db = Database(parse_store_url(store_url), create=migrate_schema, name="budgets-admin")
        try:
            await db.run(migrate if migrate_schema else check_current, write=migrate_schema)
        except BaseException:
            await db.close()
            raise
        return cls(db, prices)

    async def close(self) -> None:
        await self._db.close()

    async def set(self, budget: Budget) -> BudgetStatus:
        await self._db.run(partial(put_budget, budget=budget), write=True)
        found = await self.list(budget.workspace_id)
        return next(s for s in found if s.budget.automation_id == budget.automation_id)

    async def delete(self, workspace_id: str, automation_id: str | None) -> bool:
        return await self._db.run(partial(delete_budget, workspace_id=workspace_id, automation_id=automation_id),
                                  write=True)

    async def list(self, workspace_id: str | None = None) -> list[BudgetStatus]:
        now = datetime.now(UTC)

        def work(sql: Sql) -> list[BudgetStatus]:
            return statuses(sql, all_budgets(sql, workspace_id), self._prices, now)

        return await self._db.run(work, write=False)
