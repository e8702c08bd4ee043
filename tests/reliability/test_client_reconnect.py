"""``worker.client`` through a connection a test cuts (``TcpProxy``): it reconnects like the worker, and a
results iterator goes on; a durable results queue keeps what was published while the client was away."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote, urlsplit

import aio_pika
import orjson
import pytest

from tests.broker import BrokerTap, publish_jobs
from tests.conftest import Sealer
from tests.faults import TcpProxy, broker_closes
from tests.integration.test_client import openai_job, simulated_model
from tests.reliability.test_reconnect import broker_proxy, via
from tests.waiting import wait_until
from worker.client import Client, ReplyLost
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator


def client_through(proxy: TcpProxy, settings: Settings) -> Client:
    return Client(via(proxy, settings), topology_prefix=settings.topology_prefix, reconnect_max_s=30)


async def next_result(results: Any) -> Any:
    async with asyncio.timeout(20):
        return await anext(results)


@pytest.mark.timeout(90)
async def test_the_results_iterator_goes_on_after_the_connection_is_cut(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, seal: Sealer
) -> None:
    model = simulated_model(settings, simulator, seal, "ws-cut")
    proxy = await broker_proxy(settings)
    try:
        async with client_through(proxy, settings) as client, client.results(workspace="ws-cut") as results:
            await client.submit(openai_job("cut-1", "ws-cut", model))
            assert (await next_result(results)).job_id == "cut-1"
            first_queue = results.queue_name

            assert await proxy.cut() == 1, "the client holds one connection"
            # Published through the client while it reconnects: the submit waits for the new connection.
            await client.submit(openai_job("cut-2", "ws-cut", model))
            assert (await next_result(results)).job_id == "cut-2"
            assert (client.connections, results.attachments) == (2, 2)
            assert results.queue_name != first_queue, "an exclusive queue is declared anew on the new connection"
            # And run() works on the new connection's reply queue.
            assert (await client.run(openai_job("cut-3", "ws-cut", model), timeout=20)).job_id == "cut-3"
            assert (await next_result(results)).job_id == "cut-3"
        print(f"\nclient: connection cut once; {client.connections} connections, the iterator went on "
              f"(cut-1 before, cut-2 and cut-3 after)")
    finally:
        await proxy.stop()


@pytest.mark.timeout(90)
async def test_a_durable_results_queue_keeps_what_was_published_while_the_client_was_away(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, tap: BrokerTap, seal: Sealer
) -> None:
    model = simulated_model(settings, simulator, seal, "ws-away")
    queue = f"client-test-{settings.topology_prefix}"
    proxy = await broker_proxy(settings)
    try:
        async with client_through(proxy, settings) as client, \
                client.results(workspace="ws-away", queue=queue) as results:
            await client.submit(openai_job("away-1", "ws-away", model))
            assert (await next_result(results)).job_id == "away-1"

            proxy.refusing = True
            await proxy.cut()
            # While the client cannot connect, the job goes in directly and the worker answers it.
            await publish_jobs(settings, [orjson.dumps(openai_job("away-2", "ws-away", model))])
            await tap.wait_for(lambda: any(r.json["job_id"] == "away-2" for r in tap.results))
            refused_before = proxy.connections
            await wait_until(lambda: proxy.connections > refused_before, timeout=10,
                             what="the client to try the broker again while it is refused")
            proxy.refusing = False

            after = [(await next_result(results)).job_id]
            if after[0] == "away-1":
                # Handed out, but its ack (sent when the next result is asked for) found the channel gone:
                # the durable queue delivers it again. At least once; results carry job_id to deduplicate on.
                after.append((await next_result(results)).job_id)
            assert after[-1] == "away-2", "kept by the durable queue while the client was away, read after"
            assert client.connections == 2
            print(f"\nclient: durable results queue across a refused reconnect: read {after} after it")
    finally:
        await proxy.stop()
        connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
        async with connection:
            await (await connection.channel()).queue_delete(queue)


@pytest.mark.timeout(60)
async def test_run_waiting_when_the_connection_is_lost_raises_reply_lost(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    # No worker: the job stays queued while run() waits on the reply queue the cut takes away.
    model = simulated_model(settings, simulator, seal, "ws-lost")
    proxy = await broker_proxy(settings)
    try:
        async with client_through(proxy, settings) as client:
            waiting = asyncio.create_task(client.run(openai_job("lost-1", "ws-lost", model), timeout=30))
            await wait_until(lambda: any(a.published_on for a in client._awaited.values()), timeout=10,
                             what="the job to be published")
            await proxy.cut()
            with pytest.raises(ReplyLost, match="job lost-1's result; the job was published and still runs"):
                await asyncio.wait_for(waiting, 10)
    finally:
        await proxy.stop()


@pytest.mark.timeout(90)
async def test_the_results_iterator_goes_on_when_the_broker_closes_the_connection(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, seal: Sealer
) -> None:
    # As a broker node shutting down (or an operator) closes it: rabbitmqctl close_connection.
    model = simulated_model(settings, simulator, seal, "ws-closed")
    name = f"client-{settings.topology_prefix}"
    vhost = unquote(urlsplit(settings.amqp_url.get_secret_value()).path.removeprefix("/")) or "/"
    async with Client(settings.amqp_url, topology_prefix=settings.topology_prefix, reconnect_max_s=30,
                      name=name) as client, client.results(workspace="ws-closed") as results:
        await client.submit(openai_job("closed-1", "ws-closed", model))
        assert (await next_result(results)).job_id == "closed-1"
        closed = await asyncio.to_thread(broker_closes, vhost, client.broker.connection_name)
        assert closed == 1
        await wait_until(lambda: client.connections == 2, timeout=20, what="the client to reconnect")
        await client.submit(openai_job("closed-2", "ws-closed", model))
        assert (await next_result(results)).job_id == "closed-2"
        assert results.attachments == 2
