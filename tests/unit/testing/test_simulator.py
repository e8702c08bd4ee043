"""The provider simulator: each protocol's shapes, behaviours, auth, latency and the ledger."""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import httpx
import pytest

from schemas.models import Provider, TokenCounts
from tests.waiting import wait_until
from worker.testing.simulator import ProviderSimulator, SeenRequest, parse_behavior, serve_forever

KEY = "sk-test-simulator-0123456789abcdef"
ANTHROPIC_KEY = "sk-ant-test-simulator-0123456789"

PATHS = {
    Provider.OPENAI: "/chat/completions",
    Provider.MISTRAL: "/v1/chat/completions",
    Provider.ANTHROPIC: "/v1/messages",
    Provider.OLLAMA: "/api/chat",
}


@pytest.fixture
def sim(simulator: ProviderSimulator) -> ProviderSimulator:
    """The shared ``simulator`` fixture (tests/conftest.py), under this file's short name."""
    return simulator


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(timeout=30, limits=limits) as http:
        yield http


def body_for(
    provider: Provider,
    model: str,
    user: str,
    *,
    system: str | None = None,
    max_tokens: int | None = None,
) -> dict[str, Any]:
    messages: list[dict[str, str]] = [
        {"role": "user", "content": "first question here"},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": user},
    ]
    body: dict[str, Any] = {"model": model}
    if provider is Provider.ANTHROPIC:
        body["max_tokens"] = max_tokens or 1024
        if system:
            body["system"] = system
    else:
        if system:
            messages.insert(0, {"role": "system", "content": system})
        if max_tokens is not None:
            if provider is Provider.OLLAMA:
                body["options"] = {"num_predict": max_tokens}
            else:
                body["max_tokens"] = max_tokens
    if provider is Provider.OLLAMA:
        body["stream"] = False
    body["messages"] = messages
    return body


def headers_for(provider: Provider, key: str | None = KEY, **extra: str) -> dict[str, str]:
    headers = dict(extra)
    if provider is Provider.ANTHROPIC:
        headers["anthropic-version"] = "2023-06-01"
        if key:
            headers["x-api-key"] = key
    elif provider is not Provider.OLLAMA and key:
        headers["authorization"] = f"Bearer {key}"
    return headers


