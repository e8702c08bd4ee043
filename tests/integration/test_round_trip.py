"""The walking skeleton end to end: RabbitMQ → Vault transit → provider simulator → result + usage."""

from __future__ import annotations

import aio_pika
import orjson
import structlog

from schemas.models import CompletionResult, Provider, UsageEvent
from tests.broker import BrokerTap, job_body, publish_jobs
from tests.conftest import Sealer
from worker.broker.names import Topology
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-test-RoundTrip0123456789abcdefXYZ"


async def test_job_round_trip_matches_what_the_simulator_served(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, tap: BrokerTap, seal: Sealer
) -> None:
    base_url = simulator.base_url(Provider.OPENAI)
    sealed = seal("ws-round", KEY, Provider.OPENAI, base_url)
    model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url, "sealed_key": sealed}
    body = job_body("job-1", "ws-round", model, content="the quick brown fox", automation_id="auto-1",
                    metadata={"ticket": 42}, tags={"run": "r1"})
    with structlog.testing.capture_logs() as logs:
        await publish_jobs(settings, [body], reply_to=tap.reply_queue)
        await tap.wait_for(lambda: len(tap.results) == 1 and len(tap.usage) == 1 and len(tap.replies) == 1)
    outcome_lines = [e for e in logs if e["event"] == "job.finished"]
    assert len(outcome_lines) == 1, "one log event per job outcome"
    line = outcome_lines[0]
    assert {k: line[k] for k in ("job_id", "workspace_id", "provider", "model", "status", "attempts")} == {
        "job_id": "job-1", "workspace_id": "ws-round", "provider": "openai", "model": "gpt-4o-mini",
        "status": "succeeded", "attempts": 1}
    captured = tap.results[0]
    result = CompletionResult.model_validate_json(captured.body)
    assert line["latency_ms"] == result.latency_ms > 0
    assert captured.routing_key == "ws-round.auto-1.succeeded"
    assert captured.message_id == "job-1"
    assert result.status == "succeeded" and result.error is None
    assert result.output is not None and result.output.text == "sim: the quick brown fox"
    assert result.attempts == 1
    assert result.metadata == {"ticket": 42}
    assert tap.replies[0].correlation_id == "corr-0" and tap.replies[0].json["job_id"] == "job-1"

    calls = simulator.ledger.billed()
    assert len(calls) == 1 and calls[0].usage is not None
    served = calls[0].usage
    assert result.usage == served
    assert (line["input_tokens"], line["output_tokens"]) == (served.input_tokens, served.output_tokens)
    usage = UsageEvent.model_validate_json(tap.usage[0].body)
    assert tap.usage[0].routing_key == "ws-round.openai"
    assert (usage.input_tokens, usage.output_tokens) == (served.input_tokens, served.output_tokens)
    assert usage.job_id == "job-1" and usage.automation_id == "auto-1" and usage.tags == {"run": "r1"}
    assert usage.usage_reported is True and usage.raw_usage is not None
    assert usage.raw_usage["prompt_tokens"] == served.input_tokens + served.cache_read_tokens

    # Acked: nothing left on the jobs queue once the result is out.
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(Topology(settings.topology_prefix).jobs_queue, passive=True)
        assert queue.declaration_result.message_count == 0


