"""The store's side of budgets: atomic reservations, settling, releasing, leases, and spent/reserved.

A reservation is one row of ``budget_reservations`` per admitted provider call, keyed by the call's id (the
usage event's ``event_id``). What a budget's period holds:

- spent = the estimated cost of the period's usage events in the store, plus every reservation of the
  period whose usage event has not arrived and which is no longer live (settled to its actual cost, or
  a dead worker's expired lease, at the reserved amount);
- reserved = the live reservations (lease not expired) whose usage has not arrived.

``reserve`` runs in one write transaction that holds the budgets it checks: on PostgreSQL their rows are
locked (``SELECT … FOR UPDATE``) before anything is read, on SQLite the transaction is ``BEGIN IMMEDIATE``
(one writer per file). So two reservations against one budget never both read the same headroom.
Reservations are read before usage: an event stored between the two reads is counted twice (safe), never
not at all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from worker.aggregator.db import Backend, Sql
from worker.aggregator.pricing import PriceTable
from worker.aggregator.records import DAY_S, Counters
from worker.budgets.rules import Action, Budget, Period

LIVE = "live"
SETTLED = "settled"

_BUDGET_COLUMNS = "workspace_id, automation_id, limit_usd, period, action, max_in_flight, weight"


def us(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000)


def budget_of(row: Sequence[object]) -> Budget:
    workspace_id, automation_id, limit_usd, period, action, max_in_flight, weight = row
    return Budget(
        workspace_id=str(workspace_id), automation_id=str(automation_id) or None,
        limit_usd=float(limit_usd) if limit_usd is not None else None,  # type: ignore[arg-type]
        period=Period(str(period)), action=Action(str(action)),
        max_in_flight=int(max_in_flight) if max_in_flight is not None else None,  # type: ignore[call-overload]
        weight=int(weight) if weight is not None else None,  # type: ignore[call-overload]
    )


def all_budgets(sql: Sql, workspace_id: str | None = None) -> list[Budget]:
    where, params = ("WHERE workspace_id = ?", (workspace_id,)) if workspace_id else ("", ())
    rows = sql.query(f"SELECT {_BUDGET_COLUMNS} FROM budgets {where} "  # noqa: S608 - constant SQL
                     "ORDER BY workspace_id, automation_id", params)
    return [budget_of(row) for row in rows]


def _locked_budgets(sql: Sql, workspace_id: str, automation_id: str | None) -> list[Budget]:
    lock = " FOR UPDATE" if sql.backend is Backend.POSTGRESQL else ""
    rows = sql.query(f"SELECT {_BUDGET_COLUMNS} FROM budgets WHERE workspace_id = ? "  # noqa: S608
                     f"AND automation_id IN ('', ?) ORDER BY automation_id{lock}", (workspace_id, automation_id or ""))
    return [budget_of(row) for row in rows]


@dataclass(frozen=True, slots=True)
class BudgetStatus:
    budget: Budget
    spent_usd: float
    reserved_usd: float
    in_flight: int
    resets_at: datetime

    def as_json(self, now: datetime) -> dict[str, object]:
        return {**self.budget.as_json(now), "spent_usd": round(self.spent_usd, 9),
                "reserved_usd": round(self.reserved_usd, 9), "in_flight": self.in_flight}


def _scope(budget: Budget, column: str = "workspace_id") -> tuple[str, tuple[str, ...]]:
    if budget.automation_id is None:
        return f"{column} = ?", (budget.workspace_id,)
    return f"{column} = ? AND automation_id = ?", (budget.workspace_id, budget.automation_id)


def budget_status(sql: Sql, budget: Budget, prices: PriceTable, now: datetime) -> BudgetStatus:
    start_us, now_us = us(budget.period_start(now)), us(now)
    where, params = _scope(budget, "r.workspace_id")
    where = where.replace("automation_id", "r.automation_id")
    # Reservations first, usage second (the module's docstring says why).
    held = sql.query(
        "SELECT COALESCE(SUM(CASE WHEN r.state = ? AND r.lease_until_us >= ? THEN r.amount_usd ELSE 0 END), 0), "  # noqa: S608
        "COALESCE(SUM(CASE WHEN r.state = ? AND r.lease_until_us >= ? THEN 0 ELSE r.amount_usd END), 0), "
        "COALESCE(SUM(CASE WHEN r.state = ? AND r.lease_until_us >= ? THEN 1 ELSE 0 END), 0) "
        f"FROM budget_reservations r WHERE {where} AND r.created_at_us >= ? "
        "AND NOT EXISTS (SELECT 1 FROM usage_events u WHERE u.event_id = r.call_id)",
        (LIVE, now_us, LIVE, now_us, LIVE, now_us, *params, start_us),
    )
    reserved, unreported, in_flight = held[0]
    spent = float(unreported) + usage_cost(sql, budget, start_us // 1_000_000, prices)
    return BudgetStatus(budget, spent, float(reserved), int(in_flight), budget.resets_at(now))


def usage_cost(sql: Sql, budget: Budget, since_s: int, prices: PriceTable) -> float:
    """The estimated cost of the budget's usage events since ``since_s``, priced per UTC day as the
    aggregator prices them; an unpriced model adds nothing (it can never be admitted under a block budget)."""
    where, params = _scope(budget)
    rows = sql.query(
        f"SELECT provider, model, hour_start / {DAY_S}, SUM(input_tokens), SUM(cache_read_tokens), "  # noqa: S608
        "SUM(cache_write_tokens), SUM(output_tokens), SUM(reasoning_tokens) "
        f"FROM usage_hourly WHERE {where} AND hour_start >= ? GROUP BY provider, model, hour_start / {DAY_S}",
        (*params, since_s),
    )
    total = 0.0
    for provider, model, day, *tokens in rows:
        counters = Counters(0, 0, *(int(t or 0) for t in tokens))
        cost = prices.cost(str(provider), str(model), datetime.fromtimestamp(int(day) * DAY_S, UTC).date(), counters)
        total += cost or 0.0
    return total


@dataclass(frozen=True, slots=True)
class Admitted:
    amount_usd: float
    recorded: bool
    """Whether a reservation row was written (there was a block budget or a cap to count the call against)."""


@dataclass(frozen=True, slots=True)
class Refused:
    status: BudgetStatus
    needed_usd: float | None
    """None: the model has no price."""

    def message(self, provider: str, model: str) -> str:
        status = self.status
        budget = status.budget
        head = f"budget {budget.scope} ({budget.period.value}, block) limit ${budget.limit_usd:.6f}"
        tail = (f"spent ${status.spent_usd:.6f}, reserved ${status.reserved_usd:.6f}, "
                f"resets {status.resets_at.isoformat()}")
        if self.needed_usd is None:
            return f"{head}: model {provider}/{model} has no price in the price table, so a block budget " \
                   f"cannot admit it; {tail}"
        return f"{head}: this call may cost up to ${self.needed_usd:.6f}, which does not fit; {tail}"


@dataclass(frozen=True, slots=True)
class AtCap:
    budget: Budget
    in_flight: int


Reservation = Admitted | Refused | AtCap


def reserve(
    sql: Sql, *, call_id: str, workspace_id: str, automation_id: str | None, cost_usd: float | None,
    holder: str, lease_s: float, prices: PriceTable, now: datetime,
) -> Reservation:
    """In the caller's write transaction: admit the call against every budget and cap that applies, or not."""
    budgets = _locked_budgets(sql, workspace_id, automation_id)
    blocking = [b for b in budgets if b.blocks]
    capped = [b for b in budgets if b.max_in_flight is not None]
    if not blocking and not capped:
        return Admitted(0.0, recorded=False)
    for budget in capped:
        status = budget_status(sql, budget, prices, now)
        assert budget.max_in_flight is not None
        if status.in_flight >= budget.max_in_flight:
            return AtCap(budget, status.in_flight)
    for budget in blocking:
        status = budget_status(sql, budget, prices, now)
        assert budget.limit_usd is not None
        if cost_usd is None or status.spent_usd + status.reserved_usd + cost_usd > budget.limit_usd:
            return Refused(status, cost_usd)
    amount = cost_usd if blocking and cost_usd is not None else 0.0
    now_us = us(now)
    sql.execute(
        "INSERT INTO budget_reservations (call_id, workspace_id, automation_id, amount_usd, state, holder, "
        "created_at_us, lease_until_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (call_id, workspace_id, automation_id or "", amount, LIVE, holder, now_us, now_us + int(lease_s * 1e6)),
    )
    return Admitted(amount, recorded=True)


