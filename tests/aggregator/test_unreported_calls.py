"""Provider-call records and the ``unreported_calls`` of consumption, on SQLite and PostgreSQL.

A call record (``byok.provider_call.v1``) says a call may be billed; the usage event with the same id
completes it, a ``not_billed`` record closes it. What is neither, and started longer than the grace period
ago, is an unreported call: in its group's ``unreported_calls`` and in no token count.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import orjson
import pytest

from schemas.models import CallState, Provider, ProviderCallRecord
from tests.aggregator.helpers import at, usage
from worker.aggregator.consumption import consumption
from worker.aggregator.messages import parse_usage_queue
from worker.aggregator.pricing import PriceTable
from worker.aggregator.store import Store
from worker.cli.consumption import render_table

NOW = at("2025-03-02 12:00")
GRACE_S = 600.0


def call(
    call_id: str, started: datetime, *, workspace: str = "acme", provider: str = "openai",
    model: str = "gpt-4o-mini", automation: str | None = "a1", state: CallState = CallState.STARTED,
) -> ProviderCallRecord:
    return ProviderCallRecord(
        call_id=call_id, job_id=f"job-{call_id}", workspace_id=workspace, automation_id=automation,
        provider=Provider(provider), model=model, started_at=started, state=state,
        ended_at=started + timedelta(seconds=1) if state is CallState.NOT_BILLED else None,
    )


async def report(store: Store, prices: PriceTable, group_by: tuple[str, ...] = ("model",),
                 **kwargs: Any) -> dict[str, Any]:
    return await consumption(store, prices, "acme", group_by=group_by, unreported_grace_s=GRACE_S, now=NOW,
                             **kwargs)


async def test_a_call_without_usage_is_unreported_once_the_grace_period_passed(
    store: Store, prices: PriceTable
) -> None:
    old = NOW - timedelta(hours=1)
    recent = NOW - timedelta(seconds=GRACE_S / 2)
    await store.ingest([usage(old, event_id="c-reported", input_tokens=10)], calls=[
        call("c-reported", old),  # completed by its usage event
        call("c-open-1", old),
        call("c-open-2", old, automation="a2"),
        call("c-recent", recent),  # may still report: not yet unreported
        call("c-refused", old, state=CallState.NOT_BILLED),  # the provider answered an error: not billed
        call("c-other", old, workspace="other"),
    ])
    result = await report(store, prices)
    assert result["totals"]["requests"] == 1
    assert result["totals"]["unreported_calls"] == 2
    assert result["totals"]["input_tokens"] == 10, "an unreported call adds no tokens"
    assert [(r["model"], r["requests"], r["unreported_calls"]) for r in result["rows"]] == [("gpt-4o-mini", 1, 2)]
    by_automation = await report(store, prices, ("automation",))
    assert [(r["automation_id"], r["unreported_calls"]) for r in by_automation["rows"]] == [("a1", 1), ("a2", 1)]
    later = await consumption(store, prices, "acme", unreported_grace_s=GRACE_S, now=NOW + timedelta(seconds=GRACE_S))
    assert later["totals"]["unreported_calls"] == 3, "the recent call is unreported once its grace period is over"


async def test_a_late_usage_event_moves_its_call_to_requests_and_counts_once(
    store: Store, prices: PriceTable
) -> None:
    started = NOW - timedelta(hours=2)
    await store.ingest([], calls=[call("c-late", started), call("c-late", started)])  # a republished copy too
    before = await report(store, prices)
    assert (before["totals"]["requests"], before["totals"]["unreported_calls"]) == (0, 1)
    late = usage(started + timedelta(seconds=5), event_id="c-late", input_tokens=7, output_tokens=3)
    await store.ingest([late, late])
    await store.ingest([late])  # and redelivered later
    after = await report(store, prices)
    assert (after["totals"]["requests"], after["totals"]["unreported_calls"]) == (1, 0)
    assert (after["totals"]["input_tokens"], after["totals"]["output_tokens"]) == (7, 3)


async def test_a_not_billed_record_closes_its_call_whichever_arrives_first(store: Store, prices: PriceTable) -> None:
    started = NOW - timedelta(hours=1)
    await store.ingest([], calls=[call("c-closed-first", started, state=CallState.NOT_BILLED)])
    await store.ingest([], calls=[call("c-closed-first", started), call("c-started-first", started)])
    assert (await report(store, prices))["totals"]["unreported_calls"] == 1
    await store.ingest([], calls=[call("c-started-first", started, state=CallState.NOT_BILLED)])
    assert (await report(store, prices))["totals"]["unreported_calls"] == 0


async def test_unreported_calls_follow_the_range_by_when_they_started(store: Store, prices: PriceTable) -> None:
    await store.ingest([], calls=[call("c-day1", at("2025-03-01 10:00")), call("c-day2", at("2025-03-02 09:00"))])
    by_day = await report(store, prices, ("day",))
    assert [(r["day"], r["unreported_calls"]) for r in by_day["rows"]] == [("2025-03-01", 1), ("2025-03-02", 1)]
    since = await report(store, prices, since=at("2025-03-02 00:00"))
    assert since["totals"]["unreported_calls"] == 1
    until = await report(store, prices, until=at("2025-03-02 00:00"))
    assert until["totals"]["unreported_calls"] == 1


def test_the_usage_queue_parser_tells_call_records_from_usage_events() -> None:
    record = call("c-1", NOW)
    body = orjson.dumps(record.model_dump(mode="json", by_alias=True))
    assert parse_usage_queue(body) == record
    event = usage(NOW, event_id="c-1")
    assert parse_usage_queue(event.model_dump_json(by_alias=True).encode()) == event
    # A usage event naming the call schema in a tag is still a usage event.
    tagged = usage(NOW, event_id="c-2").model_copy(update={"tags": {"x": "byok.provider_call.v1"}})
    assert parse_usage_queue(tagged.model_dump_json(by_alias=True).encode()) == tagged


def test_a_call_record_carries_no_prompt_field() -> None:
    fields = set(ProviderCallRecord.model_fields)
    assert fields == {"schema_", "call_id", "job_id", "workspace_id", "automation_id", "provider", "model",
                      "started_at", "state", "ended_at"}
    with pytest.raises(ValueError, match="extra"):
        ProviderCallRecord.model_validate({**call("c", NOW).model_dump(by_alias=True), "input": "hello"})


async def test_the_consumption_table_shows_unreported_calls(store: Store, prices: PriceTable) -> None:
    await store.ingest([], calls=[call("c-t1", NOW - timedelta(hours=1)), call("c-t2", NOW - timedelta(hours=1))])
    table = render_table(await report(store, prices))
    lines = table.splitlines()
    assert lines[2].split()[2:4] == ["requests", "unreported"]
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[1:3] == ["0", "2"]
    assert "2 provider calls started and never reported usage" in table
