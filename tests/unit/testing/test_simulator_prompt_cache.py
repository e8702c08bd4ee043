"""The simulator's provider prompt caching: per key, model and prefix, with a TTL and the minimum lengths,
reported in each protocol's own usage fields and in the ledger."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from schemas.models import Provider
from worker.testing.simulator import ProviderSimulator, words
from worker.testing.simulator.prompt_cache import CachePrefix, PromptCache

SYSTEM = " ".join(["policy"] * 1100)  # 1,100 simulator tokens
MARK = {"type": "ephemeral"}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def anthropic(http: httpx.AsyncClient, sim: ProviderSimulator, *, system: Any, key: str = "sk-ant-a",
                    model: str = "claude-sonnet-4-5") -> dict[str, Any]:
    response = await http.post(
        sim.base_url(Provider.ANTHROPIC) + "/v1/messages",
        headers={"x-api-key": key, "anthropic-version": "2023-06-01"},
        json={"model": model, "max_tokens": 20, "system": system, "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 200, response.text
    usage: dict[str, Any] = response.json()["usage"]
    return usage


async def openai(http: httpx.AsyncClient, sim: ProviderSimulator, *, system: str, cache_key: str | None = None
                 ) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "gpt-4o", "messages": [{"role": "system", "content": system},
                                                            {"role": "user", "content": "hi"}]}
    if cache_key is not None:
        body["prompt_cache_key"] = cache_key
    response = await http.post(sim.base_url(Provider.OPENAI) + "/chat/completions",
                               headers={"authorization": "Bearer sk-a"}, json=body)
    assert response.status_code == 200, response.text
    usage: dict[str, Any] = response.json()["usage"]
    return usage


def marked(text: str) -> list[dict[str, Any]]:
    return [{"type": "text", "text": text, "cache_control": MARK}]


async def test_anthropic_writes_then_reads_a_marked_prefix(simulator: ProviderSimulator, http: httpx.AsyncClient
                                                           ) -> None:
    first = await anthropic(http, simulator, system=marked(SYSTEM))
    second = await anthropic(http, simulator, system=marked(SYSTEM))
    assert (first["cache_creation_input_tokens"], first["cache_read_input_tokens"]) == (words(SYSTEM), 0)
    assert (second["cache_creation_input_tokens"], second["cache_read_input_tokens"]) == (0, words(SYSTEM))
    assert first["input_tokens"] == second["input_tokens"] == 1  # "hi": the prefix is not in input_tokens
    ledger = [call.usage for call in simulator.ledger.billed()]
    assert [(u.cache_write_tokens, u.cache_read_tokens) for u in ledger if u] == [(1100, 0), (0, 1100)]


async def test_anthropic_caches_nothing_unmarked_short_or_for_another_key(
    simulator: ProviderSimulator, http: httpx.AsyncClient
) -> None:
    for _ in range(2):
        unmarked = await anthropic(http, simulator, system=SYSTEM)
        assert unmarked["cache_read_input_tokens"] == unmarked["cache_creation_input_tokens"] == 0
        short = await anthropic(http, simulator, system=marked("policy " * 1000))
        assert short["cache_read_input_tokens"] == short["cache_creation_input_tokens"] == 0
        haiku = await anthropic(http, simulator, system=marked(SYSTEM), model="claude-haiku-4-5")
        assert haiku["cache_read_input_tokens"] == haiku["cache_creation_input_tokens"] == 0
    await anthropic(http, simulator, system=marked(SYSTEM), key="sk-ant-a")
    other = await anthropic(http, simulator, system=marked(SYSTEM), key="sk-ant-b")
    assert other["cache_creation_input_tokens"] == 1100, "another key, another cache"


async def test_openai_reads_a_long_prefix_by_itself_per_cache_key(
    simulator: ProviderSimulator, http: httpx.AsyncClient
) -> None:
    first = await openai(http, simulator, system=SYSTEM, cache_key="acme/a")
    second = await openai(http, simulator, system=SYSTEM, cache_key="acme/a")
    other_key = await openai(http, simulator, system=SYSTEM, cache_key="acme/b")
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    assert second["prompt_tokens_details"]["cached_tokens"] == 1024  # 1,024 and whole 128-token steps
    assert second["prompt_tokens"] == first["prompt_tokens"] == 1101
    assert other_key["prompt_tokens_details"]["cached_tokens"] == 0
    short = [await openai(http, simulator, system="policy " * 900) for _ in range(2)]
    assert short[1]["prompt_tokens_details"]["cached_tokens"] == 0


def test_entries_expire_after_their_ttl_and_uses_renew_them() -> None:
    cache = PromptCache(ttl_s=10)
    prefix = CachePrefix(digest="d", tokens=2000)
    use = cache.use
    assert use(Provider.ANTHROPIC, "k", "claude-sonnet-4-5", prefix, now=0).write == 2000
    assert use(Provider.ANTHROPIC, "k", "claude-sonnet-4-5", prefix, now=9).read == 2000
    assert use(Provider.ANTHROPIC, "k", "claude-sonnet-4-5", prefix, now=18).read == 2000, "renewed at 9"
    assert use(Provider.ANTHROPIC, "k", "claude-sonnet-4-5", prefix, now=29).write == 2000, "expired at 28"
    assert use(Provider.MISTRAL, "k", "m", prefix, now=30).read == 0
    assert use(Provider.OLLAMA, None, "m", prefix, now=30).write == 0
