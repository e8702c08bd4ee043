"""``FairShare`` without a broker: fake messages, run slots the test frees one by one, a move the test can fail,
and a Vault the test answers. Which job starts when is the whole of its behaviour."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import SecretStr

from tests.waiting import wait_until
from worker.jobs.fair_share import UNKNOWN_WORKSPACE, FairShare
from worker.jobs.service import cold_slots
from worker.keys.unseal_cache import UnsealCache
from worker.keys.warmup import KeyWarmup, sealed_key_ref
from worker.settings import Settings

SEALED = "vault:v1:c2VhbGVk"


@dataclass
class Message:
    body: bytes
    message_id: str
    redelivered: bool = False
    headers: dict[str, Any] | None = None


def job(name: str, workspace: str, *, sealed: str | None = None) -> Message:
    model: dict[str, Any] = {"provider": "openai", "name": "gpt-4o-mini"}
    if sealed is not None:
        model["sealed_key"] = sealed
    return Message(orjson.dumps({"job_id": name, "workspace_id": workspace, "model": model}), name)


class Slots:
    """The run callback: records each started job and keeps it running until ``finish`` is called."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self._done: dict[str, asyncio.Event] = {}

    def start(self, message: Any) -> asyncio.Task[None]:
        self.started.append(message.message_id)
        done = self._done[message.message_id] = asyncio.Event()
        return asyncio.create_task(done.wait())

    async def finish(self, name: str) -> None:
        self._done[name].set()
        await asyncio.sleep(0)  # the task ends
        await asyncio.sleep(0)  # its done callback starts the next one


class Mover:
    def __init__(self, fail: bool = False) -> None:
        self.moved: list[str] = []
        self.fail = fail

    async def __call__(self, message: Any) -> None:
        if self.fail:
            raise ConnectionError("channel closed mid-publish")
        self.moved.append(message.message_id)


def share(slots: Slots, *, slots_n: int, hold: int | None = None, mover: Mover | None = None,
          warmup: KeyWarmup | None = None, cold_slots: int | None = None,
          cold_hold: int | None = None) -> FairShare:
    return FairShare(slots.start, slots=slots_n, hold=hold, move=mover or Mover(),
                     may_move=lambda m: not m.redelivered, warmup=warmup, cold_slots=cold_slots,
                     cold_hold=cold_hold)


async def test_the_next_slot_goes_to_the_workspaces_in_turn_not_in_queue_order() -> None:
    slots = Slots()
    fair = share(slots, slots_n=2)
    for i in range(1, 6):
        fair.offer(job(f"a{i}", "flood"), movable=False)
    fair.offer(job("b1", "quiet"), movable=False)
    fair.offer(job("c1", "other"), movable=False)
    assert slots.started == ["a1", "a2"]
    for name in ("a1", "a2", "a3", "b1"):
        await slots.finish(name)
    # a3 was next in line when b1 and c1 arrived; then b1 and c1 each get a turn before a4.
    assert slots.started == ["a1", "a2", "a3", "b1", "c1", "a4"]
    assert fair.running == 2
    assert fair.waiting == 1 and fair.waiting_workspaces == 1


async def test_a_workspace_of_weight_w_takes_w_slots_a_turn() -> None:
    slots = Slots()
    weights = {"heavy": 3}
    fair = FairShare(slots.start, slots=1, hold=None, move=Mover(), may_move=lambda m: True,
                     weight=lambda workspace: weights.get(workspace, 1))
    for i in range(1, 11):
        fair.offer(job(f"h{i}", "heavy"), movable=False)
        if i < 8:
            fair.offer(job(f"l{i}", "light"), movable=False)
    for _ in range(9):
        await slots.finish(slots.started[-1])
    # h1 ran alone (nothing else waited), so its turn ended with it.
    assert slots.started == ["h1", "l1", "h2", "h3", "h4", "l2", "h5", "h6", "h7", "l3"]
    weights["heavy"] = 1  # a changed weight (the budgets' refresh) applies from the next turn
    for _ in range(6):
        await slots.finish(slots.started[-1])
    assert slots.started[-6:] == ["h8", "l4", "h9", "l5", "h10", "l6"]


async def test_a_workspace_past_its_hold_has_its_jobs_from_the_jobs_queue_moved() -> None:
    slots, mover = Slots(), Mover()
    fair = share(slots, slots_n=1, hold=2, mover=mover)
    for i in range(1, 7):
        fair.offer(job(f"a{i}", "flood"), movable=True)
    fair.offer(job("b1", "quiet"), movable=True)
    await wait_until(lambda: len(mover.moved) == 3)
    # a1 runs, a2 and a3 wait (the hold), a4-a6 go to the overflow queue; b1 is held: under its own hold.
    assert slots.started == ["a1"]
    assert mover.moved == ["a4", "a5", "a6"]
    assert fair.moved == 3 and fair.waiting == 3
    await slots.finish("a1")
    assert slots.started == ["a1", "a2"]
    await slots.finish("a2")
    assert slots.started == ["a1", "a2", "b1"]


