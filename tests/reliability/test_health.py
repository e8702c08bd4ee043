"""Liveness, readiness and metrics follow the broker connection; a broker that stays away ends the process."""

from __future__ import annotations

import asyncio
import time
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import httpx
import pytest

from schemas.models import Provider
from tests.broker import BrokerTap, job_body, publish_jobs, running
from tests.conftest import Sealer
from tests.faults import TcpProxy
from tests.processes import start_worker
from tests.waiting import wait_until
from worker.broker.names import Topology
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator


def via(proxy: TcpProxy, settings: Settings) -> str:
    parts = urlsplit(settings.amqp_url.get_secret_value())
    return urlunsplit(parts._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}"))


@pytest.mark.timeout(60)
async def test_readiness_follows_the_broker_and_the_worker_exits_1_when_it_stays_away(settings: Settings) -> None:
    parts = urlsplit(settings.amqp_url.get_secret_value())
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    worker = await asyncio.to_thread(start_worker, settings, BYOK_AMQP_URL=via(proxy, settings),
                                     BYOK_RECONNECT_MAX_S="3")
    base = f"http://127.0.0.1:{worker.health_port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=2) as http:
            ready = await http.get("/readyz")
            assert ready.status_code == 200
            assert ready.json() == {"broker_connected": True, "consuming": True}
            assert (await http.get("/livez")).status_code == 200
            metrics = (await http.get("/metrics")).text
            assert "byok_jobs_in_flight 0.0" in metrics
            assert "byok_unseal_cache_lookups" in metrics

            await proxy.stop()  # the broker is gone: nothing listens any more
            lost_at = time.monotonic()

            async def not_ready() -> bool:
                try:
                    ready = await http.get("/readyz")
                except httpx.HTTPError:
                    return True  # the process already exited
                if ready.status_code == 503:
                    assert ready.json()["consuming"] is False
                return ready.status_code == 503

            await wait_until(not_ready, timeout=10, what="readiness to report the lost broker")
        code = await asyncio.to_thread(worker.wait, 30)
        took = time.monotonic() - lost_at
    finally:
        worker.stop()
    log = worker.log()
    assert code == 1, log[-2000:]
    assert "broker.unreachable" in log
    assert "the broker has been unreachable" in log
    print(f"\n[health] ready=200 → broker lost → 503, exit status {code} after {took:.1f}s (BYOK_RECONNECT_MAX_S=3)")


@pytest.mark.timeout(60)
async def test_a_consumer_the_broker_cancels_comes_back(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    """Deleting the jobs queue under a running worker cancels its consumer (aio-pika #231/#563 territory):
    readiness drops, the worker starts over (topology declared again, consumer restored) and jobs flow."""
    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
             "sealed_key": seal("ws-cancel", "sk-test-ConsumerCancel0123456789ab", Provider.OPENAI, base_url)}
    names = Topology(settings.topology_prefix)
    async with running(Worker(settings)) as worker:
        await publish_jobs(settings, [job_body("before-cancel", "ws-cancel", model)])
        await tap.wait_for(lambda: len(tap.results) == 1)
        connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
        async with connection:
            channel = await connection.channel()
            await channel.queue_delete(names.jobs_queue)
        await wait_until(lambda: worker.connections >= 2 and worker.ready.is_set(),
                         what="the worker consuming again after its consumer was cancelled")
        assert worker.connections == 2, "one start-over, on its first try"
        await publish_jobs(settings, [job_body("after-cancel", "ws-cancel", model)])
        await tap.wait_for(lambda: len(tap.results) == 2, timeout_s=20)
    assert [r.json["job_id"] for r in tap.results] == ["before-cancel", "after-cancel"]
    assert all(r.json["status"] == "succeeded" for r in tap.results)
