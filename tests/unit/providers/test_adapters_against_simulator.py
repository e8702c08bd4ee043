"""The real call path (pooled aiohttp transport, ``call_provider``, each adapter) against the simulator."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from schemas.models import CompletionJob, ErrorCode, Provider
from worker.failures import JobFailure, RetryableFailure
from worker.keys.endpoint import Endpoint
from worker.providers import ADAPTERS, ProviderReply
from worker.providers.call import call_provider
from worker.providers.http_pool import HttpClientPool
from worker.testing.simulator import ProviderSimulator

KEY = "sk-sim-adapter-test-0123456789"


@pytest.fixture
def sim(simulator: ProviderSimulator) -> ProviderSimulator:
    """The shared ``simulator`` fixture (tests/conftest.py), under this file's short name."""
    return simulator


@pytest.fixture
async def pool() -> AsyncIterator[HttpClientPool]:
    clients = HttpClientPool(connect_timeout_s=2, read_timeout_s=5, max_connections=50)
    yield clients
    await clients.aclose()


def job(sim: ProviderSimulator, provider: Provider, model: str, text: str = "tell me a story") -> CompletionJob:
    ref: dict[str, str] = {"provider": provider.value, "name": model, "base_url": sim.base_url(provider)}
    if provider is not Provider.OLLAMA:
        ref["sealed_key"] = "vault:v1:c2VhbGVk"
    return CompletionJob.model_validate({
        "job_id": "j1", "workspace_id": "ws", "model": ref,
        "input": {"system": "be kind", "messages": [{"role": "user", "content": text}], "max_tokens": 50},
    })


async def call(
    sim: ProviderSimulator, pool: HttpClientPool, provider: Provider, model: str, text: str = "hi"
) -> ProviderReply:
    the_job = job(sim, provider, model, text)
    endpoint = Endpoint.resolve(provider, the_job.model.base_url)
    key = None if provider is Provider.OLLAMA else KEY
    return await call_provider(pool.client_for(endpoint.base_url), ADAPTERS[provider], the_job, endpoint, key)


@pytest.mark.parametrize("provider", list(Provider))
@pytest.mark.parametrize("model", ["gpt-like", "sim-cached", "sim-reasoning"])
async def test_replies_and_usage_match_the_ledger(
    sim: ProviderSimulator, pool: HttpClientPool, provider: Provider, model: str
) -> None:
    reply = await call(sim, pool, provider, model, "tell me a story")
    [billed] = sim.ledger.calls
    assert reply.text == "sim: tell me a story"
    assert reply.usage == billed.usage
    assert billed.usage is not None
    # "be kind" + "tell me a story" in (6), "sim: tell me a story" out (5), + 16 reasoning (OpenAI only).
    reasoning = 16 if (provider, model) == (Provider.OPENAI, "sim-reasoning") else 0
    assert billed.usage.total == 6 + 5 + reasoning
    assert billed.usage.reasoning_tokens == reasoning
    assert sim.ledger.totals()["requests"] == 1


@pytest.mark.parametrize("provider", list(Provider))
async def test_nousage_is_unknown_not_zero(sim: ProviderSimulator, pool: HttpClientPool, provider: Provider) -> None:
    reply = await call(sim, pool, provider, "sim-nousage")
    assert reply.usage is None


EXPECTED: dict[str, tuple[ErrorCode, bool]] = {
    "sim-auth": (ErrorCode.AUTH_FAILED, False),
    "sim-quota": (ErrorCode.QUOTA_EXHAUSTED, False),
    "sim-rate": (ErrorCode.RATE_LIMITED, True),
    "sim-overloaded": (ErrorCode.PROVIDER_ERROR, True),
    "sim-error": (ErrorCode.PROVIDER_ERROR, True),
}


@pytest.mark.parametrize("provider", list(Provider))
@pytest.mark.parametrize("model", list(EXPECTED))
async def test_failures_classify(sim: ProviderSimulator, pool: HttpClientPool, provider: Provider, model: str) -> None:
    with pytest.raises(JobFailure) as caught:
        await call(sim, pool, provider, model)
    code, retryable = EXPECTED[model]
    assert (caught.value.code, caught.value.retryable) == (code, retryable)
    if model == "sim-rate":
        assert isinstance(caught.value, RetryableFailure)
        assert caught.value.retry_after_s == 1.0
    assert KEY not in caught.value.message
    assert sim.ledger.totals()["requests"] == 0
