"""Tools, tool calls and results, images and structured output: every request an adapter sends validates
against the provider's own definition, what a protocol cannot express is refused before sending, and answers
with tool calls (shaped as each provider documents them) validate and are read exactly."""

from __future__ import annotations

import copy
from typing import Any

import anthropic.types as anthropic_types
import ollama._types as ollama_types
import pytest
from pydantic import ValidationError

from schemas.models import Provider, ToolCall
from tests.contract.corpus import API_KEY, make_job
from tests.contract.test_request_contracts import CHECKS as REQUEST_CHECKS
from tests.contract.test_simulator_contracts import CHECKS as RESPONSE_CHECKS
from tests.contract.tool_corpus import INVOICE_SCHEMA, PNG_1PX, REFUSED, TOOL_INPUTS, WEATHER
from worker.failures import InvalidJob
from worker.keys.endpoint import Endpoint
from worker.providers import ADAPTERS
from worker.providers.base import ProviderRequest
from worker.providers.mistral import MISTRAL_CALL_ID

# The SDK's TypedDicts ignore keys they do not declare: nested blocks are held to their declared keys here.
ANTHROPIC_BLOCKS: dict[str, Any] = {
    "text": anthropic_types.TextBlockParam,
    "image": anthropic_types.ImageBlockParam,
    "tool_use": anthropic_types.ToolUseBlockParam,
    "tool_result": anthropic_types.ToolResultBlockParam,
}
ANTHROPIC_SOURCES: dict[str, Any] = {
    "base64": anthropic_types.Base64ImageSourceParam,
    "url": anthropic_types.URLImageSourceParam,
}


def declared(typed_dict: Any) -> frozenset[str]:
    return frozenset(typed_dict.__required_keys__ | typed_dict.__optional_keys__)


def check_anthropic_blocks(body: dict[str, Any]) -> None:
    blocks = [block for message in body["messages"] if isinstance(message["content"], list)
              for block in message["content"]]
    blocks += [inner for block in blocks if block["type"] == "tool_result" and isinstance(block["content"], list)
               for inner in block["content"]]
    for block in blocks:
        assert set(block) <= declared(ANTHROPIC_BLOCKS[block["type"]]), block["type"]
        if block["type"] == "image":
            assert set(block["source"]) <= declared(ANTHROPIC_SOURCES[block["source"]["type"]])
    for tool in body.get("tools", []):
        assert set(tool) <= declared(anthropic_types.ToolParam)


def check_ollama_images(body: dict[str, Any]) -> dict[str, Any]:
    """Ollama's wire format carries images as base64 strings, its ``Message`` type as ``Image`` objects: each
    string must be what ``Image`` serializes to (base64, checked); the rest is held to the types as it is."""
    body = copy.deepcopy(body)
    for message in body["messages"]:
        for image in message.pop("images", []):
            assert isinstance(image, str)
            assert ollama_types.Image(value=image).model_dump() == image
    return body


def check_mistral_call_ids(body: dict[str, Any]) -> None:
    """Not in Mistral's OpenAPI document but enforced by its API (400 "Tool call id was … but must be a-z,
    A-Z, 0-9, with a length of 9"): every tool-call id of a request."""
    ids = [call["id"] for m in body["messages"] for call in m.get("tool_calls") or []]
    ids += [m["tool_call_id"] for m in body["messages"] if m["role"] == "tool"]
    assert all(MISTRAL_CALL_ID.fullmatch(call_id) for call_id in ids), ids


def check_request(provider: Provider, body: dict[str, Any]) -> None:
    if provider is Provider.OLLAMA:
        body = check_ollama_images(body)
    REQUEST_CHECKS[provider](body)
    if provider is Provider.ANTHROPIC:
        check_anthropic_blocks(body)
    if provider is Provider.MISTRAL:
        check_mistral_call_ids(body)


def build(provider: Provider, spec: dict[str, Any], base_url: str | None = None) -> ProviderRequest:
    key = None if provider is Provider.OLLAMA else API_KEY
    return ADAPTERS[provider].build_request(make_job(provider, spec), Endpoint.resolve(provider, base_url), key)


CASES = [(provider, name) for name in TOOL_INPUTS for provider in Provider]


@pytest.mark.parametrize(("provider", "name"), CASES, ids=[f"{p.value}-{n}" for p, n in CASES])
def test_tool_requests_follow_the_contract(provider: Provider, name: str) -> None:
    refusal = REFUSED.get((provider, name))
    if refusal is not None:
        with pytest.raises(InvalidJob, match=refusal) as caught:
            build(provider, TOOL_INPUTS[name])
        assert caught.value.message.startswith(f"{provider.value} cannot express")
        return
    check_request(provider, build(provider, TOOL_INPUTS[name]).body)


def test_compatible_openai_servers_get_the_same_tool_shapes() -> None:
    for name in TOOL_INPUTS:
        if (Provider.OPENAI, name) not in REFUSED:
            check_request(Provider.OPENAI, build(Provider.OPENAI, TOOL_INPUTS[name], "http://127.0.0.1:8000/v1").body)


