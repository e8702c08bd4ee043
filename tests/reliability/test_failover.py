"""``BYOK_AMQP_URL`` listing several nodes: the worker, the aggregator and the ``byok`` commands connect to the
first live one and fail over when it goes away. Three addresses on the real broker: a closed port (a dead
node), a ``TcpProxy`` the test cuts (the node that fails) and the broker itself (the node that survives)."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import orjson
import pytest
import structlog
from pydantic import SecretStr

from schemas.models import Provider
from tests.aggregator.helpers import aggregator_settings
from tests.broker import BrokerTap, broker_tap, byok, job_body, publish_jobs, running, running_aggregator
from tests.conftest import Sealer
from tests.faults import TcpProxy
from tests.services import free_port
from tests.waiting import wait_until
from worker.broker.names import Topology
from worker.cli.consumption import query_consumption
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-test-Failover0123456789abcdefgh"


def at_port(settings: Settings, port: int) -> str:
    parts = urlsplit(settings.amqp_url.get_secret_value())
    return urlunsplit(parts._replace(netloc=f"guest:guest@127.0.0.1:{port}"))


def job_ids(tap: BrokerTap) -> set[str]:
    return {r.json["job_id"] for r in tap.results}


@pytest.mark.timeout(120)
async def test_worker_aggregator_and_cli_skip_a_dead_node_and_fail_over_when_theirs_goes_away(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer
) -> None:
    direct_port = urlsplit(settings.amqp_url.get_secret_value()).port or 5672
    proxy = TcpProxy("127.0.0.1", direct_port)
    await proxy.start()
    dead_port = free_port()  # nothing listens there: connecting is refused at once
    nodes = ",".join([at_port(settings, dead_port), at_port(settings, proxy.port), f"127.0.0.1:{direct_port}"])
    cluster = settings.model_copy(update={"amqp_url": SecretStr(nodes), "prefetch": 20})
    base_url = simulator.base_url(Provider.OPENAI)
    model: dict[str, Any] = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
                             "sealed_key": seal("ws-failover", KEY, Provider.OPENAI, base_url)}
    simulator.latency_s = 0.05
    total = 200
    agg_settings = aggregator_settings(cluster)
    try:
        with structlog.testing.capture_logs() as logs:
            async with (broker_tap(settings, usage=False) as tap, running_aggregator(agg_settings) as aggregator,
                        running(Worker(cluster)) as worker):
                assert worker.broker.node is not None and aggregator.broker.node is not None
                assert worker.broker.node.port == proxy.port, "the dead first node is skipped"
                assert aggregator.broker.node.port == proxy.port
                await publish_jobs(settings, [job_body(f"fo-{i}", "ws-failover", model) for i in range(total)])
                await tap.wait_for(lambda: len(job_ids(tap)) >= 40, timeout_s=30)
                proxy.refusing = True  # the node is gone: no new connection either
                cut = await proxy.cut()
                cut_at = time.monotonic()
                await wait_until(lambda: worker.broker.alive and worker.broker.node is not None
                                 and worker.broker.node.port == direct_port, timeout=30,
                                 what="the worker connected to the live node")
                failover_s = time.monotonic() - cut_at
                await tap.wait_for(lambda: len(job_ids(tap)) == total, timeout_s=60)
                assert worker.broker.node.port == direct_port, "the worker failed over to the live node"
                await wait_until(lambda: aggregator.broker.node is not None
                                 and aggregator.broker.node.port == direct_port and aggregator.broker.alive,
                                 timeout=30, what="the aggregator consuming on the live node")
                assert worker.connections == 2

                # byok commands with the same list: the dead node and the cut proxy are skipped.
                submitted = await asyncio.to_thread(byok, cluster, "submit", "--file", "-", "--wait", "--timeout", "30",
                                 stdin=job_body("fo-cli", "ws-failover", model))
                assert orjson.loads(submitted.stdout)["status"] == "succeeded"
                listed = await asyncio.to_thread(byok, cluster, "dlq", "list", "--json")
                assert orjson.loads(listed.stdout) == []
                declared = await asyncio.to_thread(byok, cluster, "topology", "declare")
                assert declared.stdout.startswith(b"declared ")

                async def counted() -> dict[str, Any] | None:
                    summary = await query_consumption(agg_settings, "ws-failover", None, None, ())
                    wanted = simulator.ledger.totals()["requests"]
                    return summary if summary["totals"]["requests"] >= wanted else None

                summary = await wait_until(counted, timeout=30, what="every billed call in the consumption")
    finally:
        await proxy.stop()
    ledger = simulator.ledger.totals()
    totals = {k: summary["totals"][k] for k in ledger}
    skipped = [e for e in logs if e["event"] == "broker.node_unreachable"]
    print(f"\n[failover] sent={total + 1} connections_cut={cut} worker_connections={worker.connections} "
          f"nodes_skipped={len(skipped)} failover_s={failover_s:.2f} results={len(tap.results)} "
          f"unique={len(job_ids(tap))} "
          f"dead={len(tap.dead)} ledger={ledger} aggregator={totals}")
    assert cut == 2, "the worker's and the aggregator's connections went through the failing node"
    assert job_ids(tap) == {f"fo-{i}" for i in range(total)} | {"fo-cli"}
    assert all(r.json["status"] == "succeeded" for r in tap.results)
    assert tap.dead == []
    assert totals == ledger and ledger["requests"] == total + 1
    assert {e["node"] for e in skipped} == {f"127.0.0.1:{dead_port}"}, "the node just lost is tried last"
    lost = [e["node"] for e in logs if e["event"] == "broker.connection_lost"]
    assert lost == [f"127.0.0.1:{proxy.port}"] * 2
    assert all(KEY not in str(e) and "guest:guest" not in str(e) for e in logs)


@pytest.mark.timeout(60)
async def test_a_publish_the_broker_refuses_makes_the_worker_start_over_without_calling_twice(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    """A queue that refuses what is routed to it (full, ``x-overflow: reject-publish``) makes the broker nack the
    worker's result: the job stays unacked, the worker starts over on a new connection, and once the queue takes
    messages again the job is settled from memory: one provider call, one result."""
    names = Topology(settings.topology_prefix)
    base_url = simulator.base_url(Provider.OPENAI)
    model: dict[str, Any] = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
                             "sealed_key": seal("ws-refused", KEY, Provider.OPENAI, base_url)}
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        full = await channel.declare_queue(f"{names.prefix}.test.full", arguments={
            "x-max-length": 0, "x-overflow": "reject-publish"})
        await full.bind(names.results_exchange, routing_key="ws-refused.#")
        with structlog.testing.capture_logs() as logs:
            async with running(Worker(settings)) as worker:
                await publish_jobs(settings, [job_body("refused-1", "ws-refused", model)])
                await wait_until(lambda: worker.connections >= 2, timeout=30,
                                 what="the worker starting over after the refused publish")
                await asyncio.sleep(2.0)  # time passing while every attempt is refused: the worker must not spin
                attempts_in_2s = worker.connections
                await full.delete(if_unused=False, if_empty=False)
                await tap.wait_for(lambda: len(tap.results) >= 1, timeout_s=30)
    # Each refused attempt reached the tap's queue too (results may repeat; subscribers key on job_id).
    assert {r.json["job_id"] for r in tap.results} == {"refused-1"}
    assert tap.dead == []
    assert len(simulator.ledger.billed()) == 1, "settled again from memory: the provider was called once"
    assert any(e["event"] == "job.publish_refused" for e in logs)
    lost = [e["reason"] for e in logs if e["event"] == "broker.connection_lost"]
    assert lost and all(reason == "the broker refused a publish (basic.nack)" for reason in lost)
    assert not any(e["event"] == "job.crashed" for e in logs), "a refused publish is not a crash"
    # Backing off after each connection lost at once: 0.1-0.2 s, then 0.2-0.4 s, 0.4-0.8 s… (a dozen at most
    # in two seconds, where a worker that reconnected at once made a new connection every few milliseconds).
    assert attempts_in_2s <= 8, attempts_in_2s
    assert tap.dead == []
