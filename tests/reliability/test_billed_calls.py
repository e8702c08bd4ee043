"""Every billed call accounted: a worker killed mid-call, a broker connection cut under load.

The simulator bills a call when its answer is ready, whether or not the worker is still there to read it,
as a real provider does. The invariant, against its ledger: consumption ``requests`` + ``unreported_calls``
= the calls billed, and the tokens counted are the tokens of the calls whose answer reached a worker.
Each test prints its figures (billed, requests, unreported, republished, duplicates); run with ``-s``.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from pydantic import SecretStr

from schemas.models import TOKEN_BUCKETS, Provider
from tests.aggregator.helpers import aggregator_settings
from tests.broker import BrokerTap, broker_tap, job_body, publish_jobs, running, running_aggregator
from tests.conftest import Sealer
from tests.faults import TcpProxy
from tests.processes import kill, start_worker
from tests.waiting import wait_until
from worker.aggregator.consumption import consumption
from worker.aggregator.service import RunningAggregator
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import CLIENT_GONE, ProviderSimulator

KEY = "sk-test-Accounting0123456789abcdef"
GRACE_S = 1.0
"""``BYOK_UNREPORTED_GRACE_S`` of these tests: a call silent this long after it started is unreported."""


def sealed_model(seal: Sealer, simulator: ProviderSimulator, workspace: str) -> dict[str, Any]:
    base_url = simulator.base_url(Provider.OPENAI)
    return {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
            "sealed_key": seal(workspace, KEY, Provider.OPENAI, base_url)}


def delivered_tokens(simulator: ProviderSimulator) -> dict[str, int]:
    """The ledger's tokens of the billed calls whose answer was delivered (status 200)."""
    totals = dict.fromkeys(TOKEN_BUCKETS, 0)
    for call in simulator.ledger.billed():
        if call.status == 200:
            assert call.usage is not None
            for bucket in TOKEN_BUCKETS:
                totals[bucket] += getattr(call.usage, bucket)
    return totals


def started_records(tap: BrokerTap) -> int:
    return len({c.json["call_id"] for c in tap.calls if c.json.get("state", "started") == "started"})


def duplicates(tap: BrokerTap) -> int:
    """Usage events the aggregator received more than once (counted once, by event_id)."""
    return len(tap.usage) - len({u.json["event_id"] for u in tap.usage})


async def settled_consumption(aggregator: RunningAggregator, workspace: str, simulator: ProviderSimulator,
                              jobs: int, tap: BrokerTap) -> dict[str, Any]:
    """Once every job has its result and every answer delivered to a worker is counted: the consumption of
    ``workspace``, whose ``requests`` + ``unreported_calls`` the test then holds against the ledger."""

    async def balanced() -> dict[str, Any] | None:
        if len({r.json["job_id"] for r in tap.results}) < jobs:
            return None
        totals = (await consumption(aggregator.store, aggregator.prices, workspace,
                                    unreported_grace_s=GRACE_S))["totals"]
        billed = simulator.ledger.billed()
        delivered = sum(1 for call in billed if call.status == 200)
        in_progress = simulator.ledger.arrived() - len(simulator.ledger.calls)
        # A call of the second worker may be past its grace period before its usage event is stored (the
        # grace is shorter than a call here): wait until every delivered answer is counted.
        if in_progress or totals["requests"] != delivered or totals["requests"] + totals["unreported_calls"] != len(
                billed):
            return None
        return dict(totals)

    result: dict[str, Any] = await wait_until(
        balanced, timeout=60, what=lambda: f"requests + unreported_calls = billed; {tap.counts()}")
    return result


