"""The pipeline's call hook that enforces budgets and in-flight caps before every provider call.

Which workspaces have a budget or cap is a cached view of the ``budgets`` table, read again every
``refresh_s``: a workspace without one costs no store round trip, and a change reaches this worker within
``refresh_s``. For the others, one write transaction reserves the call's worst-case cost (``ledger.reserve``);
after the call the reservation is settled to the actual cost, or released when no call reached the provider.
A live worker renews the leases of its running calls; a dead worker's expire and count as spent.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import partial
from typing import Protocol

import structlog

from schemas.models import CompletionJob, ErrorCode
from worker.aggregator.db import Database, StoreError, parse_store_url
from worker.aggregator.migrations import migrate
from worker.aggregator.pricing import PriceTable
from worker.aggregator.records import Counters
from worker.budgets import ledger
from worker.budgets.estimate import estimate
from worker.budgets.rules import Budget
from worker.failures import CallDeferred, InvalidJob, JobFailure
from worker.providers.base import ProviderReply

log = structlog.get_logger("byok.budgets")

CAP_WAIT_S = 1.0
STORE_WAIT_S = 5.0
PRUNE_EVERY_S = 60.0
KEEP_S = 35 * 86_400
"""Reservations older than the longest period (a month) and a few days' margin no longer count anywhere."""


class FailMode(StrEnum):
    CLOSED = "closed"
    OPEN = "open"


class GuardedCall(Protocol):
    """What the guard reads of the pipeline's ``ProviderCall`` (``worker.jobs.call_hooks``, a layer above)."""

    @property
    def job(self) -> CompletionJob: ...

    @property
    def call_id(self) -> str: ...

    @property
    def reply(self) -> ProviderReply | None: ...


