"""Each anomaly scenario raises exactly the expected alerts, once per window; quiet traffic raises none."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.models import ErrorCode
from tests.aggregator.helpers import Pipeline, at, failed, usage
from worker.aggregator.alerts import AlertKind, Severity
from worker.aggregator.anomalies import AnomalyRules
from worker.aggregator.detector import AnomalyDetector
from worker.aggregator.pricing import PriceTable
from worker.aggregator.settings import AggregatorSettings
from worker.aggregator.store import Store

START = at("2025-03-01 00:00")
HOUR = timedelta(hours=1)


def pipeline(store: Store, prices: PriceTable, **settings: Any) -> Pipeline:
    values: dict[str, Any] = {"spike_factor": 3.0, "spike_floor_tokens": 100_000, "spike_floor_cost_usd": 1000.0,
                              "spike_baseline_hours": 168, "spike_min_active_hours": 6, "monthly_budget_usd": None,
                              **settings}
    agg = AggregatorSettings(**values)
    return Pipeline(store, AnomalyDetector(store, AnomalyRules(agg, prices), agg))


async def steady_hours(p: Pipeline, hours: int, start: datetime = START) -> None:
    """Two automations, 6,000 tokens each an hour, one batch an hour."""
    for h in range(hours):
        when = start + h * HOUR + timedelta(minutes=10)
        await p.usage([usage(when, automation="a1", input_tokens=5000, output_tokens=1000),
                       usage(when, automation="a2", input_tokens=5000, output_tokens=1000)])


BUSINESS_HOURS = range(9, 15)  # 09:00-15:00 UTC


async def business_days(p: Pipeline, days: int, tokens: dict[str, int], start: datetime = START) -> None:
    """The same 6 busy hours every day (``tokens`` an hour per automation), nothing in between."""
    for d in range(days):
        for h in BUSINESS_HOURS:
            when = start + timedelta(days=d, hours=h, minutes=10)
            await p.usage([usage(when, automation=auto, input_tokens=n) for auto, n in tokens.items()])


async def test_quiet_traffic_raises_nothing(store: Store, prices: PriceTable) -> None:
    p = pipeline(store, prices, monthly_budget_usd=100.0)
    await steady_hours(p, 48)
    await p.failures([failed(START + timedelta(minutes=i * 10)) for i in range(4)])  # below the threshold
    assert await p.alerts() == []
    assert p.notified == 0


async def test_quiet_traffic_above_the_floors_with_jitter_raises_nothing(store: Store, prices: PriceTable) -> None:
    """Every hour of four days is above both floors, so only the ratio keeps them quiet."""
    p = pipeline(store, prices, spike_floor_cost_usd=0.05)
    jitter = random.Random(20250301)
    lowest = 10**9
    for h in range(4 * 24):
        when = START + h * HOUR + timedelta(minutes=20)
        a1, a2 = (round(base * jitter.uniform(0.8, 1.2)) for base in (150_000, 130_000))
        lowest = min(lowest, a1, a2)
        await p.usage([usage(when, automation="a1", input_tokens=a1 - 10_000, output_tokens=10_000),
                       usage(when, automation="a2", input_tokens=a2 - 10_000, output_tokens=10_000)])
    assert lowest > 100_000  # each automation, and so the workspace, is above the token floor every hour
    assert await p.alerts() == []


async def test_a_daily_business_hours_pattern_raises_nothing(store: Store, prices: PriceTable) -> None:
    """With the default spike settings: the zero-filled 24 h mean raised 60 alerts here (6 h x 5 days x 2 scopes)."""
    p = pipeline(store, prices, spike_floor_cost_usd=5.0)
    await business_days(p, 5, {"a1": 200_000})
    assert await p.alerts() == []


async def test_a_new_workspace_does_not_spike_before_it_has_a_history(store: Store, prices: PriceTable) -> None:
    p = pipeline(store, prices, spike_floor_cost_usd=0.10)
    first_hour = START + 9 * HOUR
    await p.usage([usage(first_hour + timedelta(minutes=m), workspace="fresh", input_tokens=2_000_000)
                   for m in (1, 2, 3)])  # 6M tokens, $6, in the very first hour of usage
    for h in range(1, 6):  # then 4x more each hour: fewer than 6 active hours before each, so no baseline yet
        await p.usage([usage(first_hour + h * HOUR, workspace="fresh", input_tokens=6_000_000 * 4**h)])
    assert await p.alerts("fresh") == []


async def test_a_spike_after_a_business_hours_history_alerts_once_per_scope_and_metric(
    store: Store, prices: PriceTable
) -> None:
    p = pipeline(store, prices, spike_floor_cost_usd=1.0)
    await business_days(p, 5, {"a1": 200_000, "a2": 150_000})
    assert await p.alerts() == []
    spike_hour = START + timedelta(days=5, hours=10)
    await p.usage([usage(spike_hour + timedelta(minutes=m), automation="a1", input_tokens=350_000)
                   for m in (5, 15, 25, 35)]  # a1 at 7x its active-hour mean; a2 as usual
                  + [usage(spike_hour + timedelta(minutes=40), automation="a2", input_tokens=150_000)])
    await p.usage([usage(spike_hour + timedelta(minutes=50), automation="a1", input_tokens=1_000_000)])  # same window
    await p.usage([usage(spike_hour + HOUR, automation=auto, input_tokens=n)  # the next hour is normal again
                   for auto, n in (("a1", 200_000), ("a2", 150_000))])
    alerts = await p.alerts()
    key = spike_hour.isoformat()
    assert [a.dedupe_key for a in alerts] == [
        f"spike:acme:*:cost_usd:{key}", f"spike:acme:*:tokens:{key}",
        f"spike:acme:a1:cost_usd:{key}", f"spike:acme:a1:tokens:{key}"]
    found = {(a.details["automation_id"], a.details["metric"]): a.details for a in alerts}
    # 30 active hours (6 a day for 5 days) in the 168 h window; gpt-4o-mini input is $1/M on day 1, $2/M after
    assert {k: (d["value"], d["baseline_mean"], d["active_hours"], d["ratio"]) for k, d in found.items()} == {
        (None, "tokens"): (1_550_000, 350_000, 30, 4.43),
        ("a1", "tokens"): (1_400_000, 200_000, 30, 7.0),
        (None, "cost_usd"): (pytest.approx(3.1), pytest.approx(0.63), 30, 4.92),
        ("a1", "cost_usd"): (pytest.approx(2.8), pytest.approx(0.36), 30, 7.78),
    }
    assert {(d["factor"], d["floor"], d["baseline_hours"], d["min_active_hours"]) for d in found.values()} == {
        (3.0, 100_000, 168, 6), (3.0, 1.0, 168, 6)}


def test_the_spike_baseline_defaults_to_a_week_and_needs_its_history_to_fit() -> None:
    defaults = AggregatorSettings()
    assert (defaults.spike_baseline_hours, defaults.spike_min_active_hours) == (168, 6)
    with pytest.raises(ValidationError, match="exceeds spike_baseline_hours"):
        AggregatorSettings(spike_baseline_hours=4, spike_min_active_hours=6)


async def test_a_token_spike_alerts_for_the_workspace_and_the_automation_once(
    store: Store, prices: PriceTable
) -> None:
    p = pipeline(store, prices)
    await steady_hours(p, 24)
    spike_hour = START + 24 * HOUR
    await p.usage([usage(spike_hour + timedelta(minutes=m), automation="a1", input_tokens=50_000)
                   for m in (1, 2, 3)]
                  + [usage(spike_hour + timedelta(minutes=4), automation="a2", input_tokens=5000,
                           output_tokens=1000)])
    alerts = await p.alerts()
    hour_key = spike_hour.isoformat()
    assert [a.dedupe_key for a in alerts] == [f"spike:acme:*:tokens:{hour_key}", f"spike:acme:a1:tokens:{hour_key}"]
    workspace, automation = alerts
    assert workspace.kind is AlertKind.SPIKE
    assert (workspace.details["value"], workspace.details["baseline_mean"], workspace.details["ratio"]) == (
        156_000, 12_000, 13.0)
    assert (automation.details["automation_id"], automation.details["value"], automation.details["baseline_mean"]) == (
        "a1", 150_000, 6_000)
    assert (workspace.window_start, workspace.window_end) == (spike_hour, spike_hour + HOUR)
    assert p.notified == 1

    # the spike goes on in the same hour: already reported for this window
    await p.usage([usage(spike_hour + timedelta(minutes=30), automation="a1", input_tokens=200_000)])
    assert len(await p.alerts()) == 2


async def test_a_cost_spike_alerts_on_cost(store: Store, prices: PriceTable) -> None:
    p = pipeline(store, prices, spike_floor_tokens=10**12, spike_floor_cost_usd=0.10)
    await steady_hours(p, 24)  # $0.014 an hour
    spike_hour = START + 24 * HOUR
    await p.usage([usage(spike_hour, provider="anthropic", model="claude-x", automation=None,
                         output_tokens=10_000)])  # $0.15
    alerts = [a for a in await p.alerts() if a.kind is AlertKind.SPIKE]
    assert [a.dedupe_key for a in alerts] == [f"spike:acme:*:cost_usd:{spike_hour.isoformat()}"]
    assert alerts[0].details["value"] == pytest.approx(0.15)
    assert alerts[0].details["baseline_mean"] == pytest.approx(0.014)


async def test_a_first_time_model_alerts_once(store: Store, prices: PriceTable) -> None:
    p = pipeline(store, prices)
    await steady_hours(p, 2)
    assert await p.alerts() == []  # the workspace's first model is its baseline
    new = usage(START + 3 * HOUR, provider="anthropic", model="claude-x", input_tokens=10)
    await p.usage([new])
    await p.usage([new])  # redelivered
    await p.usage([usage(START + 4 * HOUR, provider="anthropic", model="claude-x", input_tokens=10)])
    alerts = await p.alerts()
    assert [(a.kind, a.details["reason"], a.details["model"]) for a in alerts] == [
        (AlertKind.UNEXPECTED_MODEL, "first_use", "claude-x")
    ]
    assert alerts[0].details["event_id"] == new.event_id


async def test_a_new_workspace_with_two_models_alerts_for_the_later_one(store: Store, prices: PriceTable) -> None:
    p = pipeline(store, prices)
    await p.usage([usage(START + timedelta(minutes=5), model="gpt-4o-mini", workspace="fresh"),
                   usage(START + timedelta(minutes=1), model="ollama-first", provider="ollama", workspace="fresh")])
    alerts = await p.alerts("fresh")
    assert [a.details["model"] for a in alerts] == ["gpt-4o-mini"]


async def test_a_model_outside_the_allowlist_alerts_once_a_day(store: Store, prices: PriceTable) -> None:
    p = pipeline(store, prices, model_allowlist={"acme": ["gpt-4o*", "anthropic/claude-3*"], "*": ["*"]})
    await p.usage([usage(START, model="gpt-4o-mini")])
    await p.usage([usage(START + HOUR, model="gpt-4o-mini"), usage(START + HOUR, workspace="other", model="x")])
    assert await p.alerts() == []
    await p.usage([usage(START + 2 * HOUR, provider="anthropic", model="claude-3-5-haiku-latest")])
    assert [(a.details["reason"], a.details["model"]) for a in await p.alerts()] == [
        ("first_use", "claude-3-5-haiku-latest")]  # new, but allowed
    for minutes in (0, 30):
        await p.usage([usage(START + 3 * HOUR + timedelta(minutes=minutes), provider="anthropic", model="claude-x")])
    reasons = [(a.details["reason"], a.details["model"]) for a in await p.alerts()]
    assert sorted(reasons) == [("first_use", "claude-3-5-haiku-latest"), ("first_use", "claude-x"),
                               ("not_allowed", "claude-x")]


async def test_a_burst_of_401s_alerts_once_per_window(store: Store, prices: PriceTable) -> None:
    p = pipeline(store, prices, error_burst_threshold=5, error_burst_window_s=300)
    t0 = at("2025-03-01 10:00")
    first_four = [failed(t0 + timedelta(seconds=20 * i)) for i in range(4)]
    await p.failures(first_four)
    await p.failures(first_four)  # redelivered results are not counted twice
    await p.failures([failed(t0 + timedelta(seconds=30), ErrorCode.RATE_LIMITED) for _ in range(10)])
    assert await p.alerts() == []

    await p.failures([failed(t0 + timedelta(seconds=100))])
    await p.failures([failed(t0 + timedelta(seconds=110)), failed(t0 + timedelta(seconds=120))])
    alerts = await p.alerts()
    assert [a.dedupe_key for a in alerts] == [f"error_burst:acme:auth_failed:{t0.isoformat()}"]
    assert alerts[0].severity is Severity.CRITICAL
    assert (alerts[0].details["count"], alerts[0].details["threshold"], alerts[0].details["window_s"]) == (5, 5, 300)


async def test_quota_exhausted_bursts_alert_on_their_own(store: Store, prices: PriceTable) -> None:
    p = pipeline(store, prices, error_burst_threshold=3, error_burst_window_s=60)
    t0 = at("2025-03-01 10:00")
    await p.failures([failed(t0 + timedelta(seconds=s), ErrorCode.QUOTA_EXHAUSTED) for s in (1, 2, 3)])
    await p.failures([failed(t0 + timedelta(seconds=s), ErrorCode.AUTH_FAILED) for s in (1, 2)])
    assert [a.details["code"] for a in await p.alerts()] == ["quota_exhausted"]


async def test_budget_alerts_at_80_and_100_percent_once_a_month(store: Store, prices: PriceTable) -> None:
    p = pipeline(store, prices, budgets={"acme": 10.0}, spike_floor_tokens=10**12)
    day = at("2025-02-10 09:00")  # gpt-4o-mini input at $1 per million tokens in February
    await p.usage([usage(day, input_tokens=7_000_000)])  # $7: 70 %
    await p.usage([usage(day, workspace="other", input_tokens=50_000_000)])  # no budget for "other"
    assert await p.alerts() == []
    await p.usage([usage(day, input_tokens=1_500_000)])  # $8.50
    budget = [a for a in await p.alerts() if a.kind is AlertKind.BUDGET]
    assert [(a.details["threshold_ratio"], a.severity) for a in budget] == [(0.8, Severity.WARNING)]
    assert budget[0].details["spent_usd"] == pytest.approx(8.5)
    assert budget[0].details["month"] == "2025-02"
    await p.usage([usage(day, input_tokens=2_000_000)])  # $10.50
    await p.usage([usage(day, input_tokens=1_000_000)])  # $11.50: nothing new
    budget = sorted((a for a in await p.alerts() if a.kind is AlertKind.BUDGET), key=lambda a: a.created_at)
    assert [(a.details["threshold_ratio"], a.severity) for a in budget] == [
        (0.8, Severity.WARNING), (1.0, Severity.CRITICAL)]
    assert budget[1].details["spent_usd"] == pytest.approx(10.5)
    assert await p.alerts("other") == []
