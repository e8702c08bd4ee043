"""Each adapter's request, and its classification of provider failures, through the real ``call_provider``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import orjson
import pytest

from schemas.models import CompletionJob, ErrorCode, Provider
from worker.failures import InvalidJob, JobFailure, RetryableFailure
from worker.keys.endpoint import Endpoint
from worker.providers import ADAPTERS
from worker.providers.anthropic import DEFAULT_MAX_TOKENS
from worker.providers.call import call_provider

KEY = "sk-ant-api03-Zx9secretKEYvalue0123456789"
OPAQUE_KEY = "q8Zr2LmN4vB7xT1kP0sD5fG3hJ6wE9yU"  # Mistral-like: no recognisable prefix


def make_job(provider: Provider, **input_fields: Any) -> CompletionJob:
    spec: dict[str, Any] = {"messages": [{"role": "user", "content": "Hi there"}], **input_fields}
    model: dict[str, Any] = {"provider": provider.value, "name": "some-model"}
    if provider is not Provider.OLLAMA:
        model["sealed_key"] = "vault:v1:c2VhbGVk"
    return CompletionJob.model_validate(
        {"job_id": "job-1", "workspace_id": "ws1", "model": model, "input": spec}
    )


def endpoint(provider: Provider) -> Endpoint:
    return Endpoint.resolve(provider, None)


# ----------------------------------------------------------------------------------- requests


FULL_INPUT: dict[str, Any] = {
    "system": "Be brief.",
    "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                 {"role": "user", "content": "Capital of France?"}],
    "max_tokens": 64, "temperature": 0.5, "top_p": 0.9, "stop": ["\n\n", "END"],
}
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Capital of France?"}]


def test_anthropic_request() -> None:
    request = ADAPTERS[Provider.ANTHROPIC].build_request(
        make_job(Provider.ANTHROPIC, **FULL_INPUT), endpoint(Provider.ANTHROPIC), KEY)
    assert request.path == "/v1/messages"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert "authorization" not in request.headers
    # temperature and top_p are deprecated by Anthropic and absent from its SDK's request type: not sent.
    assert request.body == {
        "model": "some-model", "max_tokens": 64, "system": "Be brief.", "messages": CHAT[1:],
        "stop_sequences": ["\n\n", "END"],
    }


def test_anthropic_default_max_tokens() -> None:
    request = ADAPTERS[Provider.ANTHROPIC].build_request(
        make_job(Provider.ANTHROPIC), endpoint(Provider.ANTHROPIC), KEY)
    assert request.body == {"model": "some-model", "max_tokens": DEFAULT_MAX_TOKENS,
                            "messages": [{"role": "user", "content": "Hi there"}]}
    assert DEFAULT_MAX_TOKENS == 4096


def test_mistral_request() -> None:
    request = ADAPTERS[Provider.MISTRAL].build_request(
        make_job(Provider.MISTRAL, **FULL_INPUT), endpoint(Provider.MISTRAL), OPAQUE_KEY)
    assert request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {OPAQUE_KEY}"
    assert request.body == {
        "model": "some-model", "messages": CHAT, "max_tokens": 64, "temperature": 0.5, "top_p": 0.9,
        "stop": ["\n\n", "END"],
    }


def test_ollama_request() -> None:
    request = ADAPTERS[Provider.OLLAMA].build_request(
        make_job(Provider.OLLAMA, **FULL_INPUT), endpoint(Provider.OLLAMA), None)
    assert request.path == "/api/chat"
    assert "authorization" not in request.headers
    assert request.body == {
        "model": "some-model", "messages": CHAT, "stream": False,
        "options": {"num_predict": 64, "temperature": 0.5, "top_p": 0.9, "stop": ["\n\n", "END"]},
    }
    minimal = ADAPTERS[Provider.OLLAMA].build_request(make_job(Provider.OLLAMA), endpoint(Provider.OLLAMA), None)
    assert "options" not in minimal.body


@pytest.mark.parametrize("provider", [Provider.OPENAI, Provider.ANTHROPIC, Provider.MISTRAL])
def test_keyed_adapters_refuse_to_build_without_a_key(provider: Provider) -> None:
    with pytest.raises(InvalidJob):
        ADAPTERS[provider].build_request(make_job(provider), endpoint(provider), None)


def test_temperature_beyond_mistrals_range_is_invalid() -> None:
    with pytest.raises(InvalidJob, match="temperature"):
        ADAPTERS[Provider.MISTRAL].build_request(
            make_job(Provider.MISTRAL, temperature=1.8), endpoint(Provider.MISTRAL), KEY)
    request = ADAPTERS[Provider.MISTRAL].build_request(
        make_job(Provider.MISTRAL, temperature=1.5), endpoint(Provider.MISTRAL), KEY)
    assert request.body["temperature"] == 1.5


# ------------------------------------------------------------------------ classification

Handler = Callable[[httpx.Request], httpx.Response]


async def call_with(provider: Provider, handler: Handler, key: str | None = KEY) -> Any:
    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        return await call_provider(client, ADAPTERS[provider], make_job(provider), endpoint(provider),
                                   None if provider is Provider.OLLAMA else key)


def answer(status: int, body: dict[str, Any] | str, headers: dict[str, str] | None = None) -> Handler:
    content = body.encode() if isinstance(body, str) else orjson.dumps(body)
    return lambda _request: httpx.Response(status, content=content, headers=headers)


def openai_error(message: str, etype: str, code: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": etype, "param": None, "code": code}}


def anthropic_error(etype: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_011CbrFTcXhtiM"}


def mistral_error(message: str, etype: str, code: str | None) -> dict[str, Any]:
    return {"object": "error", "message": message, "type": etype, "param": None, "code": code}


CREDIT = "Your credit balance is too low to access the Anthropic API. Please go to Plans & Billing to upgrade."

# provider, status, body, headers, expected code, retryable, expected retry_after_s
CLASSIFICATION: list[tuple[str, Provider, int, Any, dict[str, str], ErrorCode, bool, float | None]] = [
    ("openai 401", Provider.OPENAI, 401, openai_error("Incorrect API key provided: sk-proj-****abcd.",
     "invalid_request_error", "invalid_api_key"), {}, ErrorCode.AUTH_FAILED, False, None),
    ("openai 403", Provider.OPENAI, 403, openai_error("Project does not have access", "invalid_request_error",
     None), {}, ErrorCode.AUTH_FAILED, False, None),
    ("openai 429 quota", Provider.OPENAI, 429, openai_error("You exceeded your current quota",
     "insufficient_quota", "insufficient_quota"), {}, ErrorCode.QUOTA_EXHAUSTED, False, None),
    ("openai 429 rate, seconds", Provider.OPENAI, 429, openai_error("Rate limit reached", "requests",
     "rate_limit_exceeded"), {"retry-after": "7"}, ErrorCode.RATE_LIMITED, True, 7.0),
    ("openai 429 rate, ms wins", Provider.OPENAI, 429, openai_error("Rate limit reached", "tokens",
     "rate_limit_exceeded"), {"retry-after": "7", "retry-after-ms": "250"}, ErrorCode.RATE_LIMITED, True, 0.25),
    ("openai 500", Provider.OPENAI, 500, openai_error("The server had an error", "server_error", None), {},
     ErrorCode.PROVIDER_ERROR, True, None),
    ("openai 503", Provider.OPENAI, 503, openai_error("overloaded", "server_error", None), {},
     ErrorCode.PROVIDER_ERROR, True, None),
    ("openai 400", Provider.OPENAI, 400, openai_error("Invalid value for 'temperature'",
     "invalid_request_error", "invalid_value"), {}, ErrorCode.PROVIDER_ERROR, False, None),
    ("openai 404", Provider.OPENAI, 404, openai_error("The model `x` does not exist",
     "invalid_request_error", "model_not_found"), {}, ErrorCode.PROVIDER_ERROR, False, None),
    ("anthropic 401", Provider.ANTHROPIC, 401, anthropic_error("authentication_error", "invalid x-api-key"), {},
     ErrorCode.AUTH_FAILED, False, None),
    ("anthropic 403", Provider.ANTHROPIC, 403, anthropic_error("permission_error", "not allowed"), {},
     ErrorCode.AUTH_FAILED, False, None),
    ("anthropic 400 credit", Provider.ANTHROPIC, 400, anthropic_error("invalid_request_error", CREDIT), {},
     ErrorCode.QUOTA_EXHAUSTED, False, None),
    ("anthropic 402 billing", Provider.ANTHROPIC, 402, anthropic_error("billing_error", "Payment required"), {},
     ErrorCode.QUOTA_EXHAUSTED, False, None),
    ("anthropic 429 rate", Provider.ANTHROPIC, 429, anthropic_error("rate_limit_error", "rate limit exceeded"),
     {"retry-after": "3"}, ErrorCode.RATE_LIMITED, True, 3.0),
    ("anthropic 429 spend limit", Provider.ANTHROPIC, 429, anthropic_error(
        "rate_limit_error", "You have reached your specified API usage limits."), {},
     ErrorCode.QUOTA_EXHAUSTED, False, None),
    ("anthropic 529", Provider.ANTHROPIC, 529, anthropic_error("overloaded_error", "Overloaded"), {},
     ErrorCode.PROVIDER_ERROR, True, None),
    ("anthropic 400 plain", Provider.ANTHROPIC, 400, anthropic_error(
        "invalid_request_error", "max_tokens: Field required"), {}, ErrorCode.PROVIDER_ERROR, False, None),
    ("anthropic 404", Provider.ANTHROPIC, 404, anthropic_error("not_found_error", "model: claude-x"), {},
     ErrorCode.PROVIDER_ERROR, False, None),
    ("mistral 401", Provider.MISTRAL, 401, {"message": "Unauthorized", "request_id": "933f2339"}, {},
     ErrorCode.AUTH_FAILED, False, None),
    ("mistral 401 detail", Provider.MISTRAL, 401, {"detail": "Unauthorized"}, {},
     ErrorCode.AUTH_FAILED, False, None),
    ("mistral 429 rate", Provider.MISTRAL, 429, mistral_error("Requests rate limit exceeded", "rate_limited",
     "1300"), {}, ErrorCode.RATE_LIMITED, True, None),
    ("mistral 429 quota", Provider.MISTRAL, 429, mistral_error("Monthly usage limit exceeded",
     "insufficient_quota", "3505"), {}, ErrorCode.QUOTA_EXHAUSTED, False, None),
    ("mistral 422", Provider.MISTRAL, 422, {"object": "error", "message": {"detail": [
        {"type": "less_than_equal", "loc": ["body", "temperature"], "msg": "Input should be <= 1.5",
         "input": 1.9}]}, "type": "invalid_request_error", "param": None, "code": None}, {},
     ErrorCode.PROVIDER_ERROR, False, None),
    ("mistral 503", Provider.MISTRAL, 503, mistral_error("Service unavailable", "service_unavailable", "3000"),
     {}, ErrorCode.PROVIDER_ERROR, True, None),
    ("ollama 404", Provider.OLLAMA, 404, {"error": 'model "llama9" not found, try pulling it first'}, {},
     ErrorCode.PROVIDER_ERROR, False, None),
    ("ollama 429 rate", Provider.OLLAMA, 429, {"error": "too many requests"}, {"retry-after": "2"},
     ErrorCode.RATE_LIMITED, True, 2.0),
    ("ollama 429 usage limit", Provider.OLLAMA, 429, {"error": "you have reached your usage limit"}, {},
     ErrorCode.QUOTA_EXHAUSTED, False, None),
    ("ollama 500", Provider.OLLAMA, 500, {"error": "llama runner process has terminated"}, {},
     ErrorCode.PROVIDER_ERROR, True, None),
    ("ollama 401", Provider.OLLAMA, 401, {"error": "unauthorized"}, {}, ErrorCode.AUTH_FAILED, False, None),
    ("not json 502", Provider.ANTHROPIC, 502, "<html>Bad gateway</html>", {}, ErrorCode.PROVIDER_ERROR, True, None),
]


@pytest.mark.parametrize(
    ("provider", "status", "body", "headers", "code", "retryable", "retry_after"),
    [c[1:] for c in CLASSIFICATION], ids=[c[0] for c in CLASSIFICATION],
)
async def test_classification(
    provider: Provider, status: int, body: Any, headers: dict[str, str], code: ErrorCode, retryable: bool,
    retry_after: float | None,
) -> None:
    with pytest.raises(JobFailure) as caught:
        await call_with(provider, answer(status, body, headers))
    failure = caught.value
    assert (failure.code, failure.retryable, failure.provider_status) == (code, retryable, status)
    assert isinstance(failure, RetryableFailure) is retryable
    if isinstance(failure, RetryableFailure):
        assert failure.retry_after_s == retry_after
    assert failure.message
    assert KEY not in failure.message


async def test_provider_message_is_the_providers_own() -> None:
    with pytest.raises(JobFailure) as caught:
        await call_with(Provider.ANTHROPIC, answer(400, anthropic_error("invalid_request_error", CREDIT)))
    assert caught.value.message.startswith("Your credit balance is too low")
    with pytest.raises(JobFailure) as caught:
        await call_with(Provider.MISTRAL, answer(422, {"object": "error", "message": {"detail": [
            {"type": "x", "loc": ["body", "temperature"], "msg": "Input should be <= 1.5", "input": 1.9}]}}))
    assert caught.value.message == "body.temperature: Input should be <= 1.5"


async def test_retry_after_as_an_http_date() -> None:
    when = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    with pytest.raises(RetryableFailure) as caught:
        await call_with(Provider.MISTRAL, answer(429, mistral_error("slow down", "rate_limited", "1300"),
                                                 {"retry-after": when}))
    assert caught.value.retry_after_s is not None
    assert 25 <= caught.value.retry_after_s <= 30


@pytest.mark.parametrize(("provider", "key"), [(Provider.OPENAI, KEY), (Provider.MISTRAL, OPAQUE_KEY),
                                               (Provider.ANTHROPIC, KEY)])
async def test_a_key_echoed_by_the_provider_never_reaches_the_message(provider: Provider, key: str) -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        presented = request.headers.get("x-api-key") or request.headers["authorization"].removeprefix("Bearer ")
        text = f"Incorrect API key provided: {presented}. Bearer {presented}"
        body = {"error": {"message": text, "type": "invalid_request_error"}, "message": text}
        return httpx.Response(400, content=orjson.dumps(body))

    with pytest.raises(JobFailure) as caught:
        await call_with(provider, echo, key)
    assert key not in caught.value.message
    assert key[:16] not in caught.value.message
    assert "Incorrect API key provided" in caught.value.message


@pytest.mark.parametrize("provider", list(Provider))
async def test_timeouts_are_retryable(provider: Provider) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(RetryableFailure) as caught:
        await call_with(provider, slow)
    assert caught.value.code is ErrorCode.TIMEOUT


@pytest.mark.parametrize("provider", list(Provider))
async def test_what_each_adapter_sends_over_the_wire(provider: Provider) -> None:
    seen: list[httpx.Request] = []
    replies = {
        Provider.OPENAI: {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                       "finish_reason": "stop"}]},
        Provider.MISTRAL: {"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                        "finish_reason": "stop"}]},
        Provider.ANTHROPIC: {"content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn"},
        Provider.OLLAMA: {"message": {"role": "assistant", "content": "ok"}, "done": True},
    }

    def record(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=orjson.dumps(replies[provider]))

    reply = await call_with(provider, record)
    assert reply.text == "ok"
    assert reply.usage is None
    [request] = seen
    expected = {Provider.OPENAI: "https://api.openai.com/v1/chat/completions",
                Provider.MISTRAL: "https://api.mistral.ai/v1/chat/completions",
                Provider.ANTHROPIC: "https://api.anthropic.com/v1/messages",
                Provider.OLLAMA: "http://127.0.0.1:11434/api/chat"}[provider]
    assert str(request.url) == expected
    assert request.method == "POST"
    assert orjson.loads(request.content)["model"] == "some-model"