def settle(sql: Sql, call_id: str, amount_usd: float) -> None:
    """The call is over and may have been billed: its reservation becomes ``amount_usd`` of spend (until its
    usage event arrives and counts instead)."""
    sql.execute("UPDATE budget_reservations SET amount_usd = ?, state = ? WHERE call_id = ?",
                (amount_usd, SETTLED, call_id))


def release(sql: Sql, call_id: str) -> None:
    """No call reached the provider: nothing to count."""
    sql.execute("DELETE FROM budget_reservations WHERE call_id = ?", (call_id,))


def renew(sql: Sql, call_ids: Sequence[str], until: datetime) -> None:
    """A live worker keeps the leases of its calls still running."""
    for start in range(0, len(call_ids), 500):
        chunk = list(call_ids[start:start + 500])
        marks = ", ".join("?" * len(chunk))
        sql.execute(f"UPDATE budget_reservations SET lease_until_us = ? "  # noqa: S608 - placeholders only
                    f"WHERE state = ? AND call_id IN ({marks})", (us(until), LIVE, *chunk))


def prune(sql: Sql, before: datetime) -> int:
    """Deletes reservations that no longer count: their usage event arrived (it counts instead), or they were
    made before ``before`` (a period that is over). Keeps the reads of ``budget_status`` short."""
    gone = sql.execute("DELETE FROM budget_reservations WHERE EXISTS "
                       "(SELECT 1 FROM usage_events u WHERE u.event_id = budget_reservations.call_id)")
    return gone + sql.execute("DELETE FROM budget_reservations WHERE created_at_us < ?", (us(before),))


def statuses(sql: Sql, budgets: Sequence[Budget], prices: PriceTable, now: datetime) -> list[BudgetStatus]:
    return [budget_status(sql, budget, prices, now) for budget in budgets]
