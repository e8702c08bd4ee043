"""Two workspaces' usage around today (UTC), and an anomaly, for the page's tests and screenshots.

``acme`` has three automations on two models: calls early today, on each of the last six days and in the
seven days before them (the previous period of "last 7 days"), two calls yesterday that never reported usage
(unreported calls), and a spike alert raised now. ``globex`` has
an automation named ``globex-secret-bot`` that must never appear on a page opened with acme's token.

For the budgets and drivers (``seed_drivers``, ``seed_budgets``): an agent automation of acme whose calls
carry their shape (a system prompt of 3/4 of the text input, repeated) and an agent-run tag (runs of 2, 5
and 3 calls), most of them reading the provider's cache; budgets set through the aggregator's own
``PUT /v1/workspaces/acme/budgets``; and calls held in flight through the worker's own ``BudgetGuard``, which
reserves their worst case as it does before a real provider call.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp

from schemas.models import CompletionJob, Provider, ProviderCallRecord, UsageEvent, UsageShape
from tests.aggregator.helpers import usage
from worker.aggregator.alerts import AlertKind, make_alert
from worker.aggregator.pricing import PriceTable
from worker.aggregator.store import Store
from worker.budgets.estimate import estimate
from worker.budgets.guard import BudgetGuard
from worker.providers.base import ProviderReply

GLOBEX_SECRET = "globex-secret-bot"
SPIKE_MESSAGE = "acme: hourly cost 41.5 USD is 6.2 x the usual"


@dataclass(frozen=True)
class Seeded:
    today: datetime
    events: int
    usage: tuple[UsageEvent, ...] = ()


async def seed_workspaces(store: Store) -> Seeded:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    events = []
    # Today: in the first hours of the day, so they are inside "today" whatever the time now.
    for hour, automation, model, tokens in (
        (0, "support-triage", "gpt-4o-mini", (120_000, 20_000)),
        (1, "support-triage", "gpt-4o-mini", (90_000, 15_000)),
        (1, "weekly-report", "gpt-4o", (40_000, 12_000)),
        (2, "ticket-extractor", "gpt-4o", (60_000, 9_000)),
        (3, "weekly-report", "gpt-4o", (30_000, 6_000)),
    ):
        events.append(usage(today + timedelta(hours=hour, minutes=5), workspace="acme", automation=automation,
                            model=model, input_tokens=tokens[0], output_tokens=tokens[1],
                            cache_read_tokens=tokens[0] // 10))
    # The last six days and the seven before them, one model each day per automation.
    for days_ago in range(1, 14):
        day = today - timedelta(days=days_ago, hours=-10)
        scale = 1 + (days_ago % 4)
        events.append(usage(day, workspace="acme", automation="support-triage", model="gpt-4o-mini",
                            input_tokens=50_000 * scale, output_tokens=8_000 * scale, cache_read_tokens=5_000))
        events.append(usage(day + timedelta(hours=2), workspace="acme", automation="weekly-report", model="gpt-4o",
                            input_tokens=20_000 * scale, output_tokens=4_000 * scale, reasoning_tokens=500))
        if days_ago % 3 == 0:
            events.append(usage(day + timedelta(hours=4), workspace="acme", automation=None, model="gpt-4o",
                                input_tokens=10_000, output_tokens=2_000, cache_write_tokens=1_000))
    for hour in range(3):
        events.append(usage(today + timedelta(hours=hour, minutes=30), workspace="globex", automation=GLOBEX_SECRET,
                            model="gpt-4o", input_tokens=777_000, output_tokens=77_000))
    # Two calls that started yesterday and never reported usage (the worker died mid-call): unreported.
    yesterday = today - timedelta(hours=20)
    unreported = [
        ProviderCallRecord(call_id=f"lost-call-{n}", job_id=f"lost-job-{n}", workspace_id="acme",
                           automation_id="weekly-report", provider=Provider.OPENAI, model="gpt-4o",
                           started_at=yesterday + timedelta(minutes=n))
        for n in range(2)
    ]
    await store.ingest(events, calls=unreported)
    now = datetime.now(UTC)
    hour_start = now.replace(minute=0, second=0, microsecond=0)
    await store.add_alerts([make_alert(
        AlertKind.SPIKE, "acme", "automation:weekly-report", (hour_start, hour_start + timedelta(hours=1)),
        SPIKE_MESSAGE,
        {"metric": "cost_usd", "value": 41.5, "baseline_mean": 6.69, "factor": 3.0, "active_hours": 42},
    )])
    await store.add_alerts([make_alert(
        AlertKind.SPIKE, "globex", "workspace", (hour_start, hour_start + timedelta(hours=1)),
        f"globex: {GLOBEX_SECRET} spiked", {"metric": "tokens", "value": 2_500_000},
    )])
    return Seeded(today, len(events), tuple(events))


AGENT = "research-agent"
RUN_SIZES = {"run-a": 2, "run-b": 5, "run-c": 3}
AGENT_MODEL = "gpt-4o"
SYSTEM_FINGERPRINT = "5eed5eed5eed5eed"
SYSTEM_CHARS, INPUT_CHARS = 6_000, 8_000  # 3/4 of each call's text input is its system prompt
AGENT_INPUT = 2_000  # every input token of a call (plain + cache read)
AGENT_CACHED = 1_500  # read from the provider's cache by every call but the first of a run
AGENT_OUTPUT = 400


@dataclass(frozen=True)
class SeededDrivers:
    usage: tuple[UsageEvent, ...]


async def seed_drivers(store: Store, today: datetime) -> SeededDrivers:
    """``research-agent``'s agent runs early today, on gpt-4o, each call with its shape and run tag."""
    events = []
    minute = 0
    for run, size in RUN_SIZES.items():
        for step in range(size):
            cached = AGENT_CACHED if step else 0  # the first call of a run misses the cache
            minute += 7
            event = usage(today + timedelta(minutes=minute), workspace="acme", automation=AGENT, model=AGENT_MODEL,
                          input_tokens=AGENT_INPUT - cached, cache_read_tokens=cached, output_tokens=AGENT_OUTPUT)
            events.append(event.model_copy(update={
                "tags": {"agent_run": run, "step": str(step)},
                "shape": UsageShape(system_chars=SYSTEM_CHARS, input_chars=INPUT_CHARS, messages=2 + 2 * step,
                                    tools=3, images=0, system_fingerprint=SYSTEM_FINGERPRINT),
            }))
    await store.ingest(events)
    return SeededDrivers(tuple(events))


