"""Rotate → rewrap → retire with real jobs through the worker before and after each step."""

from __future__ import annotations

import asyncio

import pytest

from schemas.models import Provider
from tests.broker import BrokerTap, byok, job_body, publish_jobs, running
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator, key_fingerprint

KEY = "sk-test-Rotation0123456789abcdefghij"


@pytest.mark.timeout(120)
async def test_rotate_rewrap_retire_with_jobs_before_and_after(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap
) -> None:
    # No cache: every job unseals, so each step's effect shows on the very next job
    # (with the default cache a retired version stops opening within BYOK_UNSEAL_CACHE_TTL_S).
    uncached = settings.model_copy(update={"unseal_cache_ttl_s": 0.0})
    base_url = simulator.base_url(Provider.OPENAI)
    endpoint = ["--provider", "openai", "--base-url", base_url]

    def cli(*args: str, stdin: bytes | None = None) -> str:
        return byok(uncached, *args, stdin=stdin).stdout.decode().strip()

    async def run_job(job_id: str, sealed: str) -> dict[str, object]:
        model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url, "sealed_key": sealed}
        await publish_jobs(uncached, [job_body(job_id, "ws-rot", model)])
        await tap.wait_for(lambda: any(r.json["job_id"] == job_id for r in tap.results))
        return tap.result_for(job_id)

    async with running(Worker(uncached)):
        await asyncio.to_thread(cli, "keys", "create", "ws-rot")
        v1 = await asyncio.to_thread(cli, "keys", "seal", "ws-rot", *endpoint, stdin=KEY.encode())
        assert v1.startswith("vault:v1:")
        assert (await run_job("before-rotate", v1))["status"] == "succeeded"

        await asyncio.to_thread(cli, "keys", "rotate", "ws-rot")
        assert (await run_job("v1-after-rotate", v1))["status"] == "succeeded", "old sealed keys keep working"

        v2 = await asyncio.to_thread(cli, "keys", "rewrap", "ws-rot", *endpoint, stdin=v1.encode() + b"\n")
        assert v2.startswith("vault:v2:")
        assert v2 != v1
        assert (await run_job("v2-after-rewrap", v2))["status"] == "succeeded"

        await asyncio.to_thread(cli, "keys", "retire", "ws-rot")
        retired = await run_job("v1-after-retire", v1)
        assert retired["status"] == "failed"
        assert retired["error"]["code"] == "key_unavailable"  # type: ignore[index]
        assert (await run_job("v2-after-retire", v2))["status"] == "succeeded"

        status = await asyncio.to_thread(cli, "keys", "status", "ws-rot")
        assert "min_decryption_version" in status
        assert KEY not in status
    # Every call that reached the provider carried the one key, and the retired job reached nothing.
    assert {c.key_fingerprint for c in simulator.ledger.calls} == {key_fingerprint(KEY)}
    assert len(simulator.ledger.calls) == 4
    assert [r.protocol for r in simulator.ledger.requests()] == [Provider.OPENAI] * 4, "the retired job reached nothing"