class BudgetGuard:
    def __init__(
        self, store_url: str, prices: PriceTable, *, lease_s: float = 60.0, refresh_s: float = 2.0,
        fail_mode: FailMode = FailMode.CLOSED,
    ) -> None:
        self._db = Database(parse_store_url(store_url), create=True, name="budgets")
        self._prices = prices
        self._lease_s = lease_s
        self._refresh_s = refresh_s
        self._fail_mode = fail_mode
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._view: Mapping[str, tuple[Budget, ...]] | None = None
        self._weights: dict[str, int] = {}
        self._migrated = False
        self._pruned_at = 0.0
        self._live: dict[str, float] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.round_trips = 0
        """Reservations asked of the store (a test reads it: unbudgeted workspaces make none)."""

    async def start(self) -> None:
        await self.refresh()
        self._tasks = [asyncio.create_task(self._every(self._refresh_s, self.refresh)),
                       asyncio.create_task(self._every(self._lease_s / 3, self._renew))]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._db.close()

    async def _every(self, period_s: float, work: object) -> None:
        assert callable(work)
        while True:
            await asyncio.sleep(period_s)
            try:
                await work()
            except Exception:
                log.exception("budgets.background_failed", work=getattr(work, "__name__", "?"))

    async def refresh(self) -> None:
        """Reads which workspaces have budgets; keeps the last view when the store cannot be read."""
        try:
            if not self._migrated:
                await self._db.run(migrate, write=True)
                self._migrated = True
            budgets = await self._db.run(ledger.all_budgets, write=False)
        except StoreError as exc:
            log.warning("budgets.refresh_failed", error=str(exc), fail_mode=self._fail_mode.value)
            return
        view: dict[str, tuple[Budget, ...]] = {}
        for budget in budgets:
            view[budget.workspace_id] = (*view.get(budget.workspace_id, ()), budget)
        self._view = view
        self._weights = {b.workspace_id: b.weight for b in budgets if b.weight is not None}
        if view and time.monotonic() - self._pruned_at >= PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            before = datetime.now(UTC) - timedelta(seconds=KEEP_S)
            try:
                await self._db.run(partial(ledger.prune, before=before), write=True)
            except StoreError as exc:
                log.warning("budgets.prune_failed", error=str(exc))

    async def _renew(self) -> None:
        if not self._live:
            return
        until = datetime.now(UTC) + timedelta(seconds=self._lease_s)
        try:
            await self._db.run(partial(ledger.renew, call_ids=list(self._live), until=until), write=True)
        except StoreError as exc:
            log.warning("budgets.renew_failed", error=str(exc), calls=len(self._live))

    def weight(self, workspace_id: str) -> int:
        """The workspace's turns in each round of fair share (its budget's weight; 1 without one)."""
        return self._weights.get(workspace_id, 1)

    def _enforced(self, workspace_id: str, automation_id: str | None) -> bool | None:
        """Whether a block budget or a cap applies; None when the view was never read."""
        if self._view is None:
            return None
        return any((b.blocks or b.max_in_flight is not None) and b.applies_to(workspace_id, automation_id)
                   for b in self._view.get(workspace_id, ()))

    def hook(self, call: GuardedCall) -> AbstractAsyncContextManager[None]:
        return self._guarded(call)

    async def _admit(self, call: GuardedCall) -> float | None:
        """The amount reserved for the call; None when nothing was (nothing applies, or the store failed open).
        Raises ``JobFailure`` (budget exceeded) or ``CallDeferred`` (at the cap, or the store failed closed)."""
        job = call.job
        enforced = self._enforced(job.workspace_id, job.automation_id)
        if enforced is False:
            return None
        if enforced is None:
            if self._fail_mode is FailMode.OPEN:
                return None
            raise CallDeferred("budgets could not be read from the store yet", delay_s=STORE_WAIT_S)
        cost = estimate(job, self._prices).cost_usd
        self.round_trips += 1
        try:
            outcome = await self._db.run(partial(
                ledger.reserve, call_id=call.call_id, workspace_id=job.workspace_id,
                automation_id=job.automation_id, cost_usd=cost, holder=self.holder, lease_s=self._lease_s,
                prices=self._prices, now=datetime.now(UTC)), write=True)
        except StoreError as exc:
            log.warning("budgets.store_unreachable", error=str(exc), fail_mode=self._fail_mode.value)
            if self._fail_mode is FailMode.OPEN:
                return None
            raise CallDeferred("the budget store is unreachable", delay_s=STORE_WAIT_S) from None
        match outcome:
            case ledger.Refused():
                raise JobFailure(ErrorCode.BUDGET_EXCEEDED, outcome.message(job.model.provider.value, job.model.name))
            case ledger.AtCap(budget, in_flight):
                raise CallDeferred(f"workspace {budget.scope} has {in_flight} calls in flight, its cap is "
                                   f"{budget.max_in_flight}", delay_s=CAP_WAIT_S)
            case ledger.Admitted(amount, recorded):
                return amount if recorded else None

    @asynccontextmanager
    async def _guarded(self, call: GuardedCall) -> AsyncIterator[None]:
        amount = await self._admit(call)
        if amount is None:
            yield
            return
        job = call.job
        self._live[call.call_id] = amount
        try:
            yield
        except JobFailure as failure:
            self._live.pop(call.call_id, None)
            if isinstance(failure, InvalidJob) or failure.provider_status is not None:
                await self._finish(ledger.release, call.call_id)  # refused before sending, or answered an error
            else:
                await self._finish(ledger.settle, call.call_id, amount)  # may have been billed: keep it
            raise
        except BaseException:
            # Cancelled (shutdown) or unexpected: no longer renewed, so its lease expires into spend.
            self._live.pop(call.call_id, None)
            raise
        self._live.pop(call.call_id, None)
        reply = call.reply
        actual = amount
        if reply is not None and reply.usage is not None:
            priced = self._prices.cost(job.model.provider.value, job.model.name, datetime.now(UTC).date(),
                                       Counters(0, 0, **reply.usage.model_dump()))
            actual = priced if priced is not None else amount
        await self._finish(ledger.settle, call.call_id, actual)

    async def _finish(self, step: object, call_id: str, *args: float) -> None:
        assert callable(step)
        try:
            await self._db.run(lambda sql: step(sql, call_id, *args), write=True)
        except StoreError as exc:
            # Left live: its lease expires and it counts as spent at the reserved amount (never less).
            log.warning("budgets.settle_failed", error=str(exc))


__all__ = ["BudgetGuard", "FailMode", "GuardedCall"]
