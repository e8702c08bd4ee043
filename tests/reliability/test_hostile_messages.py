"""What hand-made AMQP messages and oversized outcomes can do to a worker on the real broker (issue #13):
nothing it publishes is larger than its cap, a publisher's headers neither fan a job out nor extend its
life, a reply never lands in the topology's own queues, a NUL never costs a billed call its usage event,
and reading dead letters never wears them out."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote, urlparse

import aio_pika
import orjson
import pytest
from aiohttp import web

import worker.jobs.consumer as consumer_module
from schemas.models import MAX_JOB_BYTES, Provider
from tests.aggregator.test_service import quiet_rules
from tests.broker import BrokerTap, byok, job_body, publish_jobs, running, running_aggregator
from tests.services import rabbitmqctl
from worker.broker.names import DELAY_STEPS_MS, HEADER_TRUNCATED, Topology, result_routing_key
from worker.broker.topology import declare_topology, topology_spec
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

CAP = 64 * 1024
BIG_TEXT = 200_000


@pytest.fixture
async def big_ollama() -> AsyncIterator[str]:
    """An Ollama-protocol server whose every answer is ``BIG_TEXT`` characters long; yields its base URL."""

    async def chat(_request: web.Request) -> web.Response:
        return web.json_response({"model": "llama3", "message": {"role": "assistant", "content": "x" * BIG_TEXT},
                                  "done": True, "done_reason": "stop", "prompt_eval_count": 3, "eval_count": 9})

    app = web.Application()
    app.router.add_post("/api/chat", chat)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


def ollama(simulator: ProviderSimulator, name: str = "llama3") -> dict[str, Any]:
    return {"provider": "ollama", "name": name, "base_url": simulator.base_url(Provider.OLLAMA)}


async def queue_depth(settings: Settings, queue: str) -> int:
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        declared = await (await connection.channel()).declare_queue(queue, passive=True)
        return declared.declaration_result.message_count or 0


# ------------------------------------------------------------------------------- size caps


@pytest.mark.timeout(60)
async def test_a_result_larger_than_the_cap_is_published_as_a_failed_provider_error(
    settings: Settings, tap: BrokerTap, big_ollama: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(consumer_module, "MAX_MESSAGE_BYTES", CAP)
    model = {"provider": "ollama", "name": "llama3", "base_url": big_ollama}
    async with running(Worker(settings)):
        await publish_jobs(settings, [job_body("huge-1", "ws-huge", model)], reply_to=tap.reply_queue)
        await tap.wait_for(lambda: len(tap.results) == 1 and len(tap.usage) == 1 and len(tap.dead) == 1
                           and len(tap.replies) == 1)
    result = tap.result_for("huge-1")
    assert result["status"] == "failed" and result["output"] is None
    assert result["error"]["code"] == "provider_error"
    assert f"the result is larger than the {CAP} bytes" in result["error"]["message"]
    assert tap.results[0].routing_key == result_routing_key("ws-huge", None, "failed")
    assert tap.usage[0].json["output_tokens"] == 9, "the billed call is still accounted"
    assert tap.dead[0].headers["x-byok-error"] == "provider_error"
    assert all(len(c.body) <= CAP for c in tap.everything())


@pytest.mark.timeout(60)
async def test_a_dead_letter_larger_than_a_job_carries_its_beginning_and_its_size(
    settings: Settings, tap: BrokerTap
) -> None:
    body = b"{" + b" " * (2 * MAX_JOB_BYTES) + b"}"
    async with running(Worker(settings)):
        await publish_jobs(settings, [body])
        await tap.wait_for(lambda: len(tap.dead) == 1)
    dead = tap.dead[0]
    assert dead.headers["x-byok-error"] == "invalid_job"
    assert dead.headers[HEADER_TRUNCATED] == len(body)
    assert dead.body == body[:MAX_JOB_BYTES]


# ------------------------------------------------------------------------------- headers


@pytest.mark.timeout(60)
async def test_a_cc_header_does_not_fan_a_delayed_job_out_to_several_delay_queues(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap
) -> None:
    # Every retry goes through the delay queues (1 s here); the first call fails once.
    settings = settings.model_copy(update={"inline_retry_max_s": 0.0})
    steps = [str(step) for step in DELAY_STEPS_MS]
    async with running(Worker(settings)):
        await publish_jobs(settings, [job_body("cc-1", "ws-cc", ollama(simulator, "sim-flaky-1"))],
                           headers={"CC": steps[1:], "BCC": steps[1:]})
        await tap.wait_for(lambda: len(tap.results) == 1)
        names = Topology(settings.topology_prefix)
        depths = [await queue_depth(settings, names.delay_queue(step)) for step in DELAY_STEPS_MS]
    assert depths == [0] * len(DELAY_STEPS_MS), "no copy of the job waits in another delay queue"
    result = tap.result_for("cc-1")
    assert (result["status"], result["attempts"]) == ("succeeded", 2), "its own headers are believed after the delay"
    assert len(simulator.ledger.calls) == 2, "the failed call and the one that succeeded"
    assert len(tap.usage) == 1


SPOOFED = {"x-byok-attempts": 7, "x-byok-first-seen": "2099-01-01T00:00:00+00:00",
           "x-byok-not-before": "2099-01-01T00:00:00+00:00"}


@pytest.mark.timeout(60)
async def test_a_publishers_x_byok_headers_are_not_believed_on_a_fresh_job(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap
) -> None:
    past = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    async with running(Worker(settings)):
        await publish_jobs(settings, [job_body("spoof-expired", "ws-spoof", ollama(simulator), deadline=past),
                                      job_body("spoof-ok", "ws-spoof", ollama(simulator))], headers=SPOOFED)
        await tap.wait_for(lambda: len(tap.results) == 2)
    expired = tap.result_for("spoof-expired")
    assert (expired["status"], expired["error"]["code"], expired["attempts"]) == ("failed", "expired", 0)
    ok = tap.result_for("spoof-ok")
    assert (ok["status"], ok["attempts"]) == ("succeeded", 1), "no attempts skipped"


@pytest.mark.timeout(60)
async def test_a_forged_delay_queue_death_cannot_park_a_job_beyond_the_retry_window(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap
) -> None:
    settings = settings.model_copy(update={"max_retry_window_s": 1.0})
    names = Topology(settings.topology_prefix)
    forged = {**SPOOFED, "x-death": [{"queue": names.delay_queue(DELAY_STEPS_MS[-1]), "reason": "expired",
                                      "count": 1, "exchange": names.delay_exchange}]}
    soon = (datetime.now(UTC) + timedelta(milliseconds=500)).isoformat()
    async with running(Worker(settings)):
        await publish_jobs(settings, [job_body("forged-1", "ws-spoof", ollama(simulator), deadline=soon)],
                           headers=forged)
        await tap.wait_for(lambda: len(tap.results) == 1)
    result = tap.result_for("forged-1")
    assert (result["status"], result["error"]["code"]) == ("failed", "expired"), "the deadline wins"
    assert simulator.ledger.billed() == []


# ------------------------------------------------------------------------------- reply_to


@pytest.mark.timeout(60)
async def test_a_reply_to_naming_a_queue_of_the_topology_is_refused(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap
) -> None:
    names = Topology(settings.topology_prefix)
    async with running(Worker(settings)):
        for i, target in enumerate((names.jobs_queue, names.usage_queue, names.dead_letter_queue)):
            await publish_jobs(settings, [job_body(f"reply-{i}", "ws-reply", ollama(simulator))], reply_to=target)
        await tap.wait_for(lambda: len(tap.results) == 3 and len(tap.usage) == 3)
    assert sorted(r.json["job_id"] for r in tap.results) == ["reply-0", "reply-1", "reply-2"]
    assert all(r.json["status"] == "succeeded" for r in tap.results)
    assert all(u.json.get("schema") == "byok.usage_event.v1" for u in tap.usage), "no result in the usage queue"
    assert tap.dead == [], "no result fed back as a job or into the dead-letter queue"
    assert len(simulator.ledger.billed()) == 3


# ------------------------------------------------------------------------------- NUL


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("field", "patch"), [
    ("model.name", {"model_name": "llama\u00003"}),
    ("tags", {"tags": {"run\u0000": "r-1"}}),
    ("tags", {"tags": {"run": "r\u00001"}}),
    ("metadata", {"metadata": {"note": "a\u0000b"}}),
])
async def test_a_nul_in_a_stored_string_is_an_invalid_job_before_any_call(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, field: str, patch: dict[str, Any]
) -> None:
    extra = {k: v for k, v in patch.items() if k != "model_name"}
    body = job_body("nul-1", "ws-nul", ollama(simulator, patch.get("model_name", "llama3")), **extra)
    async with running(Worker(settings)):
        await publish_jobs(settings, [body])
        await tap.wait_for(lambda: len(tap.results) == 1 and len(tap.dead) == 1)
    error = tap.result_for("nul-1")["error"]
    assert error["code"] == "invalid_job" and error["message"].startswith(f"{field}: ")
    assert "\x00" not in error["message"] and "\x00" not in tap.dead[0].headers["x-byok-reason"]
    assert simulator.ledger.billed() == [] and tap.usage == []


@pytest.mark.timeout(60)
async def test_a_nul_in_the_job_id_is_dead_lettered_without_a_result_or_a_call(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap
) -> None:
    async with running(Worker(settings)):
        await publish_jobs(settings, [job_body("nul\u0000id", "ws-nul", ollama(simulator))])
        await tap.wait_for(lambda: len(tap.dead) == 1)
    assert tap.dead[0].headers["x-byok-error"] == "invalid_job"
    assert tap.dead[0].headers["x-byok-reason"].startswith("job_id: ")
    assert tap.results == [] and simulator.ledger.billed() == []


@pytest.mark.timeout(60)
async def test_what_the_aggregator_cannot_store_is_dead_lettered_not_dropped(settings: Settings) -> None:
    names = Topology(settings.topology_prefix)
    usage = orjson.dumps({"schema": "byok.usage_event.v1", "event_id": "ev-nul", "job_id": "j", "workspace_id": "ws",
                          "tags": {"k": "v\u0000"}, "provider": "openai", "model": "gpt", "status": "succeeded",
                          "occurred_at": "2026-12-04T12:00:00Z", "latency_ms": 1.0, "input_tokens": 1})
    async with running_aggregator(quiet_rules(settings)):
        connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            for exchange, key, body in ((names.usage_exchange, "ws.openai", usage),
                                        (names.results_exchange, "ws._.failed", b"not a result")):
                await (await channel.get_exchange(exchange)).publish(aio_pika.Message(body), routing_key=key)
            dead = await channel.get_queue(names.aggregator_dead_letter_queue)
            bodies: list[bytes] = []
            while len(bodies) < 2:
                message = await dead.get(no_ack=True, fail=False)
                if message is None:
                    await asyncio.sleep(0.05)
                    continue
                bodies.append(message.body)
    assert sorted(bodies) == sorted([usage, b"not a result"])


# ------------------------------------------------------------------------------- reading dead letters


@pytest.mark.timeout(120)
async def test_reading_the_dead_letter_queue_does_not_wear_its_messages_out(settings: Settings) -> None:
    names = Topology(settings.topology_prefix)
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel, topology_spec(names, delivery_limit=settings.delivery_limit))
        await (await channel.get_exchange(names.dead_letter_exchange)).publish(
            aio_pika.Message(job_body("kept-1", "ws-dlq", {}), message_id="kept-1",
                             headers={"x-byok-error": "provider_error", "x-byok-reason": "outage"}),
            routing_key="")
    # RabbitMQ 4's default delivery limit (20) played by a policy of 2 on this broker.
    vhost = unquote(urlparse(settings.amqp_url.get_secret_value()).path.lstrip("/"))
    policy = f"dlq-limit-{names.prefix}"
    rabbitmqctl("set_policy", "-p", vhost, "--apply-to", "queues", policy,
                f"^{re.escape(names.dead_letter_queue)}$", '{"delivery-limit": 2}')
    try:
        for _ in range(5):
            listed = orjson.loads((await asyncio.to_thread(byok, settings, "dlq", "list", "--json")).stdout)
            assert [v["message_id"] for v in listed] == ["kept-1"]
        shown = orjson.loads((await asyncio.to_thread(byok, settings, "dlq", "show", "kept-1")).stdout)
    finally:
        rabbitmqctl("clear_policy", "-p", vhost, policy)
    assert shown["headers"]["x-byok-reason"] == "outage"
    assert await queue_depth(settings, names.dead_letter_queue) == 1
