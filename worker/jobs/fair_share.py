"""Fair share between workspaces: the jobs a worker holds run round-robin by workspace, not in queue order.

A worker takes up to ``BYOK_PREFETCH + BYOK_SORT_WINDOW`` unacked jobs from each of ``byok.jobs`` and
``byok.jobs.overflow`` and runs ``BYOK_PREFETCH`` of them at a time (the run slots), the next one taken from
the workspaces with jobs waiting here in turn. A workspace that already has ``hold`` jobs waiting here has its
next job from ``byok.jobs`` moved to ``byok.jobs.overflow`` (published, confirmed, then acked). That keeps
``byok.jobs`` short while one workspace floods it, so the jobs of every other workspace behind the flood reach
a worker within moments instead of after the whole backlog. Jobs from the overflow queue are never moved again.

A job whose key is not in the unseal cache waits for Vault in ``KeyWarmup``, holding no run slot. Once the key
is in, the workspace's first such job waits in the cold lane (its others are warm): up to ``cold_slots`` cold
jobs take a free slot before warm ones, and no more run. A thousand new workspaces get a steady share, and a
warm workspace's next job the next slot freed, not a turn among them. With ``cold_hold`` cold jobs waiting
here, the next cold one from ``byok.jobs`` is moved to the overflow queue, which keeps ``byok.jobs`` flowing
when many new workspaces arrive at once.

Nothing here acks a job it did not move: a job still waiting when the connection is lost or the worker stops
is left unacked, and the broker delivers it again.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractContextManager, nullcontext
from functools import partial
from typing import Any

import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.message import IncomingMessage
from aiormq.abc import DeliveredMessage

from worker.keys.warmup import KeyWarmup, SealedKeyRef, sealed_key_ref

log = structlog.get_logger("byok.worker")

UNKNOWN_WORKSPACE = ""
"""Where a body with no readable ``workspace_id`` waits its turn (the run dead-letters it)."""

StartJob = Callable[[AbstractIncomingMessage], "asyncio.Task[None]"]
MoveJob = Callable[[AbstractIncomingMessage], Awaitable[None]]
MayMove = Callable[[AbstractIncomingMessage], bool]
Weight = Callable[[str], int]
"""A workspace's turns in each round (``BudgetGuard.weight``)."""
TraceContext = Callable[[Mapping[str, Any]], AbstractContextManager[None]]
"""Makes a job's trace current from its headers while its key is unsealed (``Tracing.continued``)."""