async def post(
    client: httpx.AsyncClient,
    sim: ProviderSimulator,
    provider: Provider,
    model: str = "some-model",
    user: str = "hello there simulator",
    *,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> httpx.Response:
    return await client.post(
        sim.base_url(provider) + PATHS[provider],
        json=body_for(provider, model, user, **kwargs),
        headers=headers if headers is not None else headers_for(provider),
    )


def reply_text(provider: Provider, body: dict[str, Any]) -> str:
    if provider is Provider.ANTHROPIC:
        return str(body["content"][0]["text"])
    if provider is Provider.OLLAMA:
        return str(body["message"]["content"])
    return str(body["choices"][0]["message"]["content"])


# Prompt words: "first question here"(3) + "an answer"(2) + user; reply "sim: " + user[:40].
USER = "hello there simulator"  # 3 words -> prompt 8 words; reply "sim: hello there simulator" = 4 words


@pytest.mark.parametrize("provider", list(Provider))
async def test_ok_reply_and_usage_are_deterministic(
    sim: ProviderSimulator, client: httpx.AsyncClient, provider: Provider
) -> None:
    response = await post(client, sim, provider, user=USER, system="be brief")
    assert response.status_code == 200, response.text
    body = response.json()
    assert reply_text(provider, body) == "sim: " + USER
    prompt, output = 8 + 2, 4
    if provider is Provider.OPENAI:
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["finish_reason"] == "stop"
        usage = body["usage"]
        assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (
            prompt, output, prompt + output)
        assert usage["prompt_tokens_details"]["cached_tokens"] == 0
        assert usage["completion_tokens_details"]["reasoning_tokens"] == 0
    elif provider is Provider.MISTRAL:
        assert body["usage"] == {"prompt_tokens": prompt, "completion_tokens": output, "total_tokens": prompt + output}
    elif provider is Provider.ANTHROPIC:
        assert body["type"] == "message"
        assert body["role"] == "assistant"
        assert body["stop_reason"] == "end_turn"
        assert body["usage"]["input_tokens"] == prompt
        assert body["usage"]["output_tokens"] == output
        assert body["usage"]["cache_read_input_tokens"] == 0
        assert body["usage"]["cache_creation_input_tokens"] == 0
    else:
        assert body["done"] is True
        assert body["done_reason"] == "stop"
        assert (body["prompt_eval_count"], body["eval_count"]) == (prompt, output)
        assert body["total_duration"] > 0

    [call] = sim.ledger.calls
    assert call.protocol is provider
    assert call.status == 200
    assert call.behavior == "ok"
    assert call.usage == TokenCounts(input_tokens=prompt, output_tokens=output)
    expected_key = None if provider is Provider.OLLAMA else hashlib.sha256(KEY.encode()).hexdigest()[:12]
    assert call.key_fingerprint == expected_key
    assert sim.ledger.totals() == {
        "requests": 1, "input_tokens": prompt, "cache_read_tokens": 0, "cache_write_tokens": 0,
        "output_tokens": output, "reasoning_tokens": 0,
    }


async def test_reply_is_first_40_chars_of_last_user_message(
    sim: ProviderSimulator, client: httpx.AsyncClient
) -> None:
    long = "x" * 30 + " " + "y" * 30
    response = await post(client, sim, Provider.OPENAI, user=long)
    assert response.json()["choices"][0]["message"]["content"] == "sim: " + long[:40]


@pytest.mark.parametrize(
    ("provider", "finish"),
    [(Provider.OPENAI, "length"), (Provider.MISTRAL, "length"), (Provider.ANTHROPIC, "max_tokens"),
     (Provider.OLLAMA, "length")],
)
async def test_max_tokens_cuts_the_reply(
    sim: ProviderSimulator, client: httpx.AsyncClient, provider: Provider, finish: str
) -> None:
    response = await post(client, sim, provider, user="one two three four five", max_tokens=2)
    body = response.json()
    assert reply_text(provider, body) == "sim: one"
    reason = body.get("stop_reason") or body.get("done_reason") or body["choices"][0]["finish_reason"]
    assert reason == finish
    assert sim.ledger.calls[0].usage is not None
    assert sim.ledger.calls[0].usage.output_tokens == 2


# ------------------------------------------------------------------------------------ errors

ERROR_CASES: list[tuple[Provider, str, int, str | None]] = [
    # provider, behaviour, status, error type (OpenAI/Anthropic/Mistral) or None (Ollama string)
    (Provider.OPENAI, "auth", 401, "invalid_request_error"),
    (Provider.OPENAI, "rate", 429, "requests"),
    (Provider.OPENAI, "quota", 429, "insufficient_quota"),
    (Provider.OPENAI, "overloaded", 503, "server_error"),
    (Provider.OPENAI, "error", 500, "server_error"),
    (Provider.ANTHROPIC, "auth", 401, "authentication_error"),
    (Provider.ANTHROPIC, "rate", 429, "rate_limit_error"),
    (Provider.ANTHROPIC, "quota", 400, "invalid_request_error"),
    (Provider.ANTHROPIC, "overloaded", 529, "overloaded_error"),
    (Provider.ANTHROPIC, "error", 500, "api_error"),
    (Provider.MISTRAL, "auth", 401, None),
    (Provider.MISTRAL, "rate", 429, "rate_limited"),
    (Provider.MISTRAL, "quota", 429, "insufficient_quota"),
    (Provider.MISTRAL, "overloaded", 503, "service_unavailable"),
    (Provider.MISTRAL, "error", 500, "internal_server_error"),
    (Provider.OLLAMA, "auth", 401, None),
    (Provider.OLLAMA, "rate", 429, None),
    (Provider.OLLAMA, "quota", 429, None),
    (Provider.OLLAMA, "overloaded", 503, None),
    (Provider.OLLAMA, "error", 500, None),
]


def assert_error_shape(provider: Provider, body: dict[str, Any], etype: str | None) -> None:
    if provider is Provider.OPENAI:
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == etype
    elif provider is Provider.ANTHROPIC:
        assert body["type"] == "error"
        assert body["error"]["type"] == etype
        assert body["error"]["message"]
    elif provider is Provider.MISTRAL:
        assert isinstance(body["message"], str)
        if etype is not None:
            assert body["object"] == "error"
            assert body["type"] == etype
    else:
        assert isinstance(body["error"], str)
        assert body["error"]


@pytest.mark.parametrize(("provider", "behavior", "status", "etype"), ERROR_CASES)
async def test_error_behaviours_use_each_providers_shape(
    sim: ProviderSimulator, client: httpx.AsyncClient, provider: Provider, behavior: str, status: int,
    etype: str | None,
) -> None:
    response = await post(client, sim, provider, model=f"sim-{behavior}")
    assert response.status_code == status
    assert_error_shape(provider, response.json(), etype)
    if behavior == "rate":
        assert response.headers["retry-after"] == "1"
        assert response.headers["retry-after-ms"] == "1000"
    else:
        assert "retry-after" not in response.headers
    if provider is Provider.OPENAI and behavior == "quota":
        assert response.json()["error"]["code"] == "insufficient_quota"
    [call] = sim.ledger.calls
    assert (call.status, call.behavior, call.usage, call.billed) == (status, behavior, None, False)
    assert sim.ledger.totals()["requests"] == 0


async def test_header_wins_over_model_name(sim: ProviderSimulator, client: httpx.AsyncClient) -> None:
    headers = headers_for(Provider.OPENAI, **{"x-sim-behavior": "ok"})
    assert (await post(client, sim, Provider.OPENAI, model="sim-error", headers=headers)).status_code == 200
    headers = headers_for(Provider.OPENAI, **{"x-sim-behavior": "auth"})
    assert (await post(client, sim, Provider.OPENAI, model="gpt-4o", headers=headers)).status_code == 401
    # An unknown model name is plain ok.
    assert (await post(client, sim, Provider.OPENAI, model="sim-unknown-thing")).status_code == 200


@pytest.mark.parametrize(
    ("value", "expected"),
    [("sim-slow-1500", "slow-1500"), ("flaky-2", "flaky-2"), ("SIM-Cached", "cached"), ("sim-slow-x", None),
     ("sim-cached-reasoning", "cached-reasoning"), ("gpt-4o", None), ("", None)],
)
def test_parse_behavior(value: str, expected: str | None) -> None:
    parsed = parse_behavior(value)
    assert (parsed.label if parsed else None) == expected


# ------------------------------------------------------------------------------------ auth


@pytest.mark.parametrize("provider", [Provider.OPENAI, Provider.MISTRAL, Provider.ANTHROPIC])
async def test_missing_key_is_401_in_the_providers_shape(
    sim: ProviderSimulator, client: httpx.AsyncClient, provider: Provider
) -> None:
    response = await post(client, sim, provider, headers=headers_for(provider, key=None))
    assert response.status_code == 401
    body = response.json()
    if provider is Provider.OPENAI:
        assert body["error"]["type"] == "invalid_request_error"
    elif provider is Provider.ANTHROPIC:
        assert body["error"]["type"] == "authentication_error"
    else:
        assert body["message"] == "Unauthorized"
    assert sim.ledger.calls[0].key_fingerprint is None


async def test_anthropic_requires_version_header(sim: ProviderSimulator, client: httpx.AsyncClient) -> None:
    response = await post(client, sim, Provider.ANTHROPIC, headers={"x-api-key": ANTHROPIC_KEY})
    assert response.status_code == 400
    assert "anthropic-version" in response.json()["error"]["message"]


async def test_bad_json_gets_a_provider_shaped_400(sim: ProviderSimulator, client: httpx.AsyncClient) -> None:
    url = sim.base_url(Provider.OPENAI) + PATHS[Provider.OPENAI]
    response = await client.post(url, content=b"{not json", headers=headers_for(Provider.OPENAI))
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    response = await client.post(
        sim.base_url(Provider.OLLAMA) + PATHS[Provider.OLLAMA], json={"model": "m", "messages": []}
    )
    assert response.status_code == 400
    assert "messages" in response.json()["error"]


async def test_ledger_never_holds_the_key(sim: ProviderSimulator, client: httpx.AsyncClient) -> None:
    await post(client, sim, Provider.ANTHROPIC, headers=headers_for(Provider.ANTHROPIC, key=ANTHROPIC_KEY))
    await post(client, sim, Provider.OPENAI, model="sim-auth")
    dumped = (await client.get(f"{sim.root_url}/_sim/ledger")).text
    assert ANTHROPIC_KEY not in dumped
    assert KEY not in dumped
    assert hashlib.sha256(ANTHROPIC_KEY.encode()).hexdigest()[:12] in dumped


# ------------------------------------------------------------------------------- usage variants


async def test_cached_openai_and_mistral(sim: ProviderSimulator, client: httpx.AsyncClient) -> None:
    # prompt = 3 + 2 + 5 = 10 words; half are cache reads.
    user = "one two three four five"
    body = (await post(client, sim, Provider.OPENAI, model="sim-cached", user=user)).json()
    assert body["usage"]["prompt_tokens"] == 10
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 5
    body = (await post(client, sim, Provider.MISTRAL, model="sim-cached", user=user)).json()
    assert body["usage"]["prompt_tokens"] == 10
    assert body["usage"]["prompt_tokens_details"] == {"cached_tokens": 5}
    for call in sim.ledger.calls:
        assert call.usage == TokenCounts(input_tokens=5, cache_read_tokens=5, output_tokens=6)


async def test_cached_anthropic_reports_reads_and_writes(sim: ProviderSimulator, client: httpx.AsyncClient) -> None:
    # prompt = 10 words: 5 cache reads, 2 cache writes, 3 uncached input.
    body = (await post(client, sim, Provider.ANTHROPIC, model="sim-cached", user="one two three four five")).json()
    usage = body["usage"]
    assert (usage["input_tokens"], usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"]) == (
        3, 5, 2)
    assert sim.ledger.calls[0].usage == TokenCounts(
        input_tokens=3, cache_read_tokens=5, cache_write_tokens=2, output_tokens=6)


async def test_reasoning_tokens_sit_inside_completion_tokens(
    sim: ProviderSimulator, client: httpx.AsyncClient
) -> None:
    body = (await post(client, sim, Provider.OPENAI, model="sim-reasoning", user=USER)).json()
    assert body["usage"]["completion_tokens"] == 4 + 16
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 16
    assert body["usage"]["total_tokens"] == 8 + 20
    assert sim.ledger.calls[0].usage == TokenCounts(input_tokens=8, output_tokens=4, reasoning_tokens=16)


async def test_cached_reasoning_carries_both_in_one_answer(sim: ProviderSimulator, client: httpx.AsyncClient) -> None:
    # prompt = 10 words, reply "sim: one two three four five" = 6 words.
    user = "one two three four five"
    body = (await post(client, sim, Provider.OPENAI, model="sim-cached-reasoning", user=user)).json()
    usage = body["usage"]
    # OpenAI: cached_tokens inside prompt_tokens, reasoning_tokens inside completion_tokens.
    assert (usage["prompt_tokens"], usage["completion_tokens"], usage["total_tokens"]) == (10, 6 + 16, 10 + 22)
    assert usage["prompt_tokens_details"]["cached_tokens"] == 5
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 16
    # Anthropic: reads and writes outside input_tokens; it has no reasoning bucket (thinking is output).
    usage = (await post(client, sim, Provider.ANTHROPIC, model="sim-cached-reasoning", user=user)).json()["usage"]
    assert (usage["input_tokens"], usage["cache_read_input_tokens"], usage["cache_creation_input_tokens"],
            usage["output_tokens"]) == (3, 5, 2, 6)
    usage = (await post(client, sim, Provider.MISTRAL, model="sim-cached-reasoning", user=user)).json()["usage"]
    assert (usage["prompt_tokens"], usage["prompt_tokens_details"], usage["completion_tokens"]) == (
        10, {"cached_tokens": 5}, 6)
    body = (await post(client, sim, Provider.OLLAMA, model="sim-cached-reasoning", user=user)).json()
    assert (body["prompt_eval_count"], body["eval_count"]) == (10, 6)
    assert [(c.protocol, c.behavior, c.usage) for c in sim.ledger.calls] == [
        (Provider.OPENAI, "cached-reasoning",
         TokenCounts(input_tokens=5, cache_read_tokens=5, output_tokens=6, reasoning_tokens=16)),
        (Provider.ANTHROPIC, "cached-reasoning",
         TokenCounts(input_tokens=3, cache_read_tokens=5, cache_write_tokens=2, output_tokens=6)),
        (Provider.MISTRAL, "cached-reasoning", TokenCounts(input_tokens=5, cache_read_tokens=5, output_tokens=6)),
        (Provider.OLLAMA, "cached-reasoning", TokenCounts(input_tokens=10, output_tokens=6)),
    ]


@pytest.mark.parametrize("provider", list(Provider))
async def test_nousage_answers_2xx_unbilled(
    sim: ProviderSimulator, client: httpx.AsyncClient, provider: Provider
) -> None:
    response = await post(client, sim, provider, model="sim-nousage", user=USER)
    assert response.status_code == 200
    body = response.json()
    assert "usage" not in body
    assert "prompt_eval_count" not in body
    assert reply_text(provider, body) == "sim: " + USER
    assert sim.ledger.calls[0].billed is False
    assert sim.ledger.totals()["requests"] == 0


async def test_flaky_fails_n_times_per_content_then_succeeds(
    sim: ProviderSimulator, client: httpx.AsyncClient
) -> None:
    statuses = [(await post(client, sim, Provider.ANTHROPIC, model="sim-flaky-2", user="job A")).status_code
                for _ in range(3)]
    assert statuses == [500, 500, 200]
    other = await post(client, sim, Provider.ANTHROPIC, model="sim-flaky-2", user="job B")
    assert other.status_code == 500
    assert sim.ledger.totals()["requests"] == 1


async def test_slow_behaviour_and_latency_delay_the_answer(
    sim: ProviderSimulator, client: httpx.AsyncClient
) -> None:
    started = time.monotonic()
    assert (await post(client, sim, Provider.OLLAMA, model="sim-slow-300")).status_code == 200
    assert time.monotonic() - started >= 0.3
    sim.latency_s = 0.2
    started = time.monotonic()
    assert (await post(client, sim, Provider.OPENAI, model="sim-rate")).status_code == 429
    assert time.monotonic() - started >= 0.2


async def test_carries_500_concurrent_slow_requests(sim: ProviderSimulator) -> None:
    # aiohttp as the client: httpx's own pool stalls at hundreds of slow requests (encode/httpx#3215).
    sim.latency_s = 0.5
    url = sim.base_url(Provider.OPENAI) + PATHS[Provider.OPENAI]

    async def one(session: aiohttp.ClientSession, i: int) -> int:
        body = body_for(Provider.OPENAI, "gpt-4o", f"request {i}")
        async with session.post(url, json=body, headers=headers_for(Provider.OPENAI)) as response:
            await response.read()
            return response.status

    started = time.monotonic()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1000)) as session:
        statuses = await asyncio.gather(*(one(session, i) for i in range(500)))
    elapsed = time.monotonic() - started
    assert statuses == [200] * 500
    assert elapsed < 5.0, f"500 requests of 0.5 s took {elapsed:.1f} s: the latency is blocking"
    assert sim.ledger.totals()["requests"] == 500


