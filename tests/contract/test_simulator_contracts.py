"""Every answer the simulator gives validates against the provider's own definition, and the
adapters read from it exactly what the simulator billed."""

from __future__ import annotations

from typing import Any

import anthropic.types as anthropic_types
import httpx
import ollama._types as ollama_types
import pytest
from hypothesis import HealthCheck, given, settings
from jsonschema import Draft202012Validator
from pydantic import TypeAdapter

from schemas.models import Provider
from tests.contract.corpus import FIXED_INPUTS, build, make_job
from tests.contract.specs import (
    MISTRAL_SPEC,
    OPENAI_SPEC,
    declared_properties,
    errors,
    load_spec,
    mistral_response_quirk,
    mistral_response_validator,
    openapi_validator,
    unknown_keys,
)
from tests.contract.test_request_contracts import CHECKS as REQUEST_CHECKS
from tests.contract.tool_corpus import REFUSED, TOOL_INPUTS, tool_conversations
from tests.unit.testing.test_simulator_tools import (
    EXTRACTION,
    IMAGE_B64,
    ORDER,
    WEATHER,
    choice_field,
    format_field,
    native_body,
    send,
    served_calls,
    tool_round,
    tools_field,
    user_message,
)
from worker.providers import ADAPTERS
from worker.testing.simulator import BEHAVIOR_HEADER, OK, ProviderSimulator, ServedToolCall, answer, read_prompt
from worker.testing.simulator.bodies import RENDERERS

ANTHROPIC_MESSAGE: TypeAdapter[Any] = TypeAdapter(anthropic_types.Message)
ANTHROPIC_ERROR: TypeAdapter[Any] = TypeAdapter(anthropic_types.ErrorResponse)

SUCCESS_BEHAVIOURS = ["ok", "cached", "reasoning", "cached-reasoning", "slow-1", "flaky-0"]
ERROR_BEHAVIOURS = ["auth", "rate", "quota", "overloaded", "error"]


@pytest.fixture
def sim(simulator: ProviderSimulator) -> ProviderSimulator:
    """The shared ``simulator`` fixture (tests/conftest.py), under this file's short name."""
    return simulator


async def exchange(
    sim: ProviderSimulator, provider: Provider, input_name: str, behavior: str
) -> tuple[httpx.Response, Any]:
    request = build(provider, FIXED_INPUTS[input_name], sim.base_url(provider))
    assert request is not None
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(
            sim.base_url(provider) + request.path, json=request.body,
            headers={**request.headers, BEHAVIOR_HEADER: behavior},
        )
    return response, response.json()


def check_openai(body: dict[str, Any]) -> None:
    assert errors(openapi_validator(OPENAI_SPEC, "CreateChatCompletionResponse"), body) == []


def check_mistral(body: dict[str, Any]) -> None:
    assert errors(mistral_response_validator(), body) == []


def check_anthropic(body: dict[str, Any]) -> None:
    message = ANTHROPIC_MESSAGE.validate_python(body, strict=True)
    # Message allows extra fields: every field we send must be one the SDK declares.
    assert unknown_keys(body, type(message).model_fields) == set()
    if "usage" in body:
        assert unknown_keys(body["usage"], anthropic_types.Usage.model_fields) == set()


def check_ollama(body: dict[str, Any]) -> None:
    ollama_types.ChatResponse.model_validate(body, strict=True)
    assert unknown_keys(body, ollama_types.ChatResponse.model_fields) == set()
    assert unknown_keys(body["message"], ollama_types.Message.model_fields) == set()


CHECKS = {
    Provider.OPENAI: check_openai,
    Provider.MISTRAL: check_mistral,
    Provider.ANTHROPIC: check_anthropic,
    Provider.OLLAMA: check_ollama,
}


@pytest.mark.parametrize("provider", list(Provider))
@pytest.mark.parametrize("input_name", ["minimal", "full", "edges"])
@pytest.mark.parametrize("behavior", SUCCESS_BEHAVIOURS)
async def test_simulator_answers_follow_the_contract(
    sim: ProviderSimulator, provider: Provider, input_name: str, behavior: str
) -> None:
    response, body = await exchange(sim, provider, input_name, behavior)
    assert response.status_code == 200, body
    CHECKS[provider](body)
    reply = ADAPTERS[provider].parse_response(body)
    [call] = sim.ledger.calls
    assert reply.usage is not None
    assert reply.usage == call.usage, "the adapter reads exactly what the simulator billed"
    assert reply.text.startswith("sim:")


@pytest.mark.parametrize("provider", list(Provider))
async def test_nousage_answers(sim: ProviderSimulator, provider: Provider) -> None:
    response, body = await exchange(sim, provider, "minimal", "nousage")
    assert response.status_code == 200
    assert ADAPTERS[provider].parse_response(body).usage is None
    if provider in (Provider.OPENAI, Provider.OLLAMA):
        CHECKS[provider](body)  # usage is optional in their definitions
        return
    # Mistral and Anthropic always send usage: ``nousage`` is a deliberately non-conforming
    # compatible server, and the missing usage must be its only deviation.
    with pytest.raises((AssertionError, ValueError)) as caught:
        CHECKS[provider](body)
    assert "usage" in str(caught.value)
    CHECKS[provider]({**body, "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
                      if provider is Provider.MISTRAL else {"input_tokens": 0, "output_tokens": 0}})


