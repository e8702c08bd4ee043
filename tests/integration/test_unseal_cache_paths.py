"""The unseal cache's paths through ``JobRunner``, against the real OpenBao and the provider simulator.

Single flight, eviction on a provider 401, serving cached keys through a Vault outage, the
``BYOK_ALLOWED_HOSTS`` allow-list, and what ``byok keys retire`` does to a key that is still cached.
The runner is put together exactly as ``Worker.run`` does it (same token source, decryptor transport,
HTTP pool and cache); only the broker is left out. Vault calls are counted with the worker's own
``byok_vault_call_seconds`` histogram, provider requests with the simulator's ledger.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from httpx_aiohttp import AiohttpTransport
from pydantic import SecretStr

from schemas.models import Provider
from tests.broker import job_body
from tests.conftest import Sealer
from tests.services import start_vault
from worker.jobs.metrics import WorkerMetrics
from worker.jobs.pipeline import Completed, Delivery, JobRunner, Outcome, RetryLater
from worker.jobs.retry import RetryPolicy
from worker.jobs.service import VAULT_LIMITS
from worker.keys.admin import KeyAdmin
from worker.keys.auth import make_token_source
from worker.keys.endpoint import Endpoint
from worker.keys.transit import TransitDecryptor
from worker.keys.unseal_cache import UnsealCache
from worker.providers.http_pool import HttpClientPool
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator, key_fingerprint

MODEL = "gpt-4o-mini"


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def provider_key(label: str) -> str:
    return f"sk-test-{label}-{secrets.token_hex(12)}"


@dataclass
class Rig:
    runner: JobRunner
    cache: UnsealCache
    metrics: WorkerMetrics

    def vault_calls(self, outcome: str | None = None) -> int:
        """Vault transit calls made so far (every decrypt attempt, whatever it answered)."""
        return int(sum(
            sample.value
            for metric in self.metrics.vault_latency.collect()
            for sample in metric.samples
            if sample.name.endswith("_count") and (outcome is None or sample.labels.get("outcome") == outcome)
        ))

    async def run(self, body: bytes, **delivery: Any) -> Outcome:
        return await self.runner.run(Delivery(body, **delivery))


@contextlib.asynccontextmanager
async def job_runner(settings: Settings) -> AsyncIterator[Rig]:
    """A ``JobRunner`` wired as ``Worker.run`` wires it, on the real Vault and real HTTP."""
    metrics = WorkerMetrics()
    tokens = make_token_source(settings)
    decryptor = TransitDecryptor(
        addr=settings.vault_addr, tokens=tokens, mount=settings.vault_transit_mount,
        key_prefix=settings.vault_key_prefix, namespace=settings.vault_namespace,
        timeout_s=settings.vault_timeout_s, observe=metrics.vault_call,
        transport=AiohttpTransport(limits=VAULT_LIMITS),
    )
    http = HttpClientPool(
        connect_timeout_s=settings.provider_connect_timeout_s, read_timeout_s=settings.provider_read_timeout_s,
        max_connections=settings.provider_max_connections, allowed_hosts=settings.allowed_hosts,
    )
    cache = UnsealCache(ttl_s=settings.unseal_cache_ttl_s, max_entries=settings.unseal_cache_size)
    try:
        runner = JobRunner(RetryPolicy.from_settings(settings), allowed_hosts=settings.allowed_hosts,
                           decryptor=decryptor, http=http, cache=cache, metrics=metrics)
        yield Rig(runner, cache, metrics)
    finally:
        await http.aclose()
        await decryptor.aclose()
        await tokens.aclose()


def openai_model(base_url: str, sealed: str, name: str = MODEL) -> dict[str, Any]:
    return {"provider": "openai", "name": name, "base_url": base_url, "sealed_key": sealed}


def completed(outcome: Outcome) -> dict[str, Any]:
    assert isinstance(outcome, Completed), f"expected a final result, got {outcome!r}"
    return outcome.result.model_dump(mode="json")


def succeeded(outcome: Outcome) -> dict[str, Any]:
    result = completed(outcome)
    assert result["status"] == "succeeded", result.get("error")
    return result


def failed_with(outcome: Outcome, code: str) -> dict[str, Any]:
    result = completed(outcome)
    assert result["status"] == "failed", f"expected {code}, the job succeeded"
    assert result["error"]["code"] == code, result["error"]
    return result


# -- 1. single flight ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("ttl_s", [300.0, 0.0], ids=["cache-on", "cache-off"])
async def test_concurrent_jobs_with_one_sealed_key_make_one_vault_decrypt(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer, ttl_s: float
) -> None:
    # With the cache off (TTL 0) nothing is stored, so one call for 20 jobs can only be the single flight.
    workspace, key = unique("ws-flight"), provider_key("Flight")
    base_url = simulator.base_url(Provider.OPENAI)
    model = openai_model(base_url, seal(workspace, key, Provider.OPENAI, base_url))
    async with job_runner(settings.model_copy(update={"unseal_cache_ttl_s": ttl_s})) as rig:
        outcomes = await asyncio.gather(*(rig.run(job_body(f"flight-{i}", workspace, model)) for i in range(20)))
        for outcome in outcomes:
            succeeded(outcome)
        assert rig.vault_calls() == 1, "20 concurrent jobs on one sealed key must share one decrypt"
        assert rig.vault_calls("200") == 1
        assert (rig.cache.misses, rig.cache.hits) == (1, 19)
        calls = simulator.ledger.calls
        assert len(calls) == 20
        assert {c.key_fingerprint for c in calls} == {key_fingerprint(key)}, "every call carried the unsealed key"

        # A second wave: served from the cache when it is on, one more shared decrypt when it is off.
        more = await asyncio.gather(*(rig.run(job_body(f"wave2-{i}", workspace, model)) for i in range(20)))
        for outcome in more:
            succeeded(outcome)
        assert rig.vault_calls() == (1 if ttl_s > 0 else 2)
        assert len(simulator.ledger.calls) == 40


# -- 2. a provider 401 evicts --------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_a_provider_401_evicts_the_cached_key_and_the_next_job_unseals_again(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer
) -> None:
    workspace, key = unique("ws-401"), provider_key("Evict")
    base_url = simulator.base_url(Provider.OPENAI)
    sealed = seal(workspace, key, Provider.OPENAI, base_url)
    async with job_runner(settings) as rig:
        succeeded(await rig.run(job_body("warm", workspace, openai_model(base_url, sealed))))
        assert rig.vault_calls() == 1
        assert len(rig.cache) == 1

        # Another provider failure (429 insufficient_quota) leaves the key cached.
        failed_with(await rig.run(job_body("quota", workspace, openai_model(base_url, sealed, "sim-quota"))),
                    "quota_exhausted")
        assert len(rig.cache) == 1
        succeeded(await rig.run(job_body("after-quota", workspace, openai_model(base_url, sealed))))
        assert rig.vault_calls() == 1, "a non-auth failure must not evict"

        # The simulator answers 401 for model sim-auth: auth_failed, and the entry is gone.
        result = failed_with(await rig.run(job_body("revoked", workspace, openai_model(base_url, sealed, "sim-auth"))),
                             "auth_failed")
        assert result["error"]["provider_status"] == 401
        assert rig.vault_calls() == 1, "the 401 job itself was served from the cache"
        assert len(rig.cache) == 0, "a 401 must evict the cache entry"

        succeeded(await rig.run(job_body("after-401", workspace, openai_model(base_url, sealed))))
        assert rig.vault_calls() == 2, "the next job with the same sealed key must decrypt afresh"
        succeeded(await rig.run(job_body("cached-again", workspace, openai_model(base_url, sealed))))
        assert rig.vault_calls() == 2
    statuses = [(c.model, c.status) for c in simulator.ledger.calls]
    assert statuses == [(MODEL, 200), ("sim-quota", 429), (MODEL, 200), ("sim-auth", 401), (MODEL, 200), (MODEL, 200)]
    assert {c.key_fingerprint for c in simulator.ledger.calls} == {key_fingerprint(key)}


# -- 3. Vault outage ----------------------------------------------------------------------------------


@pytest.mark.timeout(60)
async def test_cached_keys_keep_working_while_vault_is_stopped_and_uncached_ones_are_retried_later(
    settings: Settings, simulator: ProviderSimulator
) -> None:
    # A Vault of its own: stopping the shared one would stall every other test's decrypts.
    own_vault = await asyncio.to_thread(start_vault)
    try:
        own = settings.model_copy(update={
            "vault_addr": own_vault.addr, "vault_token": SecretStr(own_vault.root_token),
            "vault_timeout_s": 0.5, "inline_retry_max_s": 0.0, "retry_base_delay_s": 0.05,
        })
        assert own.unseal_cache_ttl_s == 300.0, "the default TTL"
        workspace, base_url = "ws-outage", simulator.base_url(Provider.OPENAI)
        endpoint = Endpoint.resolve(Provider.OPENAI, base_url)
        admin = KeyAdmin.from_settings(own)
        await asyncio.to_thread(admin.create, workspace)
        cached_key, uncached_key = provider_key("Cached"), provider_key("Uncached")
        sealed_cached = await asyncio.to_thread(admin.seal, workspace, endpoint, SecretStr(cached_key))
        sealed_uncached = await asyncio.to_thread(admin.seal, workspace, endpoint, SecretStr(uncached_key))

        async with job_runner(own) as rig:
            succeeded(await rig.run(job_body("warm", workspace, openai_model(base_url, sealed_cached))))
            assert rig.vault_calls() == 1

            own_vault.process.send_signal(signal.SIGSTOP)
            try:
                for i in range(3):
                    succeeded(await rig.run(job_body(f"outage-cached-{i}", workspace,
                                                     openai_model(base_url, sealed_cached))))
                assert rig.vault_calls() == 1, "a cached key needs no Vault call"

                uncached_body = job_body("outage-uncached", workspace, openai_model(base_url, sealed_uncached))
                started = time.monotonic()
                later = await rig.run(uncached_body)
                took = time.monotonic() - started
            finally:
                own_vault.process.send_signal(signal.SIGCONT)

            assert isinstance(later, RetryLater), f"an uncached key during the outage must be retried, got {later!r}"
            assert later.delay_s > 0
            assert later.attempts == 0, "no provider call was made, so no attempt is counted"
            assert "Vault" in later.reason
            assert took < 5, "the decrypt must give up after BYOK_VAULT_TIMEOUT_S"
            assert rig.vault_calls("error") == 1
            assert len(simulator.ledger.calls) == 4, "the retried job reached no provider"

            # Vault is back: the delayed job, redelivered with its history, now succeeds.
            retried = succeeded(await rig.run(uncached_body, attempts_before=later.attempts,
                                              first_seen=later.first_seen))
            assert retried["attempts"] == 1
            assert rig.vault_calls("200") == 2
        fingerprints = [c.key_fingerprint for c in simulator.ledger.calls]
        assert fingerprints == [key_fingerprint(cached_key)] * 4 + [key_fingerprint(uncached_key)]
    finally:
        own_vault.process.send_signal(signal.SIGCONT)
        await asyncio.to_thread(own_vault.stop)


# -- 4. BYOK_ALLOWED_HOSTS ----------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "parsed"), [
    ("api.openai.com", {"api.openai.com"}),
    (" API.OpenAI.com , LocalHost,,127.0.0.1 ,", {"api.openai.com", "localhost", "127.0.0.1"}),
    ("Api.Mistral.AI,api.mistral.ai", {"api.mistral.ai"}),
])
def test_allowed_hosts_are_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, raw: str, parsed: set[str]
) -> None:
    monkeypatch.setenv("BYOK_ALLOWED_HOSTS", raw)
    assert Settings().allowed_hosts == frozenset(parsed)
    monkeypatch.delenv("BYOK_ALLOWED_HOSTS")
    assert Settings().allowed_hosts is None, "unset: no allow-list"


@pytest.mark.parametrize("raw", ["", " ", " , ,"])
def test_allowed_hosts_set_but_empty_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("BYOK_ALLOWED_HOSTS", raw)
    with pytest.raises(ValueError, match="names no host"):
        Settings()


@pytest.mark.timeout(30)
async def test_a_host_outside_allowed_hosts_is_refused_before_vault_and_provider(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The simulator answers on both 127.0.0.1 and localhost; only localhost is listed.
    monkeypatch.setenv("BYOK_ALLOWED_HOSTS", " LocalHost , API.OPENAI.COM ,")
    allowed = Settings().allowed_hosts
    assert allowed == frozenset({"localhost", "api.openai.com"})
    listed = settings.model_copy(update={"allowed_hosts": allowed})
    workspace, key = unique("ws-hosts"), provider_key("Hosts")
    ip_url = simulator.base_url(Provider.OPENAI)
    name_url = ip_url.replace("127.0.0.1", "LOCALHOST")
    ollama_ip_url = simulator.base_url(Provider.OLLAMA)
    ollama_name_url = ollama_ip_url.replace("127.0.0.1", "localhost")
    # Both sealed for their own endpoint, so either would open and work were it not for the list.
    sealed_ip = seal(workspace, key, Provider.OPENAI, ip_url)
    sealed_name = seal(workspace, key, Provider.OPENAI, Endpoint.resolve(Provider.OPENAI, name_url).base_url)
    ollama = {"provider": "ollama", "name": "llama3"}

    async with job_runner(listed) as rig:
        result = failed_with(await rig.run(job_body("unlisted-key", workspace, openai_model(ip_url, sealed_ip))),
                             "key_unavailable")
        assert "BYOK_ALLOWED_HOSTS" in result["error"]["message"]
        assert result["attempts"] == 0
        result = failed_with(await rig.run(job_body("unlisted-ollama", workspace,
                                                    {**ollama, "base_url": ollama_ip_url})), "invalid_job")
        assert "BYOK_ALLOWED_HOSTS" in result["error"]["message"]
        assert simulator.ledger.requests() == [], "nothing may reach a host that is not listed"
        assert rig.vault_calls() == 0, "a refused destination is refused before any unseal"
        assert len(rig.cache) == 0

        succeeded(await rig.run(job_body("listed-key", workspace, openai_model(name_url, sealed_name))))
        succeeded(await rig.run(job_body("listed-ollama", workspace, {**ollama, "base_url": ollama_name_url})))
        assert rig.vault_calls() == 1
        assert len(simulator.ledger.requests()) == 2

    # Control: with 127.0.0.1 listed too, the refused job goes through (it was the list that stopped it).
    async with job_runner(settings.model_copy(update={"allowed_hosts": allowed | {"127.0.0.1"}})) as rig:
        succeeded(await rig.run(job_body("no-list", workspace, openai_model(ip_url, sealed_ip))))
    assert {c.key_fingerprint for c in simulator.ledger.calls if c.protocol is Provider.OPENAI} == {
        key_fingerprint(key)
    }


# -- 5. retire and the cache --------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_a_retired_key_still_in_the_cache_keeps_opening_until_its_ttl_expires(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer
) -> None:
    # Current, documented behaviour: retire takes effect for a cached key only after BYOK_UNSEAL_CACHE_TTL_S.
    ttl_s = 1.0
    workspace, key = unique("ws-retire"), provider_key("Retire")
    base_url = simulator.base_url(Provider.OPENAI)
    sealed_v1 = seal(workspace, key, Provider.OPENAI, base_url)
    assert sealed_v1.startswith("vault:v1:")
    admin = KeyAdmin.from_settings(settings)
    await asyncio.to_thread(admin.rotate, workspace)
    model = openai_model(base_url, sealed_v1)

    async with job_runner(settings.model_copy(update={"unseal_cache_ttl_s": ttl_s})) as rig, \
            job_runner(settings.model_copy(update={"unseal_cache_ttl_s": 0.0})) as uncached:
        before_fill = time.monotonic()
        succeeded(await rig.run(job_body("cached", workspace, model)))
        after_fill = time.monotonic()
        assert rig.vault_calls() == 1

        # What `byok keys retire` runs: min_decryption_version goes to the latest version (2).
        _previous, status = await asyncio.to_thread(admin.retire, workspace)
        assert status.min_decryption_version == 2

        assert time.monotonic() - before_fill < ttl_s, "setup too slow: the entry expired before the check"
        succeeded(await rig.run(job_body("right-after-retire", workspace, model)))
        assert rig.vault_calls() == 1, "served from the cache, Vault was not asked"
        # Vault itself no longer opens v1: the success above came from the cache alone.
        failed_with(await uncached.run(job_body("uncached-after-retire", workspace, model)), "key_unavailable")
        assert uncached.vault_calls("400") == 1

        # Kept: the worker's own clock must pass the TTL; nothing to wait on but time itself.
        await asyncio.sleep(max(0.0, after_fill + ttl_s + 0.1 - time.monotonic()))
        failed_with(await rig.run(job_body("after-ttl", workspace, model)), "key_unavailable")
        assert rig.vault_calls() == 2
        assert rig.vault_calls("400") == 1
        assert len(rig.cache) == 0
    assert [c.status for c in simulator.ledger.calls] == [200, 200], "the refused jobs reached no provider"
