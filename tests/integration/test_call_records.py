"""Provider-call records end to end: one per attempt, confirmed before the request, closed when not billed.

Calls the provider refused (401) or failed (500, retried) cost nothing and must not show as unreported; a
call that succeeded is completed by its usage event. Nothing of the prompt travels in a record.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from schemas.models import Provider
from tests.aggregator.helpers import aggregator_settings
from tests.broker import broker_tap, job_body, publish_jobs, running, running_aggregator
from tests.conftest import Sealer
from tests.waiting import wait_until
from worker.aggregator.consumption import consumption
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-test-CallRecords0123456789abcdef"
PROMPT = "a prompt that must never leave the worker in a call record"


@pytest.mark.timeout(120)
async def test_every_attempt_is_recorded_before_it_is_made_and_failed_attempts_are_closed(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer
) -> None:
    base_url = simulator.base_url(Provider.OPENAI)
    sealed = seal("ws-rec", KEY, Provider.OPENAI, base_url)

    def model(name: str) -> dict[str, Any]:
        return {"provider": "openai", "name": name, "base_url": base_url, "sealed_key": sealed}

    jobs = {"ok": "gpt-4o-mini", "refused": "sim-auth", "broken": "sim-error", "flaky": "sim-flaky-1"}
    own = settings.model_copy(update={"max_attempts": 2})
    agg = aggregator_settings(settings, unreported_grace_s=0.0)
    async with (broker_tap(settings, copies=True) as tap, running_aggregator(agg) as aggregator,
                running(Worker(own))):
        await publish_jobs(settings, [job_body(job_id, "ws-rec", model(name), content=PROMPT)
                                      for job_id, name in jobs.items()])
        await tap.wait_for(lambda: len(tap.results) == len(jobs), timeout_s=60)
        calls = len(simulator.ledger.calls)

        async def settled() -> dict[str, Any] | None:
            totals = (await consumption(aggregator.store, aggregator.prices, "ws-rec", unreported_grace_s=0.0))[
                "totals"]
            # Every call record reaches the store too (a closing record may come after the usage events): until
            # then an error answer's call still looks open. A call left open for good times this wait out.
            done = totals["requests"] == len(simulator.ledger.billed()) and totals["unreported_calls"] == 0
            return dict(totals) if done else None

        await tap.wait_for(lambda: len(tap.calls) >= calls + 3)
        totals = await wait_until(settled, timeout=30, what="the usage events and call records stored")
    records = [c.json for c in tap.calls]
    started = Counter(r["job_id"] for r in records if r["state"] == "started")
    closed = Counter(r["job_id"] for r in records if r["state"] == "not_billed")
    print(f"\n[call records] calls={calls} billed={len(simulator.ledger.billed())} started={dict(started)} "
          f"not_billed={dict(closed)} requests={totals['requests']} unreported={totals['unreported_calls']}")
    assert sum(started.values()) == calls, "one record per provider call, each attempt its own"
    assert started == {"ok": 1, "refused": 1, "broken": 2, "flaky": 2}
    assert closed == {"refused": 1, "broken": 2, "flaky": 1}, "each error answer closes its call"
    assert {r["call_id"] for r in records if r["job_id"] == "ok"} == {u.json["event_id"] for u in tap.usage
                                                                       if u.json["job_id"] == "ok"}
    assert totals["unreported_calls"] == 0, "a call the provider answered with an error is not unreported"
    assert totals["requests"] == 2
    assert all(c.routing_key == "ws-rec.openai.call" for c in tap.calls)
    assert all(PROMPT not in c.body.decode() and KEY not in c.body.decode() for c in tap.calls)
    assert all(c.properties.get("delivery_mode") == 2 for c in tap.calls)