async def test_invalid_jobs_are_dead_lettered_and_the_worker_keeps_consuming(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, tap: BrokerTap, seal: Sealer
) -> None:
    base_url = simulator.base_url(Provider.OPENAI)
    sealed = seal("ws-invalid", KEY, Provider.OPENAI, base_url)
    good = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url, "sealed_key": sealed}
    bodies = [
        b"{not json",
        orjson.dumps({"job_id": "bad-1", "workspace_id": "ws-invalid", "model": good, "input": {"messages": []}}),
        orjson.dumps({"job_id": "bad-2", "workspace_id": "ws\n", "model": good}),
        job_body("bad-3", "ws-invalid", {"provider": "openai", "name": "gpt-4o-mini"}),  # keyed, no sealed_key
        job_body("good-1", "ws-invalid", good),
    ]
    await publish_jobs(settings, bodies)
    await tap.wait_for(lambda: len(tap.dead) == 4 and any(r.json["job_id"] == "good-1" for r in tap.results))

    reasons = {c.body: (c.headers["x-byok-error"], c.headers["x-byok-reason"]) for c in tap.dead}
    assert set(reasons) == set(bodies[:4]), "dead letters keep their original bodies"
    assert all(code == "invalid_job" and reason for code, reason in reasons.values())
    assert "not JSON" in reasons[bodies[0]][1]
    assert "input.messages" in reasons[bodies[1]][1]
    assert "sealed_key" in reasons[bodies[3]][1]

    by_job = {r.json["job_id"]: r for r in tap.results}
    for routable in ("bad-1", "bad-3"):
        result = by_job[routable].json
        assert result["status"] == "failed" and result["error"]["code"] == "invalid_job"
        assert by_job[routable].routing_key == "ws-invalid._.failed"
    assert "bad-2" not in by_job, "an invalid workspace id cannot be routed"
    assert by_job["good-1"].json["status"] == "succeeded"
    assert len(simulator.ledger.calls) == 1


async def test_a_sealed_key_opens_only_for_its_workspace_and_endpoint(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, tap: BrokerTap, seal: Sealer
) -> None:
    base_url = simulator.base_url(Provider.OPENAI)
    sealed_a = seal("ws-a", KEY, Provider.OPENAI, base_url)
    seal("ws-b", "sk-test-other-workspace-key-000000")  # ws-b has a transit key of its own
    elsewhere = simulator.root_url + "/elsewhere/v1"
    jobs = [
        job_body("cross-ws", "ws-b", {"provider": "openai", "name": "m", "base_url": base_url, "sealed_key": sealed_a}),
        job_body("cross-url", "ws-a", {"provider": "openai", "name": "m", "base_url": elsewhere,
                                       "sealed_key": sealed_a}),
        job_body("cross-provider", "ws-a", {"provider": "mistral", "name": "m",
                                            "base_url": simulator.base_url(Provider.MISTRAL),
                                            "sealed_key": sealed_a}),
    ]
    await publish_jobs(settings, jobs)
    await tap.wait_for(lambda: len(tap.results) == 3 and len(tap.dead) == 3)

    for captured in tap.results:
        result = captured.json
        assert result["status"] == "failed", result
        assert result["error"]["code"] == "key_unavailable", result
        assert result["attempts"] == 0
    assert {d.headers["x-byok-error"] for d in tap.dead} == {"key_unavailable"}
    assert simulator.ledger.calls == [], "nothing may be sent anywhere when the key does not open"
    # cross-url points at a path the simulator serves no route for: only the all-requests record shows it.
    assert simulator.ledger.requests() == [], "no request of any kind, on any path, may reach the simulator"


async def test_the_plaintext_key_never_reaches_logs_or_messages(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, tap: BrokerTap, seal: Sealer
) -> None:
    base_url = simulator.base_url(Provider.OPENAI)
    sealed = seal("ws-leak", KEY, Provider.OPENAI, base_url)
    jobs = [
        job_body(f"leak-{behaviour}", "ws-leak",
                 {"provider": "openai", "name": f"sim-{behaviour}", "base_url": base_url, "sealed_key": sealed})
        for behaviour in ("ok", "auth", "quota", "error")
    ]
    with structlog.testing.capture_logs() as logs:
        await publish_jobs(settings, jobs)
        await tap.wait_for(lambda: len(tap.results) == 4, timeout_s=30)
    assert {r.json["job_id"]: r.json["status"] for r in tap.results}["leak-ok"] == "succeeded"
    haystacks = [repr(entry) for entry in logs] + [c.body.decode() + repr(c.headers) for c in tap.everything()]
    assert logs, "the worker logged nothing: the capture is not working"
    for haystack in haystacks:
        for start in range(len(KEY) - 11):
            assert KEY[start:start + 12] not in haystack
