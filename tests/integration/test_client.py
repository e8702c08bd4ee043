"""``worker.client`` against the real broker, a real worker and the provider simulator: run, results, timeout."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiormq
import pytest

from schemas.models import CompletionJob, CompletionResult, Provider, Status
from tests.broker import BrokerTap, byok
from tests.conftest import Sealer
from tests.services import free_port
from worker.client import Client, JobNotRouted, ResultSubscription
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-test-ClientLibrary0123456789abcdef"


def client_for(settings: Settings) -> Client:
    return Client(settings.amqp_url, topology_prefix=settings.topology_prefix)


def openai_job(job_id: str, workspace: str, model: dict[str, Any], *, automation: str | None = None,
               content: str = "hello from the client") -> dict[str, Any]:
    job: dict[str, Any] = {"job_id": job_id, "workspace_id": workspace, "model": model,
                           "input": {"messages": [{"role": "user", "content": content}]}}
    if automation:
        job["automation_id"] = automation
    return job


def simulated_model(settings: Settings, simulator: ProviderSimulator, seal: Sealer, workspace: str,
                    name: str = "gpt-4o-mini") -> dict[str, Any]:
    base_url = simulator.base_url(Provider.OPENAI)
    return {"provider": "openai", "name": name, "base_url": base_url,
            "sealed_key": seal(workspace, KEY, Provider.OPENAI, base_url)}


async def collect(subscription: ResultSubscription, count: int) -> list[CompletionResult]:
    results = []
    async with asyncio.timeout(30):
        async for result in subscription:
            results.append(result)
            if len(results) == count:
                break
    return results


async def test_run_returns_the_result_the_simulator_served(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, seal: Sealer
) -> None:
    model = simulated_model(settings, simulator, seal, "ws-client")
    async with client_for(settings) as client:
        result = await client.run(openai_job("client-run-1", "ws-client", model, content="the quick brown fox"),
                                  timeout=30)
        typed = CompletionJob.model_validate(openai_job("client-run-2", "ws-client", model, content="typed job"))
        second = await client.run(typed, timeout=30)

    assert isinstance(result, CompletionResult)
    assert (result.job_id, result.status) == ("client-run-1", Status.SUCCEEDED)
    assert result.output is not None and result.output.text == "sim: the quick brown fox"
    assert second.job_id == "client-run-2" and second.output is not None and second.output.text == "sim: typed job"
    served = [call.usage for call in simulator.ledger.billed()]
    assert [result.usage, second.usage] == served
    print(f"\nclient.run: two jobs answered through reply_to; usage {result.usage} equals the simulator's")


async def test_results_are_filtered_by_workspace_automation_and_status(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, seal: Sealer
) -> None:
    ok_a = simulated_model(settings, simulator, seal, "ws-fa")
    ok_b = simulated_model(settings, simulator, seal, "ws-fb")
    refused_a = simulated_model(settings, simulator, seal, "ws-fa", name="sim-auth")  # the provider answers 401
    jobs = [
        openai_job("f-1", "ws-fa", ok_a, automation="auto-1"),
        openai_job("f-2", "ws-fa", ok_a, automation="auto-2"),
        openai_job("f-3", "ws-fb", ok_b, automation="auto-2"),
        openai_job("f-4", "ws-fa", refused_a, automation="auto-1"),
        openai_job("f-5", "ws-fa", ok_a),
    ]
    async with (
        client_for(settings) as client,
        client.results(workspace="ws-fa", status="succeeded") as succeeded_in_a,
        client.results(automation="auto-2") as auto_2,
        client.results(workspace="ws-fa", automation="auto-1", status="failed") as failed_a_1,
        client.results() as everything,
    ):
        assert [await client.submit(job) for job in jobs] == [job["job_id"] for job in jobs]
        seen_all = await collect(everything, len(jobs))
        seen_a = await collect(succeeded_in_a, 3)
        seen_2 = await collect(auto_2, 2)
        seen_failed = await collect(failed_a_1, 1)
        # No result outside a filter reached it: every result the worker published already reached `everything`.
        assert [q.waiting for q in (succeeded_in_a, auto_2, failed_a_1, everything)] == [0, 0, 0, 0]

    assert sorted(r.job_id for r in seen_all) == ["f-1", "f-2", "f-3", "f-4", "f-5"]
    assert sorted(r.job_id for r in seen_a) == ["f-1", "f-2", "f-5"]
    assert sorted(r.job_id for r in seen_2) == ["f-2", "f-3"]
    assert [(r.job_id, r.status) for r in seen_failed] == [("f-4", Status.FAILED)]
    assert seen_failed[0].error is not None and seen_failed[0].error.code == "auth_failed"


async def test_run_without_a_worker_raises_timeout_error_within_the_timeout(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    # The tap declared the topology: the job is queued, and no worker takes it.
    model = simulated_model(settings, simulator, seal, "ws-timeout")
    async with client_for(settings) as client:
        started = time.monotonic()
        expected = r"job client-timeout-1: published, but no result came within 1.5s"
        with pytest.raises(TimeoutError, match=expected) as raised:
            await client.run(openai_job("client-timeout-1", "ws-timeout", model), timeout=1.5)
        waited = time.monotonic() - started
    assert 1.5 <= waited < 2.5, waited
    assert settings.topology_prefix in str(raised.value), "the message names the queue a worker should consume"
    print(f"\nclient.run timeout=1.5s without a worker: TimeoutError after {waited:.2f}s")


async def test_a_missing_topology_is_named_and_an_unbound_exchange_is_refused(settings: Settings) -> None:
    async with client_for(settings) as client:
        with pytest.raises(aiormq.exceptions.ChannelNotFoundEntity, match=r"no exchange '.*\.jobs'"):
            await client.submit(openai_job("no-topology", "ws-x", {"provider": "ollama", "name": "llama3"}))
        # The exchange alone, with no queue bound: the broker would drop the job; the client says so.
        channel = await (await client._current_link()).connection.channel()
        await channel.declare_exchange(client.names.jobs_exchange, "direct", durable=True)
        try:
            with pytest.raises(JobNotRouted, match="no queue is bound"):
                await client.submit(openai_job("no-queue", "ws-x", {"provider": "ollama", "name": "llama3"}))
        finally:
            await channel.exchange_delete(client.names.jobs_exchange)
            await channel.close()


async def test_refused_credentials_fail_the_client_at_once(settings: Settings) -> None:
    parts = urlsplit(settings.amqp_url.get_secret_value())
    wrong = urlunsplit(parts._replace(netloc=f"guest:not-the-password@{parts.hostname}:{parts.port or 5672}"))
    with pytest.raises(aiormq.exceptions.ProbableAuthenticationError) as refused:
        async with Client(wrong, topology_prefix=settings.topology_prefix):
            pass
    assert "not-the-password" not in str(refused.value)


async def test_a_stopped_broker_fails_the_client_at_once() -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionError):
        async with Client(f"amqp://guest:guest@127.0.0.1:{free_port()}/", topology_prefix="nowhere"):
            pass
    assert time.monotonic() - started < 5


async def test_byok_submit_waits_through_the_client(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, seal: Sealer
) -> None:
    model = simulated_model(settings, simulator, seal, "ws-cli-wait")
    job = json.dumps(openai_job("cli-wait-1", "ws-cli-wait", model, content="from the command")).encode()
    waited = await asyncio.to_thread(byok, settings, "submit", "--file", "-", "--wait", "--timeout", "30", stdin=job)
    printed = json.loads(waited.stdout)
    assert (printed["job_id"], printed["status"], printed["output"]["text"]) == (
        "cli-wait-1", "succeeded", "sim: from the command")
    published = await asyncio.to_thread(byok, settings, "submit", "--file", "-",
                                        stdin=job.replace(b"cli-wait-1", b"cli-wait-2"))
    assert published.stdout.decode() == "published cli-wait-2\n"