async def test_overflow_deliveries_and_redeliveries_are_never_moved() -> None:
    slots, mover = Slots(), Mover()
    fair = share(slots, slots_n=1, hold=1, mover=mover)
    fair.offer(job("a1", "flood"), movable=True)
    fair.offer(job("a2", "flood"), movable=True)
    fair.offer(job("a3", "flood"), movable=False)  # from the overflow queue
    again = job("a4", "flood")
    again.redelivered = True
    fair.offer(again, movable=True)
    await asyncio.sleep(0)
    assert mover.moved == [] and fair.waiting == 3


async def test_a_move_that_fails_keeps_the_job_here() -> None:
    slots = Slots()
    fair = share(slots, slots_n=1, hold=1, mover=Mover(fail=True))
    for name in ("a1", "a2", "a3"):
        fair.offer(job(name, "flood"), movable=True)
    await wait_until(lambda: fair.waiting == 2)
    assert fair.moved == 0
    await slots.finish("a1")
    await slots.finish("a2")
    assert slots.started == ["a1", "a2", "a3"]


async def test_a_body_without_a_workspace_waits_its_own_turn() -> None:
    slots = Slots()
    fair = share(slots, slots_n=1)
    fair.offer(job("a1", "ws"), movable=False)
    fair.offer(Message(b"not json", "broken"), movable=False)
    fair.offer(job("a2", "ws"), movable=False)
    await slots.finish("a1")
    assert slots.started == ["a1", "broken"]
    assert UNKNOWN_WORKSPACE == ""