@pytest.mark.parametrize("provider", list(Provider))
def test_parameters_and_response_schemas_reach_the_provider_unchanged(provider: Provider) -> None:
    body = build(provider, {**TOOL_INPUTS["tools, no choice"],
                            "response_format": TOOL_INPUTS["response json_schema"]["response_format"]}).body
    text = repr(body)
    assert repr(WEATHER["parameters"]) in text
    assert repr(INVOICE_SCHEMA) in text


def test_several_tool_results_go_in_one_anthropic_user_turn() -> None:
    body = build(Provider.ANTHROPIC, TOOL_INPUTS["tool results"]).body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]
    results_turn = body["messages"][2]["content"]
    assert [b["type"] for b in results_turn] == ["tool_result", "tool_result", "text"]
    assert [b.get("tool_use_id") for b in results_turn[:2]] == ["call_paris01", "call_lyon002"]
    assert body["messages"][1]["content"][0] == {"type": "text", "text": "Checking both."}


# -------------------------------------------------------------- the checks can fail (negative cases)


def _spoiled(body: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    spoiled = copy.deepcopy(body)
    target = spoiled
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return spoiled


WRONG_SHAPES: list[tuple[Provider, str, list[Any], Any]] = [
    # a tool call's arguments must be a JSON string in chat completions (OpenAI)
    (Provider.OPENAI, "tool results", ["messages", 2, "tool_calls", 0, "function", "arguments"], {"city": "Paris"}),
    (Provider.OPENAI, "tool results", ["messages", 3, "role"], "function_result"),
    (Provider.OPENAI, "tool_choice named", ["tool_choice"], {"name": "get_weather"}),
    (Provider.OPENAI, "image base64", ["messages", 0, "content", 1], {"type": "image", "data": PNG_1PX}),
    (Provider.OPENAI, "response json_schema", ["response_format", "json_schema"], INVOICE_SCHEMA),
    (Provider.MISTRAL, "tools, no choice", ["tools", 0, "function", "input_schema"], {"type": "object"}),
    (Provider.MISTRAL, "tool_choice required", ["tool_choice"], "always"),
    (Provider.MISTRAL, "response json_object", ["response_format", "type"], "json"),
    (Provider.MISTRAL, "tool results", ["messages", 2, "tool_calls", 0, "id"], "call_paris01"),
    (Provider.ANTHROPIC, "tool results", ["messages", 2, "content", 0, "tool_call_id"], "call_paris01"),
    (Provider.ANTHROPIC, "tools, no choice", ["tools", 0, "parameters"], {"type": "object"}),
    (Provider.ANTHROPIC, "tool_choice required", ["tool_choice"], {"type": "required"}),
    (Provider.ANTHROPIC, "image base64", ["messages", 0, "content", 1, "source", "media_type"], "image/bmp"),
    (Provider.ANTHROPIC, "image url", ["messages", 0, "content", 0, "source"], {"type": "url"}),
    (Provider.OLLAMA, "tool results", ["messages", 2, "tool_calls", 0, "function", "arguments"], '{"city": "x"}'),
    (Provider.OLLAMA, "tools, no choice", ["tools", 0, "function", "parameters", "type"], "array"),
    (Provider.OLLAMA, "image base64", ["messages", 0, "images"], ["not base64!"]),
    (Provider.OLLAMA, "response json_object", ["format"], "yaml"),
]


@pytest.mark.parametrize(("provider", "name", "path", "value"), WRONG_SHAPES,
                         ids=[f"{w[0].value}-{w[1]}-{'.'.join(map(str, w[2]))}" for w in WRONG_SHAPES])
def test_a_wrong_shape_fails_the_contract(provider: Provider, name: str, path: list[Any], value: Any) -> None:
    body = build(provider, TOOL_INPUTS[name]).body
    check_request(provider, body)
    # Ollama's pydantic types raise ValidationError or, for an image, ValueError; our own checks AssertionError.
    with pytest.raises((AssertionError, ValidationError, ValueError)):
        check_request(provider, _spoiled(body, path, value))


# ----------------------------------------------------------------------------- answers with tool calls

OPENAI_TOOL_ANSWER: dict[str, Any] = {
    "id": "chatcmpl-abc123", "object": "chat.completion", "created": 1741570283, "model": "gpt-4o-2024-08-06",
    "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "refusal": None, "annotations": [],
        "tool_calls": [
            {"id": "call_Paris7xQ", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
            {"id": "call_Lyon9kR", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\":\"Lyon\",\"unit\":\"celsius\"}"}},
        ]}}],
    "usage": {"prompt_tokens": 82, "completion_tokens": 51, "total_tokens": 133},
}
MISTRAL_TOOL_ANSWER: dict[str, Any] = {
    "id": "cmpl-e5cc70bb28c4", "object": "chat.completion", "model": "mistral-large-latest", "created": 1702256327,
    "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": "", "prefix": False,
        "tool_calls": [{"id": "D681PevKs", "type": "function", "index": 0,
                        "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}},
                       {"id": "Ab12Cd34E", "type": "function", "index": 1,
                        "function": {"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}}]}}],
    "usage": {"prompt_tokens": 94, "completion_tokens": 40, "total_tokens": 134},
}
ANTHROPIC_TOOL_ANSWER: dict[str, Any] = {
    "id": "msg_01Aq9w938a90dw8q", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5-20250929",
    "content": [
        {"type": "text", "text": "I'll check both cities."},
        {"type": "tool_use", "id": "toolu_01A09q90qw90lq917835lq9", "name": "get_weather", "input": {"city": "Paris"}},
        {"type": "tool_use", "id": "toolu_01B19q90qw90lq917835lq8", "name": "get_weather",
         "input": {"city": "Lyon", "unit": "celsius"}},
    ],
    "stop_reason": "tool_use", "stop_sequence": None,
    "usage": {"input_tokens": 472, "output_tokens": 91, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0},
}
OLLAMA_TOOL_ANSWER: dict[str, Any] = {
    "model": "llama3.2", "created_at": "2025-07-07T20:32:53.844124Z", "done": True, "done_reason": "stop",
    "message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}},
        {"function": {"name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}}}]},
    "total_duration": 3124535833, "prompt_eval_count": 170, "eval_count": 38,
}
TOOL_ANSWERS = {Provider.OPENAI: OPENAI_TOOL_ANSWER, Provider.MISTRAL: MISTRAL_TOOL_ANSWER,
                Provider.ANTHROPIC: ANTHROPIC_TOOL_ANSWER, Provider.OLLAMA: OLLAMA_TOOL_ANSWER}
PROVIDER_FINISH = {Provider.OPENAI: "tool_calls", Provider.MISTRAL: "tool_calls", Provider.ANTHROPIC: "tool_use",
                   Provider.OLLAMA: "stop"}


@pytest.mark.parametrize("provider", list(Provider))
def test_answers_with_tool_calls_follow_the_contract_and_are_read(provider: Provider) -> None:
    body = TOOL_ANSWERS[provider]
    RESPONSE_CHECKS[provider](body)
    reply = ADAPTERS[provider].parse_response(body, make_job(provider, TOOL_INPUTS["tool_choice auto"]))
    assert [(c.name, c.arguments) for c in reply.tool_calls] == [
        ("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Lyon", "unit": "celsius"})]
    assert (reply.finish_reason, reply.provider_finish_reason) == ("tool_calls", PROVIDER_FINISH[provider])
    assert reply.parsed is None
    assert len({c.id for c in reply.tool_calls}) == 2
    if provider is Provider.OLLAMA:
        assert all(c.id.startswith("call_") for c in reply.tool_calls), "the worker makes the ids Ollama lacks"


@pytest.mark.parametrize("provider", list(Provider))
def test_tool_calls_of_an_answer_round_trip_into_a_valid_request(provider: Provider) -> None:
    """A result's tool calls sent back as they are, with their results: the provider accepts the request."""
    reply = ADAPTERS[provider].parse_response(TOOL_ANSWERS[provider], None)
    calls = [call.model_dump() for call in reply.tool_calls]
    spec = {"messages": [TOOL_INPUTS["tool_choice auto"]["messages"][0],
                         {"role": "assistant", "content": reply.text or None, "tool_calls": calls},
                         *({"role": "tool", "tool_call_id": c["id"], "content": "20°C"} for c in calls)],
            "tools": [WEATHER]}
    check_request(provider, build(provider, spec).body)
    assert [ToolCall.model_validate(c) for c in calls] == list(reply.tool_calls)


INVOICE_JSON = '{"total": 3.5, "currency": "EUR", "lines": [{"item": "apple"}]}'
STRUCTURED_ANSWERS: dict[Provider, dict[str, Any]] = {
    Provider.OPENAI: {**OPENAI_TOOL_ANSWER, "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop",
                                                         "message": {"role": "assistant", "refusal": None,
                                                                     "content": INVOICE_JSON}}]},
    Provider.MISTRAL: {**MISTRAL_TOOL_ANSWER, "choices": [{"index": 0, "finish_reason": "stop", "message": {
        "role": "assistant", "content": INVOICE_JSON}}]},
    Provider.ANTHROPIC: {**ANTHROPIC_TOOL_ANSWER, "content": [
        {"type": "tool_use", "id": "toolu_01X", "name": "invoice",
         "input": {"total": 3.5, "currency": "EUR", "lines": [{"item": "apple"}]}}]},
    Provider.OLLAMA: {**OLLAMA_TOOL_ANSWER, "message": {"role": "assistant", "content": INVOICE_JSON}},
}


@pytest.mark.parametrize("provider", list(Provider))
def test_structured_answers_follow_the_contract_and_are_parsed(provider: Provider) -> None:
    body = STRUCTURED_ANSWERS[provider]
    RESPONSE_CHECKS[provider](body)
    reply = ADAPTERS[provider].parse_response(body, make_job(provider, TOOL_INPUTS["response json_schema"]))
    assert reply.parsed == {"total": 3.5, "currency": "EUR", "lines": [{"item": "apple"}]}
    assert reply.tool_calls == ()
    assert reply.finish_reason == "stop", "the forced answer tool is not a tool call of the job"