# ------------------------------------------------------------------------------- ledger over HTTP


async def test_http_ledger_and_reset(sim: ProviderSimulator, client: httpx.AsyncClient) -> None:
    await post(client, sim, Provider.MISTRAL, user=USER)
    await post(client, sim, Provider.OPENAI, model="sim-reasoning", user=USER)
    await post(client, sim, Provider.OPENAI, model="sim-quota")
    ledger = (await client.get(f"{sim.root_url}/_sim/ledger")).json()
    assert [(r["method"], r["path"], r["protocol"], r["has_auth"]) for r in ledger["requests"]] == [
        ("POST", "/mistral/v1/chat/completions", "mistral", True),
        ("POST", "/openai/v1/chat/completions", "openai", True),
        ("POST", "/openai/v1/chat/completions", "openai", True),
        ("GET", "/_sim/ledger", None, False),  # recorded on arrival: the ledger read shows itself
    ]
    assert [c["protocol"] for c in ledger["calls"]] == ["mistral", "openai", "openai"]
    assert [c["billed"] for c in ledger["calls"]] == [True, True, False]
    assert ledger["calls"][1]["usage"]["reasoning_tokens"] == 16
    assert ledger["totals"] == {
        "requests": 2, "input_tokens": 16, "cache_read_tokens": 0, "cache_write_tokens": 0,
        "output_tokens": 8, "reasoning_tokens": 16,
    }
    assert (await client.post(f"{sim.root_url}/_sim/reset")).status_code == 200
    assert sim.ledger.requests() == [], "the reset clears the all-requests record, its own request included"
    ledger = (await client.get(f"{sim.root_url}/_sim/ledger")).json()
    assert ledger["calls"] == []
    assert ledger["totals"]["requests"] == 0
    assert [(r["method"], r["path"]) for r in ledger["requests"]] == [("GET", "/_sim/ledger")]
    assert sim.ledger.calls == []


