"""3,000 jobs through two workers and the aggregator on a real three-node RabbitMQ cluster (``tests/cluster.py``),
while the node that leads ``byok.jobs`` is stopped, and then the node the workers are connected to.

The topology is declared through node 1, so node 1 leads every quorum queue (RabbitMQ places a new queue's
leader on the declaring client's node); the workers and the aggregator are given the nodes in the order
2, 3, 1, so they connect to node 2; the test's own publisher and tap use node 3, which is never stopped.
A quorum queue needs a majority of its three members, so node 1 is started again before node 2 is stopped.
Prints the figures: how long each failover took, the longest pause in results, duplicates, extra calls, and
usage events a stopped node cut on their way to the aggregator (their calls are counted as unreported).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aio_pika
import pytest
from pydantic import SecretStr

from schemas.models import TOKEN_BUCKETS, Provider
from tests.aggregator.helpers import aggregator_settings
from tests.broker import BrokerTap, broker_tap, job_body, running, running_aggregator
from tests.cluster import ClusterNode, RabbitCluster
from tests.conftest import Sealer
from tests.waiting import wait_until
from worker.aggregator.db import Database, Sql
from worker.broker.names import JOB_ROUTING_KEY, Topology
from worker.broker.topology import aggregator_topology, declare_topology, topology_spec
from worker.cli.consumption import query_consumption
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-test-Cluster0123456789abcdefghij"
WORKSPACE = "ws-cluster"
TOTAL = 3000


@dataclass
class Timeline:
    """When the count of distinct results grew, sampled every 10 ms: the pauses a failover causes."""

    tap: BrokerTap
    points: list[tuple[float, int]] = field(default_factory=list)

    def unique(self) -> int:
        return len({r.json["job_id"] for r in self.tap.results})

    async def run(self) -> None:
        last = -1
        while True:
            count = len(self.tap.results)
            if count != last:
                self.points.append((time.monotonic(), count))
                last = count
            await asyncio.sleep(0.01)

    def longest_pause_after(self, since: float, until: float) -> float:
        """The longest time without a new result between ``since`` and ``until``."""
        times = [since, *(t for t, _ in self.points if since < t < until), until]
        return max(b - a for a, b in itertools.pairwise(times))


@contextlib.asynccontextmanager
async def sampled(tap: BrokerTap) -> AsyncIterator[Timeline]:
    timeline = Timeline(tap)
    task = asyncio.create_task(timeline.run())
    try:
        yield timeline
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@dataclass
class Feed:
    """Publishes the jobs at a steady rate, as automations do, so every stop meets jobs queued and in flight.
    The last ``held_back`` wait for ``release``: the second stop happens while jobs are still coming.

    As a careful publisher does, it publishes each job until the broker confirms it: a quorum queue refuses
    (basic.nack) what arrives while it has no leader, and that job is sent again."""

    url: str
    exchange: str
    jobs: list[bytes]
    held_back: int
    release: asyncio.Event = field(default_factory=asyncio.Event)
    published: int = 0
    refused: int = 0

    async def run(self, per_second: int = 100, batch: int = 25) -> None:
        connection = await aio_pika.connect(self.url)
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.get_exchange(self.exchange)
            for start in range(0, len(self.jobs), batch):
                if start >= len(self.jobs) - self.held_back:
                    await self.release.wait()
                await asyncio.gather(*(self._confirmed(exchange, body) for body in self.jobs[start:start + batch]))
                self.published = start + len(self.jobs[start:start + batch])
                await asyncio.sleep(batch / per_second)  # the pace of the publishers, not a wait for a condition

    async def _confirmed(self, exchange: aio_pika.abc.AbstractExchange, body: bytes) -> None:
        while True:
            try:
                await exchange.publish(aio_pika.Message(body, content_type="application/json",
                                                        delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                                       routing_key=JOB_ROUTING_KEY)
                return
            except aio_pika.exceptions.DeliveryError:
                self.refused += 1
                await asyncio.sleep(0.1)  # a leader is being elected: give it a moment


async def leader_of(cluster: RabbitCluster, via: ClusterNode, queue: str) -> str:
    queues = await asyncio.to_thread(cluster.queues, via)
    return str(queues[queue]["leader"])


def at(settings: Settings, url: str, **update: Any) -> Settings:
    return settings.model_copy(update={"amqp_url": SecretStr(url), **update})


@pytest.mark.timeout(240)
async def test_three_thousand_jobs_through_a_cluster_losing_the_queue_leader_then_the_workers_node(
    rabbit_cluster: RabbitCluster, settings: Settings, simulator: ProviderSimulator, seal: Sealer
) -> None:
    cluster = rabbit_cluster
    c1, c2, c3 = cluster.nodes
    names = Topology(settings.topology_prefix)
    connection = await aio_pika.connect(c1.url)
    async with connection:
        channel = await connection.channel()
        await declare_topology(channel, topology_spec(names, delivery_limit=settings.delivery_limit))
        await declare_topology(channel, aggregator_topology(names))
    queues = await asyncio.to_thread(cluster.queues, c3)
    ours = {name: q for name, q in queues.items() if name.startswith(names.prefix + ".")}
    assert all(q["type"] == "quorum" and sorted(q["members"]) == sorted(n.name for n in cluster.nodes)
               for q in ours.values()), f"every quorum queue replicated on all three nodes: {ours}"
    assert ours[names.jobs_queue]["leader"] == c1.name

    observer = at(settings, c3.url)  # the test's publisher and tap: node 3 stays up throughout
    workers = at(settings, cluster.url(c2, c3, c1), prefetch=20, log_level="warning")
    aggregator = aggregator_settings(workers)
    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
             "sealed_key": seal(WORKSPACE, KEY, Provider.OPENAI, base_url)}
    jobs = [job_body(f"cl-{i}", WORKSPACE, model, content=f"job {i}") for i in range(TOTAL)]
    simulator.latency_s = 0.25  # about 25 calls in flight at the feed's pace: each stop cuts some of them
    started = time.monotonic()
    async with (
        broker_tap(observer, usage=False, copies=True) as tap, sampled(tap) as timeline,
        running_aggregator(aggregator) as agg, running(Worker(workers)) as w1, running(Worker(workers)) as w2,
    ):
        assert [p.node.port if p.node else None for p in (w1.broker, w2.broker, agg.broker)] == [c2.amqp_port] * 3

        feed = Feed(c3.url, names.jobs_exchange, jobs, held_back=600)
        feeding = asyncio.create_task(feed.run())

        def results_at_least(count: int) -> bool:
            if feeding.done() and feeding.exception() is not None:
                raise AssertionError("the feed failed") from feeding.exception()
            return timeline.unique() >= count

        # 1. The node that leads byok.jobs (node 1) stops mid-run.
        await wait_until(lambda: results_at_least(500), timeout=60, what="500 results before the first stop")
        leader = cluster.node_at(c1.amqp_port)
        assert await leader_of(cluster, c3, names.jobs_queue) == leader.name
        first_stop_results = timeline.unique()
        in_flight_first = _in_flight(w1, w2)
        first_stop = time.monotonic()
        await asyncio.to_thread(cluster.stop_node, leader)
        new_leader = await wait_until(
            lambda: _other_leader(cluster, c3, names.jobs_queue, leader), timeout=30, what="a new leader")
        leader_failover_s = time.monotonic() - first_stop
        await wait_until(lambda: results_at_least(first_stop_results + 200), timeout=60,
                         what=lambda: f"results again after the leader stopped: {timeline.unique()} "
                         f"published={feed.published} " + _state(cluster, c3, w1, w2))
        first_resumed = time.monotonic()
        # Back in the cluster before the next stop: two of three members are the quorum.
        await asyncio.to_thread(cluster.start_node, leader)

        # 2. The node the workers (and the aggregator) are connected to stops mid-run.
        assert w1.broker.node is not None
        theirs = cluster.node_at(w1.broker.node.port)
        second_stop_results = timeline.unique()
        in_flight_second = _in_flight(w1, w2)
        second_stop = time.monotonic()
        feed.release.set()
        await asyncio.to_thread(cluster.stop_node, theirs)
        await wait_until(lambda: all(p.alive and p.node is not None and p.node.port != theirs.amqp_port
                                     for p in (w1.broker, w2.broker, agg.broker)),
                         timeout=60, what="both workers and the aggregator connected to another node")
        node_failover_s = time.monotonic() - second_stop
        await feeding
        await wait_until(lambda: results_at_least(TOTAL), timeout=120,
                         what=lambda: f"every result: {timeline.unique()} " + _state(cluster, c3, w1, w2))
        finished = time.monotonic()

        def published_usage() -> dict[str, dict[str, Any]]:
            return {u.json["event_id"]: u.json for u in tap.usage}

        counts: dict[str, Any] = {}
        reading = aggregator.model_copy(update={"unreported_grace_s": 0.0})  # every call without usage, at once
        last: dict[str, Any] = {}

        async def counted() -> tuple[dict[str, Any], set[str], set[str]] | None:
            """Settled: a consumption read while the store did not change, with every billed call counted or open,
            and every usage event the tap saw stored, or else nothing new stored for 2 s (the rest were cut)."""
            before = await _stored_usage_and_open_calls(agg.store.writer)
            summary = await query_consumption(reading, WORKSPACE, None, None, ())
            stored, open_calls = await _stored_usage_and_open_calls(agg.store.writer)
            events = set(published_usage())
            counts.update(requests=summary["totals"]["requests"], unreported=summary["totals"]["unreported_calls"],
                          stored=len(stored), open=len(open_calls), not_stored=len(events - stored))
            if (stored, open_calls) != last.get("snapshot"):
                last.update(snapshot=(stored, open_calls), since=time.monotonic())
            consistent = before == (stored, open_calls) and counts["requests"] == len(stored)
            every_call = counts["requests"] + counts["unreported"] >= simulator.ledger.totals()["requests"]
            quiet = time.monotonic() - last["since"] >= 2.0 and events <= stored | open_calls
            return (summary, stored, open_calls) if consistent and every_call and (events <= stored or quiet) else None

        summary, stored, open_calls = await wait_until(
            counted, timeout=60, what=lambda: f"every billed call in the consumption: {counts}, "
            f"{len(published_usage())} usage events published, {simulator.ledger.totals()['requests']} calls billed; "
            + _state(cluster, c3, w1, w2))
        dead_connection = await aio_pika.connect(c3.url)
        async with dead_connection:
            probe = await dead_connection.channel()
            aggregator_dead = (await probe.declare_queue(names.aggregator_dead_letter_queue, passive=True)
                               ).declaration_result.message_count
        reconnects = (w1.connections - 1, w2.connections - 1, agg.broker.connections - 1)
    ledger = simulator.ledger.totals()
    totals = {k: summary["totals"][k] for k in ledger}
    events = published_usage()
    # A usage event published while its node stopped can reach the tap's queue (on a node that stays up) and not
    # the aggregator's before the node goes: unconfirmed, so the job runs again (often on the other worker, a
    # new call and a new event). Its call then stays open and is counted as unreported: accounted, not lost.
    cut = set(events) - stored
    counted_events = [events[event_id] for event_id in stored if event_id in events]
    reported = {"requests": len(counted_events),
                **{b: sum(e[b] for e in counted_events) for b in TOKEN_BUCKETS}}
    unreported = summary["totals"]["unreported_calls"]
    unique = timeline.unique()
    duplicates = len(tap.results) - unique
    extra_calls = ledger["requests"] - TOTAL
    usage_lost = ledger["requests"] - len(events)
    print(f"\n[cluster] jobs={TOTAL} nodes=3 workers=2 run_s={finished - started:.1f} feed_refused={feed.refused} "
          f"leader_stop: at_results={first_stop_results} in_flight={in_flight_first} "
          f"new_leader={new_leader.split('@')[0]} leader_failover_s={leader_failover_s:.2f} "
          f"longest_pause_s={timeline.longest_pause_after(first_stop, first_resumed):.2f} | "
          f"workers_node_stop: node={theirs.name.split('@')[0]} at_results={second_stop_results} "
          f"in_flight={in_flight_second} node_failover_s={node_failover_s:.2f} "
          f"longest_pause_s={timeline.longest_pause_after(second_stop, finished):.2f} | "
          f"reconnects(w1,w2,agg)={reconnects} results={len(tap.results)} unique={unique} duplicates={duplicates} "
          f"extra_provider_calls={extra_calls} usage_events={len(events)} billed_without_usage_event={usage_lost} "
          f"usage_events_cut_before_the_aggregator={len(cut)} unreported_calls={unreported} dead={len(tap.dead)} "
          f"aggregator_dead={aggregator_dead} ledger={ledger} consumption={totals}")
    assert unique == TOTAL and all(r.json["status"] == "succeeded" for r in tap.results)
    assert tap.dead == [] and aggregator_dead == 0, "nothing is dead-lettered"
    assert stored <= set(events), "the aggregator counts only usage events the workers published"
    assert totals == reported, "every usage event the aggregator received is counted exactly once, to the token"
    assert cut <= open_calls and len(open_calls) == unreported, \
        "a usage event cut on its way to the aggregator leaves its call counted as unreported"
    # The other way round, a call record published as its node stopped can reach the aggregator although the
    # worker, without the confirm, never made the call: an open call nobody billed. Unreported calls are the
    # calls that may have been billed, so they bound the billed ones from above, by at most the calls cut.
    never_made = totals["requests"] + unreported - ledger["requests"]
    print(f"[cluster] call records of calls never made (their record cut by a stop): {never_made}")
    assert 0 <= never_made <= in_flight_first + in_flight_second, \
        "requests + unreported_calls covers every billed call, over by at most the calls the stops cut"
    assert min(reconnects) >= 1, "the workers and the aggregator failed over"


async def _stored_usage_and_open_calls(store: Database) -> tuple[set[str], set[str]]:
    """The usage events the aggregator stored, and the calls it holds open (started, never reported)."""
    def read(sql: Sql) -> tuple[set[str], set[str]]:
        stored = {str(row[0]) for row in sql.query("SELECT event_id FROM usage_events WHERE workspace_id = ?",
                                                   (WORKSPACE,))}
        open_calls = {str(row[0]) for row in sql.query(
            "SELECT c.call_id FROM provider_calls c WHERE c.workspace_id = ? AND c.ended_at_us IS NULL "
            "AND NOT EXISTS (SELECT 1 FROM usage_events e WHERE e.event_id = c.call_id)", (WORKSPACE,))}
        return stored, open_calls
    return await store.run(read, write=False)


async def _other_leader(cluster: RabbitCluster, via: ClusterNode, queue: str, old: ClusterNode) -> str | None:
    leader = await leader_of(cluster, via, queue)
    return leader if leader and leader != old.name else None


def _in_flight(*workers: Worker) -> int:
    return int(sum(w.metrics.in_flight._value.get() for w in workers))


def _state(cluster: RabbitCluster, via: ClusterNode, *workers: Worker) -> str:
    """For a failure message: the workers' jobs in flight and every queue as a live node sees it."""
    in_flight = _in_flight(*workers)
    queues = cluster.ctl(via, "list_queues", "-p", "/", "name", "leader", "messages_ready", "messages_unacknowledged",
                         "consumers", "--formatter", "json")
    return f"in_flight={in_flight} queues={queues}"