@pytest.mark.parametrize("behavior", ERROR_BEHAVIOURS)
async def test_simulator_errors_follow_the_contract(sim: ProviderSimulator, behavior: str) -> None:
    _, body = await exchange(sim, Provider.OPENAI, "minimal", behavior)
    assert errors(openapi_validator(OPENAI_SPEC, "ErrorResponse"), body) == []
    _, body = await exchange(sim, Provider.ANTHROPIC, "minimal", behavior)
    ANTHROPIC_ERROR.validate_python(body, strict=True)
    _, body = await exchange(sim, Provider.OLLAMA, "minimal", behavior)
    assert isinstance(body["error"], str)  # Ollama's API: {"error": "<message>"}


# A request in the protocol's own shape (itself checked against the provider's request definition), and
# whether its answer carries tool calls. Each provider's ids: Mistral's are nine alphanumerics.
_CALL_IDS = {Provider.OPENAI: "call_abc123", Provider.MISTRAL: "abc123XYZ", Provider.ANTHROPIC: "toolu_abc123",
             Provider.OLLAMA: None}


def _tool_result_round(provider: Provider) -> dict[str, Any]:
    call = ServedToolCall(id=_CALL_IDS[provider], name="get_weather", arguments={"city": "Paris", "unit": "celsius"})
    messages = [user_message(provider, "use get_weather"), *tool_round(provider, call, '{"temperature_c": 18}')]
    return native_body(provider, messages, tools=tools_field(provider, [WEATHER]))


FEATURE_REQUESTS: dict[str, Any] = {
    "one tool call": lambda p: native_body(p, [user_message(p, "use get_weather")],
                                           tools=tools_field(p, [WEATHER, ORDER])),
    "two tool calls": lambda p: native_body(p, [user_message(p, "get_weather and lookup_order")],
                                            tools=tools_field(p, [WEATHER, ORDER])),
    "tool offered, not called": lambda p: native_body(p, [user_message(p, "hello")], tools=tools_field(p, [WEATHER])),
    "forced tool": lambda p: native_body(p, [user_message(p, "hello")], tools=tools_field(p, [WEATHER, ORDER]),
                                         **choice_field(p, "lookup_order")),
    "after a tool result": _tool_result_round,
    "json schema": lambda p: native_body(p, [user_message(p, "extract")], **format_field(p, EXTRACTION)),
    "inline image": lambda p: native_body(p, [user_message(p, "describe", image_b64=IMAGE_B64)]),
}


def check_request(provider: Provider, body: dict[str, Any]) -> None:
    """The request against the provider's own definition. Ollama's SDK holds an image as an ``Image`` whose
    wire form is the base64 text: each image must serialise back to exactly what is sent."""
    if provider is Provider.OLLAMA:
        messages = []
        for message in body["messages"]:
            images = [ollama_types.Image(value=data) for data in message.get("images", [])]
            assert [image.model_dump() for image in images] == message.get("images", [])
            messages.append({**message, "images": images} if images else message)
        body = {**body, "messages": messages}
    REQUEST_CHECKS[provider](body)


FEATURE_CASES = [(provider, feature) for provider in Provider for feature in FEATURE_REQUESTS
                 if (provider, feature) != (Provider.OLLAMA, "forced tool")]  # Ollama has no tool choice


@pytest.mark.parametrize(("provider", "feature"), FEATURE_CASES)
@pytest.mark.parametrize("behavior", ["ok", "cached"])
async def test_tool_structured_and_image_answers_follow_the_contract(
    sim: ProviderSimulator, provider: Provider, feature: str, behavior: str
) -> None:
    request = FEATURE_REQUESTS[feature](provider)
    check_request(provider, request)  # the simulator is fed what the provider itself accepts
    async with httpx.AsyncClient(timeout=10) as client:
        response = await send(client, sim, provider, request, **{BEHAVIOR_HEADER: behavior})
    body = response.json()
    assert response.status_code == 200, body
    CHECKS[provider](body)
    [call] = sim.ledger.calls
    assert [(i, n, a) for i, n, a in served_calls(provider, body)] == [
        (c.id, c.name, c.arguments) for c in call.tool_calls]
    assert bool(call.tool_calls) == (feature in ("one tool call", "two tool calls", "forced tool"))
    reply = ADAPTERS[provider].parse_response(body)
    assert reply.usage == call.usage, "the adapter reads exactly what the simulator billed"
    # The adapter reads the calls the simulator served; Ollama's carry no id, so the worker made one.
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [(c.name, c.arguments) for c in call.tool_calls]
    if provider is not Provider.OLLAMA:
        assert [c.id for c in reply.tool_calls] == [c.id for c in call.tool_calls]
    assert reply.finish_reason == ("tool_calls" if call.tool_calls else "stop")