# ------------------------------------------------------------------------- every request, any path


def seen(sim: ProviderSimulator) -> list[tuple[str, str, Provider | None, bool]]:
    return [(r.method, r.path, r.protocol, r.has_auth) for r in sim.ledger.requests()]


async def test_every_request_is_recorded_whatever_its_path(
    sim: ProviderSimulator, client: httpx.AsyncClient
) -> None:
    started = time.time()
    # On a protocol route: a call in the ledger as well.
    assert (await post(client, sim, Provider.OPENAI, user=USER)).status_code == 200
    # A base URL that points at the simulator with a path prefix it does not serve (a key sent to the
    # wrong endpoint): no route, so no ledger call, but the request is on record.
    elsewhere = f"{sim.root_url}/elsewhere/v1/chat/completions"
    body = body_for(Provider.OPENAI, "gpt-4o", USER)
    assert (await client.post(elsewhere, json=body, headers=headers_for(Provider.OPENAI))).status_code == 404
    wrong = sim.base_url(Provider.ANTHROPIC) + "/v9/messages"
    anthropic = body_for(Provider.ANTHROPIC, "claude", USER)
    headers = headers_for(Provider.ANTHROPIC, key=ANTHROPIC_KEY)
    assert (await client.post(wrong, json=anthropic, headers=headers)).status_code == 404
    # A protocol path with the wrong method is not that protocol's route.
    assert (await client.get(sim.base_url(Provider.OPENAI) + PATHS[Provider.OPENAI])).status_code == 405
    # Ollama takes no key; a request without a credential header says so.
    assert (await post(client, sim, Provider.OLLAMA, user=USER)).status_code == 200

    assert seen(sim) == [
        ("POST", "/openai/v1/chat/completions", Provider.OPENAI, True),
        ("POST", "/elsewhere/v1/chat/completions", None, True),
        ("POST", "/anthropic/v9/messages", None, True),
        ("GET", "/openai/v1/chat/completions", None, False),
        ("POST", "/ollama/api/chat", Provider.OLLAMA, False),
    ]
    assert all(isinstance(r, SeenRequest) and started <= r.at <= time.time() for r in sim.ledger.requests())
    # The ledger's calls and its billing are exactly what they were: the protocol routes only.
    assert [c.protocol for c in sim.ledger.calls] == [Provider.OPENAI, Provider.OLLAMA]
    assert [c.protocol for c in sim.ledger.billed()] == [Provider.OPENAI, Provider.OLLAMA]
    assert sim.ledger.totals()["requests"] == 2