@dataclass(frozen=True)
class HeldCall:
    """A call admitted by the worker's budget guard and not finished: reserved, in flight."""

    job: CompletionJob
    call_id: str
    reply: ProviderReply | None = None


@dataclass(frozen=True)
class SeededBudgets:
    put: tuple[dict[str, Any], ...]
    """The bodies PUT to the API, one budget each."""
    held: tuple[HeldCall, ...]
    reserved_usd: dict[str, float] = field(default_factory=dict)
    """call_id -> the worst-case estimate of the call (``worker.budgets.estimate``): what the guard reserves."""
    set_at: datetime = field(default_factory=lambda: datetime.now(UTC))


BUDGETS: tuple[dict[str, Any], ...] = (
    {"limit_usd": 25.0, "period": "month", "action": "block", "weight": 2},
    {"automation_id": AGENT, "limit_usd": 0.25, "period": "day", "action": "block", "max_in_flight": 4},
    {"automation_id": "support-triage", "max_in_flight": 2},
)
IN_FLIGHT = ((AGENT, AGENT_MODEL, 2_000), ("support-triage", "gpt-4o-mini", 1_000))
"""The calls held in flight: (automation, model, max_tokens)."""


def _held_job(n: int, automation: str, model: str, max_tokens: int) -> CompletionJob:
    return CompletionJob.model_validate({
        "job_id": f"held-{n}", "workspace_id": "acme", "automation_id": automation,
        "model": {"provider": "openai", "name": model, "sealed_key": "vault:v1:bm90LWEta2V5"},
        "input": {"system": "You are a careful research agent.",
                  "messages": [{"role": "user", "content": "Summarise the open tickets."}],
                  "max_tokens": max_tokens},
    })


@asynccontextmanager
async def seed_budgets(url: str, token: str, store_url: str, prices: PriceTable) -> AsyncIterator[SeededBudgets]:
    """Sets ``BUDGETS`` through the API, then holds ``IN_FLIGHT``'s calls in the worker's guard until the end."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as session:
        for body in BUDGETS:
            async with session.put(f"{url}/v1/workspaces/acme/budgets", json=body) as response:
                assert response.status == 200, await response.text()
    guard = BudgetGuard(store_url, prices, lease_s=900.0)  # the lease outlasts the test: no renewal needed
    async with AsyncExitStack() as stack:
        stack.push_async_callback(guard.close)
        await guard.refresh()  # reads the budgets just set, as a worker does every few seconds
        held, reserved = [], {}
        for n, (automation, model, max_tokens) in enumerate(IN_FLIGHT):
            call = HeldCall(_held_job(n, automation, model, max_tokens), f"held-call-{n}")
            hook: AbstractAsyncContextManager[None] = guard.hook(call)
            await stack.enter_async_context(hook)  # admitted, reserved; settled when the stack closes
            held.append(call)
            cost = estimate(call.job, prices).cost_usd
            assert cost is not None
            reserved[call.call_id] = cost
        yield SeededBudgets(BUDGETS, tuple(held), reserved)
