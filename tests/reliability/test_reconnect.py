"""The shared reconnect strategy against the real broker: waits that grow while it refuses, and a closed
channel counted as a lost consumer (readiness drops, the worker starts over and consumes again)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import httpx
import pytest
import structlog
from pydantic import SecretStr

from tests.broker import BrokerTap, job_body, publish_jobs, running
from tests.faults import TcpProxy
from worker.broker.connection import BrokerUnavailable, reconnect_delay_s
from worker.broker.names import HEADER_ERROR, Topology
from worker.jobs.service import Worker
from worker.settings import Settings


def via(proxy: TcpProxy, settings: Settings) -> SecretStr:
    parts = urlsplit(settings.amqp_url.get_secret_value())
    return SecretStr(urlunsplit(parts._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}")))


async def broker_proxy(settings: Settings) -> TcpProxy:
    parts = urlsplit(settings.amqp_url.get_secret_value())
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    return proxy


async def ready_status(http: httpx.AsyncClient, accept: Callable[[httpx.Response], bool]) -> httpx.Response:
    async with asyncio.timeout(20):
        while not accept(response := await http.get("/readyz")):
            await asyncio.sleep(0.02)
    return response


@pytest.mark.timeout(60)
async def test_a_worker_started_while_the_broker_refuses_waits_longer_after_each_failure(settings: Settings) -> None:
    proxy = await broker_proxy(settings)
    proxy.refusing = True
    worker = Worker(settings.model_copy(update={"amqp_url": via(proxy, settings), "reconnect_max_s": 3.0}))
    try:
        with structlog.testing.capture_logs() as logs, pytest.raises(BrokerUnavailable, match="unreachable for"):
            await asyncio.wait_for(worker.run(asyncio.Event()), 30)
    finally:
        await proxy.stop()
    failures = [e for e in logs if e["event"] == "broker.unreachable"]
    assert [e["failures"] for e in failures] == list(range(1, len(failures) + 1))
    for event in failures:  # each wait within the jitter band of its own failure count (logged to 0.01 s)
        assert reconnect_delay_s(event["failures"], 0.0) - 0.01 <= event["retry_in_s"]
        assert event["retry_in_s"] <= reconnect_delay_s(event["failures"], 1.0) + 0.01
    # Waits of at least 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s: at most six attempts fit before giving up after 3 s
    # (the old exponent, successful connections, retried every 0.1-0.2 s: some twenty attempts).
    assert proxy.connections == worker.broker.attempts
    assert 2 <= proxy.connections <= 6, proxy.connections
    assert worker.connections == 0 and not worker.ready.is_set()


@pytest.mark.timeout(90)
async def test_a_channel_the_broker_closes_is_a_lost_consumer(settings: Settings, tap: BrokerTap) -> None:
    """The broker closes the worker's channel (a dead letter published to an exchange that is gone: NOT_FOUND).
    Readiness drops at once, the worker starts over on a new connection, and jobs flow again."""
    names = Topology(settings.topology_prefix)
    proxy = await broker_proxy(settings)
    worker_settings = settings.model_copy(update={"amqp_url": via(proxy, settings)})
    try:
        with structlog.testing.capture_logs() as logs:
            async with running(Worker(worker_settings)) as worker:
                assert worker.health is not None
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{worker.health.port}", timeout=5) as http:
                    await ready_status(http, lambda r: r.status_code == 200)
                    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
                    async with connection:
                        await (await connection.channel()).exchange_delete(names.dead_letter_exchange)
                    proxy.refusing = True  # keep the worker away until its readiness has been seen to drop
                    await publish_jobs(settings, [b"this is not a job"])
                    dropped = await ready_status(http, lambda r: r.status_code != 200)
                    assert dropped.status_code == 503 and dropped.json()["consuming"] is False
                    proxy.refusing = False
                    back = await ready_status(http, lambda r: r.status_code == 200)
                    assert back.json() == {"broker_connected": True, "consuming": True}
                await publish_jobs(settings, [job_body("after-channel-loss", "ws-channel", {"provider": "nope"})])
                # The refused dead letter comes round again (never acked) and reaches the re-declared exchange.
                await tap.wait_for(lambda: len(tap.dead) == 2 and len(tap.results) == 1)
            assert worker.connections == 2
    finally:
        await proxy.stop()
    assert sorted(d.headers[HEADER_ERROR] for d in tap.dead) == ["invalid_job", "invalid_job"]
    assert b"this is not a job" in [d.body for d in tap.dead]
    assert tap.result_for("after-channel-loss")["error"]["code"] == "invalid_job"
    lost = [e for e in logs if e["event"] == "broker.connection_lost"]
    assert len(lost) == 1 and lost[0]["reason"].startswith("channel closed") and "NOT_FOUND" in lost[0]["reason"]
    # The refused job's handler saw its channel gone and left the message for redelivery; it did not crash.
    assert [e["event"] for e in logs if e["event"].startswith("job.")].count("job.settle_interrupted") == 1
