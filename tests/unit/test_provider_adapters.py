"""Each adapter's request, and its classification of provider failures, through the real ``call_provider``."""

from __future__ import annotations

import re
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
from worker.providers.mistral import mistral_call_id

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


# ------------------------------------------------------------- tools, images, structured output (#14)

WEATHER_PARAMS = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOL_LOOP: dict[str, Any] = {
    "messages": [
        {"role": "user", "content": [{"type": "text", "text": "Weather here?"},
                                     {"type": "image", "media_type": "image/png", "data": "aGk="}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "name": "get_weather", "arguments": {"city": "Paris"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ],
    "tools": [{"name": "get_weather", "description": "Weather now.", "parameters": WEATHER_PARAMS}],
    "tool_choice": {"name": "get_weather"},
}


def test_openai_maps_tools_calls_results_and_images() -> None:
    body = ADAPTERS[Provider.OPENAI].build_request(
        make_job(Provider.OPENAI, **TOOL_LOOP), endpoint(Provider.OPENAI), KEY).body
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "Weather here?"},
                                     {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18C"},
    ]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather now.", "parameters": WEATHER_PARAMS}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}


def test_anthropic_maps_tools_calls_results_and_images() -> None:
    body = ADAPTERS[Provider.ANTHROPIC].build_request(
        make_job(Provider.ANTHROPIC, **TOOL_LOOP), endpoint(Provider.ANTHROPIC), KEY).body
    assert body["messages"] == [
        {"role": "user", "content": [
            {"type": "text", "text": "Weather here?"},
            {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "aGk="}}]},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "call_1", "name": "get_weather", "input": {"city": "Paris"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1", "content": "18C"}]},
    ]
    assert body["tools"] == [{"name": "get_weather", "description": "Weather now.", "input_schema": WEATHER_PARAMS}]
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}


def test_anthropic_drops_blank_text_beside_tool_calls() -> None:
    loop = [TOOL_LOOP["messages"][0], {**TOOL_LOOP["messages"][1], "content": " \n"}, TOOL_LOOP["messages"][2]]
    body = ADAPTERS[Provider.ANTHROPIC].build_request(
        make_job(Provider.ANTHROPIC, **{**TOOL_LOOP, "messages": loop}), endpoint(Provider.ANTHROPIC), KEY).body
    assert [block["type"] for block in body["messages"][1]["content"]] == ["tool_use"]


def test_ollama_maps_tools_calls_results_and_images() -> None:
    loop = {**TOOL_LOOP, "tool_choice": "auto"}
    body = ADAPTERS[Provider.OLLAMA].build_request(
        make_job(Provider.OLLAMA, **loop), endpoint(Provider.OLLAMA), None).body
    assert body["messages"] == [
        {"role": "user", "content": "Weather here?", "images": ["aGk="]},
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "18C", "tool_name": "get_weather"},
    ]
    assert body["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "parameters": WEATHER_PARAMS, "description": "Weather now."}}]
    assert "tool_choice" not in body


@pytest.mark.parametrize(("choice", "anthropic", "openai"), [
    ("auto", {"type": "auto"}, "auto"), ("none", {"type": "none"}, "none"), ("required", {"type": "any"}, "required"),
])
def test_tool_choice_modes(choice: str, anthropic: dict[str, str], openai: str) -> None:
    spec = {**TOOL_LOOP, "tool_choice": choice}
    for provider, expected in ((Provider.ANTHROPIC, anthropic), (Provider.OPENAI, openai), (Provider.MISTRAL, openai)):
        body = ADAPTERS[provider].build_request(make_job(provider, **spec), endpoint(provider), KEY).body
        assert body["tool_choice"] == expected


INVOICE = {"type": "object", "properties": {"total": {"type": "number"}}, "required": ["total"]}


def test_response_formats() -> None:
    schema_format = {"type": "json_schema", "name": "invoice", "schema": INVOICE, "strict": True}
    for provider in (Provider.OPENAI, Provider.MISTRAL):
        body = ADAPTERS[provider].build_request(
            make_job(provider, response_format=schema_format), endpoint(provider), KEY).body
        assert body["response_format"] == {"type": "json_schema",
                                           "json_schema": {"name": "invoice", "schema": INVOICE, "strict": True}}
        body = ADAPTERS[provider].build_request(
            make_job(provider, response_format={"type": "json_object"}), endpoint(provider), KEY).body
        assert body["response_format"] == {"type": "json_object"}
    ollama = ADAPTERS[Provider.OLLAMA]
    assert ollama.build_request(make_job(Provider.OLLAMA, response_format=schema_format),
                                endpoint(Provider.OLLAMA), None).body["format"] == INVOICE
    assert ollama.build_request(make_job(Provider.OLLAMA, response_format={"type": "json_object"}),
                                endpoint(Provider.OLLAMA), None).body["format"] == "json"


def test_anthropic_structured_output_is_a_forced_answer_tool() -> None:
    anthropic = ADAPTERS[Provider.ANTHROPIC]
    schema_format = {"type": "json_schema", "name": "invoice", "schema": INVOICE, "strict": True}
    body = anthropic.build_request(make_job(Provider.ANTHROPIC, response_format=schema_format),
                                   endpoint(Provider.ANTHROPIC), KEY).body
    [tool] = body["tools"]
    assert (tool["name"], tool["input_schema"], tool["strict"]) == ("invoice", INVOICE, True)
    assert body["tool_choice"] == {"type": "tool", "name": "invoice"}
    body = anthropic.build_request(make_job(Provider.ANTHROPIC, response_format={"type": "json_object"}),
                                   endpoint(Provider.ANTHROPIC), KEY).body
    assert [(t["name"], t["input_schema"]) for t in body["tools"]] == [("response", {"type": "object"})]
    # An agent with its own tools may still call them: any tool, the answer tool among them.
    agent = {**TOOL_LOOP, "tool_choice": "auto", "response_format": schema_format}
    body = anthropic.build_request(make_job(Provider.ANTHROPIC, **agent), endpoint(Provider.ANTHROPIC), KEY).body
    assert [t["name"] for t in body["tools"]] == ["get_weather", "invoice"]
    assert body["tool_choice"] == {"type": "any"}
    none = {**agent, "tool_choice": "none"}
    body = anthropic.build_request(make_job(Provider.ANTHROPIC, **none), endpoint(Provider.ANTHROPIC), KEY).body
    assert body["tool_choice"] == {"type": "tool", "name": "invoice"}


@pytest.mark.parametrize(("provider", "spec", "reason"), [
    (Provider.OLLAMA, {"messages": [{"role": "user", "content": [{"type": "image", "url": "https://x.test/a.png"}]}]},
     "ollama cannot express an image by URL"),
    (Provider.OLLAMA, {**TOOL_LOOP, "tool_choice": "required"}, "ollama cannot express tool_choice 'required'"),
    (Provider.OLLAMA, TOOL_LOOP, "ollama cannot express tool_choice {'name': 'get_weather'}"),
    (Provider.OPENAI, {**TOOL_LOOP, "messages": [*TOOL_LOOP["messages"][:2], {
        "role": "tool", "tool_call_id": "call_1",
        "content": [{"type": "image", "media_type": "image/png", "data": "aGk="}]}]},
     "openai cannot express an image in a tool message"),
])
def test_what_a_protocol_cannot_express_is_invalid_before_sending(
    provider: Provider, spec: dict[str, Any], reason: str
) -> None:
    with pytest.raises(InvalidJob) as caught:
        ADAPTERS[provider].build_request(make_job(provider, **spec), endpoint(provider), KEY)
    assert caught.value.message.startswith(reason)


def chat_answer(message: dict[str, Any], finish: str = "stop") -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", **message}, "finish_reason": finish}]}


BAD_ANSWERS: list[tuple[str, Provider, dict[str, Any], str]] = [
    ("openai arguments not JSON", Provider.OPENAI, chat_answer({"content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Par'}}]},
        "tool_calls"), "arguments of tool call 'get_weather' are not valid JSON"),
    ("mistral arguments a list", Provider.MISTRAL, chat_answer({"content": "", "tool_calls": [
        {"id": "c", "function": {"name": "get_weather", "arguments": "[1, 2]"}}]}, "tool_calls"),
     "arguments of tool call 'get_weather' are not a JSON object"),
    ("anthropic input not an object", Provider.ANTHROPIC, {
        "content": [{"type": "tool_use", "id": "t", "name": "get_weather", "input": "Paris"}],
        "stop_reason": "tool_use"}, "arguments of tool call 'get_weather' are not a JSON object"),
    ("ollama tool without a name", Provider.OLLAMA, {
        "message": {"role": "assistant", "content": "", "tool_calls": [{"function": {"arguments": {}}}]},
        "done": True}, "a tool call has no valid tool name"),
]


BILLED = {Provider.OPENAI: {"usage": {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}},
          Provider.MISTRAL: {"usage": {"prompt_tokens": 50, "completion_tokens": 7, "total_tokens": 57}},
          Provider.ANTHROPIC: {"usage": {"input_tokens": 50, "output_tokens": 7}},
          Provider.OLLAMA: {"prompt_eval_count": 50, "eval_count": 7}}


async def read_unusable(provider: Provider, body: dict[str, Any], **input_fields: Any) -> Any:
    """The reply to a billed answer that cannot be used: no exception, the reason and the usage kept."""
    job = make_job(provider, **input_fields)
    async with httpx.AsyncClient(transport=httpx.MockTransport(answer(200, {**body, **BILLED[provider]}))) as client:
        reply = await call_provider(client, ADAPTERS[provider], job, endpoint(provider),
                                    None if provider is Provider.OLLAMA else KEY)
    assert (reply.tool_calls, reply.parsed, reply.finish_reason) == ((), None, None)
    assert reply.usage is not None
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == (50, 7), "the billed call still counts"
    return reply


@pytest.mark.parametrize(("provider", "body", "reason"), [b[1:] for b in BAD_ANSWERS], ids=[b[0] for b in BAD_ANSWERS])
async def test_unusable_tool_calls_are_flagged_with_their_usage(
    provider: Provider, body: dict[str, Any], reason: str
) -> None:
    reply = await read_unusable(provider, body)
    assert reason in reply.unusable


STRUCTURED = {"type": "json_schema", "name": "invoice", "schema": INVOICE}


@pytest.mark.parametrize(("provider", "body", "reason"), [
    (Provider.OPENAI, chat_answer({"content": "Sure! The total is 3."}), "structured output is not valid JSON"),
    (Provider.MISTRAL, chat_answer({"content": '{"total": '}, "length"), "cut at max_tokens"),
    (Provider.OLLAMA, {"message": {"role": "assistant", "content": "[3]"}, "done": True, "done_reason": "stop"},
     "structured output is not a JSON object"),
    (Provider.ANTHROPIC, {"content": [{"type": "text", "text": "no tool"}], "stop_reason": "end_turn"},
     "structured output is not valid JSON"),
])
async def test_structured_output_that_does_not_parse_is_flagged(
    provider: Provider, body: dict[str, Any], reason: str
) -> None:
    reply = await read_unusable(provider, body, response_format=STRUCTURED)
    assert reason in reply.unusable


def test_a_refusal_is_content_filter_not_a_parse_failure() -> None:
    body = chat_answer({"content": None, "refusal": "I can't help with that."})
    reply = ADAPTERS[Provider.OPENAI].parse_response(body, make_job(Provider.OPENAI, response_format=STRUCTURED))
    assert (reply.text, reply.finish_reason, reply.provider_finish_reason, reply.parsed) == (
        "I can't help with that.", "content_filter", "stop", None)


@pytest.mark.parametrize(("provider", "raw", "expected"), [
    (Provider.OPENAI, "stop", "stop"), (Provider.OPENAI, "length", "length"),
    (Provider.OPENAI, "content_filter", "content_filter"), (Provider.OPENAI, "weird", "other"),
    (Provider.MISTRAL, "model_length", "length"), (Provider.MISTRAL, "error", "other"),
    (Provider.ANTHROPIC, "end_turn", "stop"), (Provider.ANTHROPIC, "stop_sequence", "stop"),
    (Provider.ANTHROPIC, "max_tokens", "length"), (Provider.ANTHROPIC, "refusal", "content_filter"),
    (Provider.ANTHROPIC, "pause_turn", "other"), (Provider.OLLAMA, "stop", "stop"),
    (Provider.OLLAMA, "length", "length"), (Provider.OLLAMA, "unload", "other"),
])
def test_finish_reasons_are_normalised(provider: Provider, raw: str, expected: str) -> None:
    body: dict[str, Any] = {
        Provider.OPENAI: chat_answer({"content": "x"}, raw), Provider.MISTRAL: chat_answer({"content": "x"}, raw),
        Provider.ANTHROPIC: {"content": [{"type": "text", "text": "x"}], "stop_reason": raw},
        Provider.OLLAMA: {"message": {"role": "assistant", "content": "x"}, "done": True, "done_reason": raw},
    }[provider]
    reply = ADAPTERS[provider].parse_response(body)
    assert (reply.finish_reason, reply.provider_finish_reason) == (expected, raw)


def test_mistral_gets_tool_call_ids_it_accepts() -> None:
    """Mistral refuses ids other than nine letters and digits: others map the same way for call and result."""
    assert mistral_call_id("D681PevKs") == "D681PevKs", "Mistral's own ids go back unchanged"
    mapped = mistral_call_id("call_1")
    assert re.fullmatch(r"[A-Za-z0-9]{9}", mapped)
    assert mapped == mistral_call_id("call_1") != mistral_call_id("call_2")
    body = ADAPTERS[Provider.MISTRAL].build_request(
        make_job(Provider.MISTRAL, **{**TOOL_LOOP, "tool_choice": "auto"}), endpoint(Provider.MISTRAL), KEY).body
    assert body["messages"][1]["tool_calls"][0]["id"] == body["messages"][2]["tool_call_id"] == mapped


@pytest.mark.parametrize(("provider", "foreign", "accepted"), [
    (Provider.OPENAI, "chatcmpl-tool-" + "a" * 40, r"call_[A-Za-z0-9]{10}"),
    (Provider.ANTHROPIC, "call.1:x", r"toolu_[A-Za-z0-9]{10}"),
])
def test_ids_a_protocol_refuses_are_mapped_for_call_and_result(provider: Provider, foreign: str, accepted: str) -> None:
    loop = [TOOL_LOOP["messages"][0],
            {"role": "assistant", "tool_calls": [{"id": foreign, "name": "get_weather", "arguments": {}}]},
            {"role": "tool", "tool_call_id": foreign, "content": "x"}]
    body = ADAPTERS[provider].build_request(
        make_job(provider, **{**TOOL_LOOP, "messages": loop}), endpoint(provider), KEY).body
    if provider is Provider.ANTHROPIC:
        call_id, result_id = body["messages"][1]["content"][0]["id"], body["messages"][2]["content"][0]["tool_use_id"]
    else:
        call_id, result_id = body["messages"][1]["tool_calls"][0]["id"], body["messages"][2]["tool_call_id"]
    assert call_id == result_id
    assert re.fullmatch(accepted, call_id)
    kept = ADAPTERS[provider].build_request(make_job(provider, **TOOL_LOOP), endpoint(provider), KEY).body
    assert "call_1" in repr(kept), "ids the protocol takes are sent as they are"