async def test_requests_that_fail_on_a_protocol_route_are_recorded_too(
    sim: ProviderSimulator, client: httpx.AsyncClient
) -> None:
    url = sim.base_url(Provider.MISTRAL) + PATHS[Provider.MISTRAL]
    assert (await client.post(url, content=b"{not json", headers=headers_for(Provider.MISTRAL))).status_code == 422
    no_key = headers_for(Provider.MISTRAL, key=None)
    assert (await post(client, sim, Provider.MISTRAL, headers=no_key)).status_code == 401
    assert (await post(client, sim, Provider.MISTRAL, model="sim-quota")).status_code == 429
    route = ("POST", "/mistral/v1/chat/completions", Provider.MISTRAL)
    assert seen(sim) == [(*route, True), (*route, False), (*route, True)]
    assert len(sim.ledger.calls) == 3
    assert sim.ledger.billed() == []


async def test_the_requests_record_never_holds_a_key_or_the_query(
    sim: ProviderSimulator, client: httpx.AsyncClient
) -> None:
    elsewhere = f"{sim.root_url}/elsewhere/v1/chat/completions"
    body = body_for(Provider.OPENAI, "gpt-4o", USER)
    await client.post(elsewhere, params={"key": KEY}, json=body, headers=headers_for(Provider.OPENAI))
    await client.post(f"{sim.root_url}/anthropic/v1/messages/extra", json=body,
                      headers=headers_for(Provider.ANTHROPIC, key=ANTHROPIC_KEY))
    assert seen(sim) == [
        ("POST", "/elsewhere/v1/chat/completions", None, True),
        ("POST", "/anthropic/v1/messages/extra", None, True),
    ]
    dumped = (await client.get(f"{sim.root_url}/_sim/ledger")).text
    assert "/elsewhere/v1/chat/completions" in dumped
    assert KEY not in dumped
    assert ANTHROPIC_KEY not in dumped
    assert "key=" not in dumped
    assert sim.ledger.calls == []