@pytest.mark.timeout(240)
@pytest.mark.parametrize("run", [1, 2, 3])
async def test_sigkill_with_100_calls_in_flight_every_billed_call_is_counted_or_unreported(
    run: int, settings: Settings, simulator: ProviderSimulator, seal: Sealer
) -> None:
    simulator.latency_s = 4.0  # every call of the first worker is still at the provider when it dies
    workspace = f"ws-kill-{run}"
    model = sealed_model(seal, simulator, workspace)
    total = 100
    agg = aggregator_settings(settings, unreported_grace_s=GRACE_S)
    async with broker_tap(settings, copies=True) as tap, running_aggregator(agg) as aggregator:
        await publish_jobs(settings, [job_body(f"k{run}-{i}", workspace, model, content=f"job {i} " * (i % 7 + 1))
                                      for i in range(total)])
        first = await asyncio.to_thread(start_worker, settings, BYOK_PREFETCH=str(total))
        await wait_until(lambda: simulator.ledger.arrived() >= total, timeout=60,
                         what=lambda: f"{total} calls at the provider ({simulator.ledger.arrived()})")
        arrived_at_kill = simulator.ledger.arrived()
        kill(first)
        second = await asyncio.to_thread(start_worker, settings, BYOK_PREFETCH=str(total))
        try:
            totals = await settled_consumption(aggregator, workspace, simulator, total, tap)
            await tap.wait_for(lambda: started_records(tap) >= 2 * total)
        finally:
            second.stop()
    billed = simulator.ledger.billed()
    gone = [c for c in billed if c.status == CLIENT_GONE]
    counted = {bucket: totals[bucket] for bucket in TOKEN_BUCKETS}
    print(f"\n[sigkill run {run}] jobs={total} in_flight_at_kill={arrived_at_kill} "
          f"billed={len(billed)} billed_after_the_kill={len(gone)} requests={totals['requests']} "
          f"unreported={totals['unreported_calls']} republished=0 duplicates={duplicates(tap)} "
          f"call_records={started_records(tap)} results={len(tap.results)}")
    assert arrived_at_kill == total
    assert started_records(tap) == len(billed), "every billed call was recorded before it was made"
    assert len(gone) == total, "the provider billed each call the killed worker had in flight"
    assert totals["requests"] + totals["unreported_calls"] == len(billed)
    assert totals["unreported_calls"] == total and totals["requests"] == total
    assert counted == delivered_tokens(simulator), "the tokens counted are those of the calls that reported"
    assert all(r.json["status"] == "succeeded" for r in tap.results)


@pytest.mark.timeout(240)
async def test_broker_cut_under_load_with_two_workers_loses_no_usage_event(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer
) -> None:
    workspace = "ws-acut"
    model = sealed_model(seal, simulator, workspace)
    parts = urlsplit(settings.amqp_url.get_secret_value())
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    via_proxy = urlunsplit(parts._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}"))
    proxied = settings.model_copy(update={"amqp_url": SecretStr(via_proxy), "prefetch": 30})
    simulator.latency_s = 0.05
    total = 600
    agg = aggregator_settings(settings, unreported_grace_s=GRACE_S)  # straight to the broker, not cut
    workers = [Worker(proxied), Worker(proxied)]
    async with (broker_tap(settings, copies=True) as tap, running_aggregator(agg) as aggregator,
                running(workers[0]), running(workers[1])):
        await publish_jobs(settings, [job_body(f"cut-{i}", workspace, model) for i in range(total)])
        await tap.wait_for(lambda: len(tap.results) >= 100, timeout_s=60)
        # The link hangs, then drops: what the workers publish meanwhile (results, usage events, call
        # records of the next calls) is never confirmed.
        proxy.stall()
        await wait_until(lambda: any(len(w.outbox) for w in workers), timeout=10,
                         what="usage events waiting for their confirm")
        kept_at_cut = sum(len(w.outbox) for w in workers)
        cut = await proxy.cut()
        totals = await settled_consumption(aggregator, workspace, simulator, total, tap)
        republished = sum(w.outbox.republished for w in workers)
        reconnects = sum(w.connections for w in workers) - len(workers)
    await proxy.stop()
    billed = simulator.ledger.billed()
    event_ids = {u.json["event_id"] for u in tap.usage}
    print(f"\n[broker cut, two workers] jobs={total} connections_cut={cut} reconnects={reconnects} "
          f"kept_at_cut={kept_at_cut} billed={len(billed)} requests={totals['requests']} "
          f"unreported={totals['unreported_calls']} republished={republished} duplicates={duplicates(tap)} "
          f"results={len(tap.results)} dead={len(tap.dead)}")
    assert cut == 2 and reconnects >= 2, "both workers lost their connection and came back"
    assert republished >= 1, "usage events or call records unconfirmed at the cut were published again"
    assert totals["requests"] + totals["unreported_calls"] == len(billed)
    assert totals["unreported_calls"] == 0, "no worker died: every call reported"
    assert totals["requests"] == len(event_ids) == len(billed), "no usage event lost"
    assert {bucket: totals[bucket] for bucket in TOKEN_BUCKETS} == delivered_tokens(simulator)
    assert {r.json["job_id"] for r in tap.results} == {f"cut-{i}" for i in range(total)}
    assert all(r.json["status"] == "succeeded" for r in tap.results)