def check_reply(provider: Provider, spec: dict[str, Any], body: dict[str, Any], call: Any) -> None:
    """The adapter reads back what the simulator served (``call``: its ledger call or answer): usage, tool
    calls with arguments valid for their tool, and a parsed answer valid for the response schema."""
    reply = ADAPTERS[provider].parse_response(body, make_job(provider, spec))
    assert reply.usage == call.usage
    response_format = spec.get("response_format")
    # Anthropic's structured answer is a call of the forced answer tool: the adapter makes it ``parsed``.
    answer_tool = (response_format or {}).get("name", "response") if provider is Provider.ANTHROPIC else None
    expected_calls = [(c.name, c.arguments) for c in call.tool_calls if c.name != answer_tool]
    assert [(c.name, c.arguments) for c in reply.tool_calls] == expected_calls
    parameters = {tool["name"]: tool.get("parameters", {"type": "object"}) for tool in spec.get("tools", [])}
    for tool_call in reply.tool_calls:
        assert list(Draft202012Validator(parameters[tool_call.name]).iter_errors(tool_call.arguments)) == []
    if response_format is not None and not reply.tool_calls:
        assert reply.parsed is not None
        schema = response_format.get("schema", {"type": "object"})
        assert list(Draft202012Validator(schema).iter_errors(reply.parsed)) == []


ADAPTER_CASES = [(provider, name) for provider in Provider for name in TOOL_INPUTS if (provider, name) not in REFUSED]


@pytest.mark.parametrize(("provider", "input_name"), ADAPTER_CASES)
async def test_the_simulator_answers_what_the_adapters_send(
    sim: ProviderSimulator, provider: Provider, input_name: str
) -> None:
    """Every tool, image and response-format job the adapters can express: the simulator reads the request
    the adapter builds, its answer follows the provider's definition, and the adapter reads it back whole."""
    spec = TOOL_INPUTS[input_name]
    request = build(provider, spec, sim.base_url(provider))
    assert request is not None
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.post(sim.base_url(provider) + request.path, json=request.body, headers=request.headers)
    body = response.json()
    assert response.status_code == 200, body
    CHECKS[provider](body)
    [call] = sim.ledger.calls
    check_reply(provider, spec, body, call)
    if call.input_shape.images:
        assert call.input_shape.image_tokens >= 85 * call.input_shape.images


@pytest.mark.parametrize("provider", list(Provider))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=tool_conversations())
def test_the_simulator_answers_any_tool_conversation(provider: Provider, spec: dict[str, Any]) -> None:
    """Whatever agent loop the adapters send (generated), the simulator reads it and its answer follows the
    provider's definition and reads back whole (pure functions: no server)."""
    request = build(provider, spec)
    if request is None:
        return  # what the protocol cannot express: refused before any call
    prompt = read_prompt(provider, request.body)
    served = answer(provider, prompt, OK, "sim0000000001")
    body = RENDERERS[provider]("sim0000000001", prompt.model, served, True)
    CHECKS[provider](body)
    check_reply(provider, spec, body, served)


def test_the_response_checks_can_fail() -> None:
    good_openai = {"id": "x", "object": "chat.completion", "created": 1, "model": "m", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi", "refusal": None},
         "logprobs": None, "finish_reason": "stop"}]}
    check_openai(good_openai)
    with pytest.raises(AssertionError):
        check_openai({**good_openai, "object": "chat.completion.chunk"})
    with pytest.raises(AssertionError):
        check_openai({**good_openai, "usage": {"prompt_tokens": "1", "completion_tokens": 1, "total_tokens": 2}})
    good_mistral = {"id": "x", "object": "chat.completion", "created": 1, "model": "m",
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                 "finish_reason": "stop"}]}
    check_mistral(good_mistral)
    with pytest.raises(AssertionError):
        check_mistral({**good_mistral, "choices": [{"index": 0, "message": {"role": "user", "content": "hi"},
                                                    "finish_reason": "stop"}]})
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic's ValidationError
        check_anthropic({"id": "m", "type": "message", "role": "assistant", "model": "m",
                         "content": [{"type": "text", "text": 5}], "stop_reason": "end_turn",
                         "stop_sequence": None, "usage": {"input_tokens": 1, "output_tokens": 1}})
    with pytest.raises(ValueError):  # noqa: PT011
        check_ollama({"model": "m", "message": {"role": "assistant", "content": "x"}, "eval_count": "3"})


def test_mistral_published_quirk_is_still_there() -> None:
    """If Mistral fixes its document, drop the patch in ``specs.mistral_response_validator``."""
    spec = load_spec(MISTRAL_SPEC)
    assert "data" in mistral_response_quirk(spec)
    response = spec["components"]["schemas"]["ChatCompletionResponse"]
    declared = declared_properties(spec, response)
    assert {"id", "object", "model", "usage", "created", "choices"} <= declared
    assert "data" not in declared