async def test_base_urls_and_lifecycle() -> None:
    simulator = ProviderSimulator()
    with pytest.raises(RuntimeError):
        _ = simulator.port
    await simulator.start()
    try:
        port = simulator.port
        assert port > 0
        assert simulator.base_url(Provider.OPENAI) == f"http://127.0.0.1:{port}/openai/v1"
        assert simulator.base_url(Provider.MISTRAL) == f"http://127.0.0.1:{port}/mistral"
        assert simulator.base_url(Provider.ANTHROPIC) == f"http://127.0.0.1:{port}/anthropic"
        assert simulator.base_url(Provider.OLLAMA) == f"http://127.0.0.1:{port}/ollama"
    finally:
        await simulator.stop()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_serve_forever_serves_until_cancelled(client: httpx.AsyncClient) -> None:
    port = _free_port()
    task = asyncio.create_task(serve_forever("127.0.0.1", port, 0.0))
    url = f"http://127.0.0.1:{port}/_sim/ledger"

    async def answered() -> httpx.Response | None:
        try:
            return await client.get(url)
        except httpx.ConnectError:
            return None

    response = await wait_until(answered, timeout=2, what="serve_forever listening")
    assert response.json()["totals"]["requests"] == 0
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(httpx.ConnectError):
        await client.get(url)
