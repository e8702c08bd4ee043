"""Two workspaces' usage around today (UTC), and an anomaly, for the page's tests and screenshots.

``acme`` has three automations on two models: calls early today, on each of the last six days and in the
seven days before them (the previous period of "last 7 days"), two calls yesterday that never reported usage
(unreported calls), and a spike alert raised now. ``globex`` has
an automation named ``globex-secret-bot`` that must never appear on a page opened with acme's token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from schemas.models import Provider, ProviderCallRecord
from tests.aggregator.helpers import usage
from worker.aggregator.alerts import AlertKind, make_alert
from worker.aggregator.store import Store

GLOBEX_SECRET = "globex-secret-bot"
SPIKE_MESSAGE = "acme: hourly cost 41.5 USD is 6.2 x the usual"


@dataclass(frozen=True)
class Seeded:
    today: datetime
    events: int


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
    return Seeded(today, len(events))