def job_fields(body: bytes) -> Any:
    """The parsed body, or None: only to find its workspace and key (the run validates it)."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return None


def workspace_of(raw: Any) -> str:
    workspace = raw.get("workspace_id") if isinstance(raw, dict) else None
    return workspace if isinstance(workspace, str) else UNKNOWN_WORKSPACE


def _equal(_workspace: str) -> int:
    return 1


class _Lane:
    """Jobs waiting for a run slot, taken round-robin by workspace: ``weight(workspace)`` jobs a turn."""

    def __init__(self, weight: Weight) -> None:
        self._weight = weight
        self._waiting: dict[str, deque[AbstractIncomingMessage]] = {}
        self._turns: deque[str] = deque()
        """Workspaces with jobs waiting, in the order they get their next slot."""
        self._taken: dict[str, int] = {}
        """Jobs the workspace at the front has taken in its current turn, when it may take more."""

    def __bool__(self) -> bool:
        return bool(self._turns)

    def __contains__(self, workspace: str) -> bool:
        return workspace in self._waiting

    def add(self, message: AbstractIncomingMessage, workspace: str) -> None:
        waiting = self._waiting.get(workspace)
        if waiting is None:
            waiting = self._waiting[workspace] = deque()
            self._turns.append(workspace)
        waiting.append(message)

    def take(self) -> tuple[AbstractIncomingMessage, str]:
        workspace = self._turns[0]
        waiting = self._waiting[workspace]
        message = waiting.popleft()
        taken = self._taken.pop(workspace, 0) + 1
        if not waiting:
            self._turns.popleft()
            del self._waiting[workspace]
        elif taken < self._weight(workspace):
            self._taken[workspace] = taken  # its turn goes on
        else:
            self._turns.rotate(-1)
        return message, workspace

    def clear(self) -> None:
        self._waiting.clear()
        self._turns.clear()
        self._taken.clear()


class FairShare:
    """``slots`` jobs running at most; ``hold`` jobs of one workspace waiting here before the next is moved
    (None: never moved). ``move`` publishes a job to the overflow queue and acks it; ``may_move`` says whether a
    delivery may be moved at all (not a redelivery, not a job back from a delay queue). ``cold_slots``: cold jobs
    (the first of a workspace whose key had to be unsealed) running at most, ahead of warm ones for a free slot
    (None: no cold lane, they wait in turn with the others); ``cold_hold``: cold jobs waiting here before the
    next cold one from ``byok.jobs`` is moved (None: never). ``weight``: a workspace's jobs per turn (default 1)."""

    def __init__(self, start: StartJob, *, slots: int, hold: int | None, move: MoveJob, may_move: MayMove,
                 warmup: KeyWarmup | None = None, allowed_hosts: frozenset[str] | None = None,
                 trace_context: TraceContext | None = None, cold_slots: int | None = None,
                 cold_hold: int | None = None, weight: Weight = _equal) -> None:
        self._start = start
        self._slots = slots
        self._hold = hold
        self._move = move
        self._may_move = may_move
        self._warmup = warmup
        self._allowed_hosts = allowed_hosts
        self._trace_context = trace_context
        self._cold_slots = cold_slots
        self._cold_hold = cold_hold
        self._warm = _Lane(weight)
        self._cold = _Lane(weight)
        self._held: defaultdict[str, int] = defaultdict(int)
        """Jobs per workspace waiting here or for their key (not running)."""
        self.cold_waiting = 0
        """Cold jobs waiting here or for their key (not running)."""
        self.running = 0
        self._cold_running: set[str] = set()
        """Workspaces with their cold job running (one each at most: the cold lane holds one per workspace)."""
        self.moved = 0
        self._warming_tasks: set[asyncio.Task[None]] = set()
        self._moving_tasks: set[asyncio.Task[None]] = set()
        self._stopped = False

    # -- aiormq consumer callbacks -----------------------------------------------------------------------------

    async def on_jobs_delivery(self, delivered: DeliveredMessage) -> None:
        self.offer(IncomingMessage(delivered, no_ack=False), movable=True)

    async def on_overflow_delivery(self, delivered: DeliveredMessage) -> None:
        self.offer(IncomingMessage(delivered, no_ack=False), movable=False)

    # -- the window -----------------------------------------------------------------------------------------

    @property
    def waiting(self) -> int:
        return sum(self._held.values())

    @property
    def waiting_workspaces(self) -> int:
        return len(self._held)

    @property
    def cold_running(self) -> int:
        return len(self._cold_running)

    def offer(self, message: AbstractIncomingMessage, *, movable: bool) -> None:
        if self._stopped:
            return  # stopping: left unacked, delivered again elsewhere
        raw = job_fields(message.body)
        workspace = workspace_of(raw)
        ref = sealed_key_ref(raw, self._allowed_hosts) if self._warmup is not None else None
        cold = ref is not None and self._warmup is not None and self._warmup.is_cold(ref)
        over_hold = self._hold is not None and self._held.get(workspace, 0) >= self._hold
        over_cold_hold = cold and self._cold_hold is not None and self.cold_waiting >= self._cold_hold
        if movable and (over_hold or over_cold_hold) and self._may_move(message):
            self._side_task(self._moving(message, workspace, ref), self._moving_tasks)
            return
        self._keep(message, workspace, ref)

    def _keep(self, message: AbstractIncomingMessage, workspace: str, ref: SealedKeyRef | None) -> None:
        self._held[workspace] += 1
        if ref is not None and self._warmup is not None and self._warmup.is_cold(ref):
            if self._cold_slots is not None:
                self.cold_waiting += 1
            self._side_task(self._warming(self._warmup, ref, message, workspace), self._warming_tasks)
            return
        self._warm.add(message, workspace)
        self._dispatch()

    def _dispatch(self) -> None:
        # Cold jobs take a free slot first while fewer than ``cold_slots`` run, and never more: with more, a
        # worker busy with a burst of new workspaces runs every warm job slower (its CPU is shared by more jobs
        # at once) and drains the jobs queue, where warm jobs may wait behind the burst, more slowly.
        while self.running < self._slots and not self._stopped:
            cold = (bool(self._cold) and self._cold_slots is not None and self.cold_running < self._cold_slots)
            if not cold and not self._warm:
                return
            message, workspace = (self._cold if cold else self._warm).take()
            self._release(workspace)
            self.running += 1
            if cold:
                self.cold_waiting -= 1
                self._cold_running.add(workspace)
                self._start(message).add_done_callback(partial(self._cold_finished, workspace))
            else:
                self._start(message).add_done_callback(self._finished)

    def _finished(self, _task: asyncio.Task[None]) -> None:
        self.running -= 1
        self._dispatch()

    def _cold_finished(self, workspace: str, task: asyncio.Task[None]) -> None:
        self._cold_running.discard(workspace)
        self._finished(task)

    def _release(self, workspace: str) -> None:
        left = self._held[workspace] - 1
        if left > 0:
            self._held[workspace] = left
        else:
            del self._held[workspace]

    async def _warming(self, warmup: KeyWarmup, ref: SealedKeyRef, message: AbstractIncomingMessage,
                       workspace: str) -> None:
        # Cancelled only by ``forget`` and ``stop``, which drop every count themselves.
        with nullcontext() if self._trace_context is None else self._trace_context(message.headers or {}):
            await warmup.warm(ref)
        # One job per workspace in the cold lane: once the key is in, the workspace's other jobs are warm.
        if self._cold_slots is None:
            self._warm.add(message, workspace)
        elif workspace in self._cold or workspace in self._cold_running:
            self.cold_waiting -= 1
            self._warm.add(message, workspace)
        else:
            self._cold.add(message, workspace)
        self._dispatch()

    async def _moving(self, message: AbstractIncomingMessage, workspace: str, ref: SealedKeyRef | None) -> None:
        try:
            await self._move(message)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the job is not lost: it runs here, or comes back
            log.warning("job.move_failed", message_id=message.message_id, error=type(exc).__name__,
                        note="kept in this worker's window")
            if not self._stopped:
                self._keep(message, workspace, ref)
            return
        self.moved += 1

    @staticmethod
    def _side_task(work: Coroutine[Any, Any, None], tasks: set[asyncio.Task[None]]) -> None:
        task = asyncio.create_task(work)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    # -- connection loss and shutdown ---------------------------------------------------------------------------

    def forget(self) -> None:
        """The connection is gone: the jobs waiting here went with it (the broker delivers them again)."""
        self._drop_waiting()
        for task in (*self._warming_tasks, *self._moving_tasks):
            task.cancel()

    async def stop(self) -> None:
        """No job starts from now on. Moves under way finish (a move cut between its confirmed publish and the
        ack would leave the job in both queues); key warm-ups are cancelled."""
        self._stopped = True
        self._drop_waiting()
        for task in self._warming_tasks:
            task.cancel()
        pending = [*self._warming_tasks, *self._moving_tasks]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    def _drop_waiting(self) -> None:
        self._warm.clear()
        self._cold.clear()
        self._held.clear()
        self.cold_waiting = 0