class Vault:
    """A decryptor whose answers the test releases; counts its calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.release = asyncio.Event()

    async def decrypt(self, workspace_id: str, sealed: str, binding_b64: str) -> SecretStr:
        self.calls.append(workspace_id)
        await self.release.wait()
        return SecretStr("sk-test")


async def test_a_cold_key_waits_for_vault_without_a_run_slot() -> None:
    slots, vault = Slots(), Vault()
    cache = UnsealCache(ttl_s=60, max_entries=100)
    fair = share(slots, slots_n=1, warmup=KeyWarmup(cache, vault, concurrency=4))
    fair.offer(job("cold-1", "new", sealed=SEALED), movable=False)
    fair.offer(job("cold-2", "new", sealed=SEALED), movable=False)
    fair.offer(job("warm-1", "known"), movable=False)  # keyless here: nothing to unseal
    await wait_until(lambda: vault.calls == ["new"])
    assert slots.started == ["warm-1"], "the warm job took the only slot; the cold ones wait for Vault"
    vault.release.set()
    await wait_until(lambda: fair.waiting == 2 and not fair._warming_tasks)
    assert vault.calls == ["new"], "one Vault call for the key both jobs share"
    await slots.finish("warm-1")
    await slots.finish("cold-1")
    assert slots.started == ["warm-1", "cold-1", "cold-2"]


def warmup_with(vault: Vault) -> KeyWarmup:
    return KeyWarmup(UnsealCache(ttl_s=60, max_entries=1000), vault, concurrency=100)


async def test_cold_jobs_run_in_their_own_lane_at_most_cold_slots_at_a_time() -> None:
    slots, vault = Slots(), Vault()
    fair = share(slots, slots_n=4, warmup=warmup_with(vault), cold_slots=2)
    for i in range(1, 7):
        fair.offer(job(f"new{i}", f"new-ws-{i}", sealed=SEALED), movable=False)
    vault.release.set()
    await wait_until(lambda: not fair._warming_tasks)
    assert slots.started == ["new1", "new2"], "six new workspaces, two cold slots: two free slots stay for warm jobs"
    assert fair.cold_running == 2 and fair.cold_waiting == 4
    for i in range(1, 4):
        fair.offer(job(f"warm{i}", "known"), movable=False)  # keyless: nothing to unseal
    assert slots.started == ["new1", "new2", "warm1", "warm2"]
    await slots.finish("warm1")
    assert slots.started[-1] == "warm3", "a slot freed with the cold lane full goes to a warm job"
    await slots.finish("new1")
    assert slots.started[-1] == "new3"
    assert fair.cold_running == 2 and fair.cold_waiting == 3


async def test_only_a_new_workspaces_first_job_is_cold_its_others_are_warm_once_the_key_is_in() -> None:
    slots, vault = Slots(), Vault()
    fair = share(slots, slots_n=4, warmup=warmup_with(vault), cold_slots=1)
    for i in range(1, 6):
        fair.offer(job(f"batch{i}", "new-ws", sealed=SEALED), movable=False)
    vault.release.set()
    await wait_until(lambda: not fair._warming_tasks)
    assert vault.calls == ["new-ws"]
    assert slots.started == ["batch1", "batch2", "batch3", "batch4"], "one cold slot, yet every slot runs the batch"
    assert fair.cold_running == 1 and fair.cold_waiting == 0 and fair.waiting == 1


async def test_a_free_slot_goes_to_a_cold_job_first_while_the_lane_is_under_its_slots() -> None:
    slots, vault = Slots(), Vault()
    fair = share(slots, slots_n=2, warmup=warmup_with(vault), cold_slots=1)
    for name in ("w1", "w2", "w3", "w4"):
        fair.offer(job(name, "busy"), movable=False)
    fair.offer(job("new1", "new-ws", sealed=SEALED), movable=False)
    vault.release.set()
    await wait_until(lambda: not fair._warming_tasks)
    assert slots.started == ["w1", "w2"]
    await slots.finish("w1")
    assert slots.started == ["w1", "w2", "new1"], "the new workspace is not starved by a warm backlog"
    await slots.finish("w2")
    assert slots.started[-1] == "w3"
    assert fair.cold_running == 1 and fair.running == 2


async def test_cold_jobs_from_the_jobs_queue_beyond_the_cold_hold_are_moved() -> None:
    slots, vault, mover = Slots(), Vault(), Mover()
    fair = share(slots, slots_n=3, mover=mover, warmup=warmup_with(vault), cold_slots=2, cold_hold=3)
    for i in range(1, 6):
        fair.offer(job(f"new{i}", f"new-ws-{i}", sealed=SEALED), movable=True)
    fair.offer(job("new6", "new-ws-6", sealed=SEALED), movable=False)  # from the overflow queue: never moved
    fair.offer(job("warm1", "known"), movable=True)
    await wait_until(lambda: len(mover.moved) == 2)
    assert mover.moved == ["new4", "new5"], "three cold jobs wait for Vault here; the next two go to overflow"
    assert slots.started == ["warm1"], "a warm job behind them is not held up"
    vault.release.set()
    await wait_until(lambda: not fair._warming_tasks)
    assert slots.started == ["warm1", "new1", "new2"]
    assert fair.cold_waiting == 2 and fair.waiting == 2, "new3 and new6 wait for a slot"


async def test_without_a_cold_lane_unsealed_jobs_take_turns_with_the_others() -> None:
    slots, vault = Slots(), Vault()
    fair = share(slots, slots_n=2, warmup=warmup_with(vault))
    for i in range(1, 4):
        fair.offer(job(f"new{i}", f"new-ws-{i}", sealed=SEALED), movable=False)
    vault.release.set()
    await wait_until(lambda: not fair._warming_tasks)
    assert slots.started == ["new1", "new2"] and fair.cold_running == 0 and fair.cold_waiting == 0


async def test_a_key_is_unsealed_early_only_for_an_endpoint_the_run_would_call() -> None:
    allowed = frozenset({"llm.internal:443"})
    raw = orjson.loads(job("j", "ws", sealed=SEALED).body)
    assert sealed_key_ref(raw, None) is not None
    assert sealed_key_ref(raw, allowed) is None, "api.openai.com is not in the allow-list"
    raw["model"]["base_url"] = "http://10.0.0.5/v1"
    assert sealed_key_ref(raw, None) is None, "a key never goes over plain http off loopback"
    raw["model"] = {"provider": "ollama", "name": "llama3.2", "sealed_key": SEALED}
    assert sealed_key_ref(raw, None) is None, "keyless provider"


async def test_after_a_lost_connection_the_waiting_jobs_are_forgotten_and_new_ones_run() -> None:
    slots = Slots()
    fair = share(slots, slots_n=1)
    for name in ("a1", "a2", "a3"):
        fair.offer(job(name, "ws"), movable=False)
    fair.forget()
    assert fair.waiting == 0
    await slots.finish("a1")
    assert slots.started == ["a1"], "a2 and a3 belonged to the lost channel: the broker delivers them again"
    fair.offer(job("a2", "ws"), movable=False)
    assert slots.started == ["a1", "a2"]


async def test_stopping_starts_nothing_more_and_lets_a_move_finish() -> None:
    slots = Slots()
    gate = asyncio.Event()
    moved: list[str] = []

    async def slow_move(message: Any) -> None:
        await gate.wait()
        moved.append(message.message_id)

    fair = FairShare(slots.start, slots=1, hold=1, move=slow_move, may_move=lambda m: True)
    for name in ("a1", "a2", "a3"):
        fair.offer(job(name, "ws"), movable=True)
    stopping = asyncio.create_task(fair.stop())
    await asyncio.sleep(0.01)
    assert not stopping.done(), "a move under way is finished, not cut between its publish and its ack"
    gate.set()
    await stopping
    assert moved == ["a3"]
    await slots.finish("a1")
    fair.offer(job("a4", "ws"), movable=False)
    assert slots.started == ["a1"], "a2 waited, a4 arrived: neither starts once stopping"


def test_the_cold_lane_takes_at_most_half_the_run_slots_and_is_off_with_the_sort_window() -> None:
    assert cold_slots(Settings()) == 16
    assert cold_slots(Settings(prefetch=8)) == 4
    assert cold_slots(Settings(prefetch=1)) == 1
    assert cold_slots(Settings(cold_key_slots=0)) is None
    assert cold_slots(Settings(sort_window=0)) is None
