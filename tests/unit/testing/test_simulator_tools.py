"""The simulator's tools, structured output and images, in each protocol's own request and response shape.

The request builders here write each protocol's native body (no adapter involved), so the simulator's rules
are pinned independently of the worker; ``tests/contract/test_simulator_contracts.py`` reuses them.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator

from schemas.models import Provider, TokenCounts
from worker.testing.simulator import (
    IMAGE_BASE_TOKENS,
    IMAGE_BYTES_PER_TOKEN,
    PATHS,
    ProviderSimulator,
    ServedToolCall,
    minimal_value,
)

KEY = "sk-test-simulator-tools-0123456789"

WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "examples": ["Paris"]},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1},
        },
        "required": ["city", "unit"],
    },
}
ORDER: dict[str, Any] = {
    "name": "lookup_order",
    "description": "An order by id",
    "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}, "required": ["order_id"]},
}
WEATHER_ARGS = {"city": "Paris", "unit": "celsius"}
EXTRACTION: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer", "minimum": 18},
        "email": {"type": "string", "format": "email"},
        "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "kind": {"$ref": "#/$defs/kind"},
    },
    "required": ["name", "age", "email", "tags", "kind"],
    "additionalProperties": False,
    "$defs": {"kind": {"type": "string", "enum": ["person", "company"]}},
}
EXTRACTED = {"name": "sim", "age": 18, "email": "sim@example.com", "tags": ["sim"], "kind": "person"}
IMAGE_BYTES = b"\x89PNG\r\n\x1a\n" + bytes(992)  # 1000 bytes: 85 + 10 tokens
IMAGE_B64 = base64.b64encode(IMAGE_BYTES).decode()


# ------------------------------------------------------------------- native requests, per protocol


def tools_field(provider: Provider, tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if provider is Provider.ANTHROPIC:
        return [{"name": t["name"], "description": t["description"], "input_schema": t["parameters"]} for t in tools]
    return [{"type": "function", "function": dict(t)} for t in tools]


def choice_field(provider: Provider, choice: str) -> dict[str, Any]:
    """``auto``/``none``/``required`` or a tool name, as the protocol writes it (Ollama has no tool choice)."""
    if provider is Provider.OLLAMA:
        return {}
    if provider is Provider.ANTHROPIC:
        named = {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}}
        return {"tool_choice": named.get(choice, {"type": "tool", "name": choice})}
    if choice in ("auto", "none", "required"):
        return {"tool_choice": choice}
    return {"tool_choice": {"type": "function", "function": {"name": choice}}}


def format_field(provider: Provider, schema: dict[str, Any] | None) -> dict[str, Any]:
    """A JSON Schema answer (or any JSON object when ``schema`` is None) in the protocol's own field."""
    if provider is Provider.OLLAMA:
        return {"format": schema if schema is not None else "json"}
    if provider is Provider.ANTHROPIC:
        assert schema is not None, "Anthropic has no schema-less JSON mode"
        return {"output_config": {"format": {"type": "json_schema", "schema": schema}}}
    if schema is None:
        return {"response_format": {"type": "json_object"}}
    return {"response_format": {"type": "json_schema", "json_schema": {"name": "extract", "schema": schema,
                                                                        "strict": True}}}


def user_message(provider: Provider, text: str, image_b64: str | None = None, image_url: str | None = None
                 ) -> dict[str, Any]:
    if image_b64 is None and image_url is None:
        return {"role": "user", "content": text}
    if provider is Provider.OLLAMA:
        assert image_url is None, "Ollama takes inline images only"
        return {"role": "user", "content": text, "images": [image_b64]}
    if provider is Provider.ANTHROPIC:
        source = ({"type": "base64", "media_type": "image/png", "data": image_b64} if image_b64 is not None
                  else {"type": "url", "url": image_url})
        return {"role": "user", "content": [{"type": "image", "source": source}, {"type": "text", "text": text}]}
    url = f"data:image/png;base64,{image_b64}" if image_b64 is not None else image_url
    parts = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": url}}]
    return {"role": "user", "content": parts}


def tool_round(provider: Provider, call: ServedToolCall, result: str) -> list[dict[str, Any]]:
    """The assistant's tool call sent back, then the tool's result, as the protocol writes them."""
    if provider is Provider.ANTHROPIC:
        return [
            {"role": "assistant", "content": [{"type": "tool_use", "id": call.id, "name": call.name,
                                               "input": call.arguments}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": result}]},
        ]
    if provider is Provider.OLLAMA:
        return [
            {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": call.name,
                                                                              "arguments": call.arguments}}]},
            {"role": "tool", "content": result, "tool_name": call.name},
        ]
    return [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": json.dumps(call.arguments)}}]},
        {"role": "tool", "tool_call_id": call.id, "content": result},
    ]


def native_body(provider: Provider, messages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": "sim-model", "messages": messages, **fields}
    if provider is Provider.ANTHROPIC:
        body.setdefault("max_tokens", 1024)
    if provider is Provider.OLLAMA:
        body["stream"] = False
    return body


def headers_for(provider: Provider) -> dict[str, str]:
    if provider is Provider.ANTHROPIC:
        return {"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    return {} if provider is Provider.OLLAMA else {"authorization": f"Bearer {KEY}"}


async def send(client: httpx.AsyncClient, simulator: ProviderSimulator, provider: Provider, body: dict[str, Any],
               **headers: str) -> httpx.Response:
    return await client.post(simulator.base_url(provider) + PATHS[provider][1], json=body,
                             headers={**headers_for(provider), **headers})


# ------------------------------------------------------------------- native responses, per protocol


def served_calls(provider: Provider, body: dict[str, Any]) -> list[tuple[str | None, str, dict[str, Any]]]:
    """(id, name, arguments) of each tool call in a response, read from the protocol's own fields."""
    if provider is Provider.ANTHROPIC:
        return [(b["id"], b["name"], b["input"]) for b in body["content"] if b["type"] == "tool_use"]
    if provider is Provider.OLLAMA:
        calls = body["message"].get("tool_calls") or []
        return [(None, c["function"]["name"], c["function"]["arguments"]) for c in calls]
    calls = body["choices"][0]["message"].get("tool_calls") or []
    return [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def served_text(provider: Provider, body: dict[str, Any]) -> str:
    if provider is Provider.ANTHROPIC:
        return "".join(b["text"] for b in body["content"] if b["type"] == "text")
    if provider is Provider.OLLAMA:
        return str(body["message"]["content"])
    return body["choices"][0]["message"]["content"] or ""


def finish_of(provider: Provider, body: dict[str, Any]) -> str:
    if provider is Provider.ANTHROPIC:
        return str(body["stop_reason"])
    if provider is Provider.OLLAMA:
        return str(body["done_reason"])
    return str(body["choices"][0]["finish_reason"])


STOP = {Provider.OPENAI: "stop", Provider.MISTRAL: "stop", Provider.ANTHROPIC: "end_turn", Provider.OLLAMA: "stop"}
TOOL_FINISH = {Provider.OPENAI: "tool_calls", Provider.MISTRAL: "tool_calls", Provider.ANTHROPIC: "tool_use",
               Provider.OLLAMA: "stop"}


# ------------------------------------------------------- fixtures (``simulator``: tests/conftest.py)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as http:
        yield http


def words(text: str) -> int:
    return len(text.split())


def tool_cost(tool: dict[str, Any]) -> int:
    """The documented input cost of an offered tool: name and description words, a token per 4 schema bytes."""
    schema = json.dumps(tool["parameters"], sort_keys=True, separators=(",", ":"))
    return words(tool["name"]) + words(tool["description"]) + len(schema) // 4


# ------------------------------------------------------------------------------ minimal schema values


@pytest.mark.parametrize(("schema", "expected"), [
    (EXTRACTION, EXTRACTED),
    (WEATHER["parameters"], WEATHER_ARGS),
    ({"type": "object", "properties": {"a": {"type": "string"}}}, {}),
    ({"type": "integer", "exclusiveMinimum": 4, "multipleOf": 3}, 6),
    ({"type": "number", "maximum": -2}, -2),
    ({"type": ["null", "boolean"]}, True),
    ({"const": "fixed", "type": "string"}, "fixed"),
    ({"type": "string", "default": "d", "examples": ["e"]}, "d"),
    ({"type": "string", "minLength": 5}, "simmm"),
    ({"type": "string", "maxLength": 2}, "si"),
    ({"type": "string", "format": "date-time"}, "2026-01-01T00:00:00Z"),
    ({"anyOf": [{"type": "integer"}, {"type": "string"}]}, 0),
    ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]}]}, {"a": 0, "b": True}),
    ({"type": "array", "items": {"$ref": "#/definitions/x"}, "minItems": 2, "definitions": {"x": {"type": "null"}}},
     [None, None]),
])
def test_minimal_values_are_valid_and_predictable(schema: dict[str, Any], expected: Any) -> None:
    value = minimal_value(schema)
    assert value == expected
    assert list(Draft202012Validator(schema).iter_errors(value)) == []


def test_an_unresolvable_ref_is_refused() -> None:
    from worker.testing.simulator.schema_values import UnsupportedSchema

    with pytest.raises(UnsupportedSchema):
        minimal_value({"$ref": "#/$defs/missing"})
    with pytest.raises(UnsupportedSchema):
        minimal_value({"$ref": "#/$defs/loop", "$defs": {"loop": {"$ref": "#/$defs/loop"}}})


# --------------------------------------------------------------------------------------- tool calls


@pytest.mark.parametrize("provider", list(Provider))
async def test_a_mentioned_tool_is_called_with_valid_arguments(
    simulator: ProviderSimulator, client: httpx.AsyncClient, provider: Provider
) -> None:
    user = "what is the weather in Paris? use get_weather"
    body = native_body(provider, [user_message(provider, user)], tools=tools_field(provider, [WEATHER, ORDER]))
    response = await send(client, simulator, provider, body)
    assert response.status_code == 200, response.text
    [(call_id, name, arguments)] = served_calls(provider, response.json())
    assert (name, arguments) == ("get_weather", WEATHER_ARGS)
    assert finish_of(provider, response.json()) == TOOL_FINISH[provider]
    [ledger] = simulator.ledger.calls
    assert ledger.tool_calls == (ServedToolCall(id=call_id, name=name, arguments=arguments),)
    assert ledger.text == ""
    if provider is Provider.OLLAMA:
        assert call_id is None
    elif provider is Provider.MISTRAL:
        assert len(call_id or "") == 9 and (call_id or "").isalnum()
    else:
        assert call_id
    # Input: the user's words plus both tool definitions; output: the call's name and arguments JSON words.
    assert ledger.input_shape.tools == 2
    assert ledger.input_shape.tool_tokens == tool_cost(WEATHER) + tool_cost(ORDER)
    assert ledger.usage == TokenCounts(input_tokens=words(user) + tool_cost(WEATHER) + tool_cost(ORDER),
                                       output_tokens=words("get_weather " + json.dumps(WEATHER_ARGS)))


@pytest.mark.parametrize("provider", list(Provider))
async def test_every_mentioned_tool_is_called_in_the_order_offered(
    simulator: ProviderSimulator, client: httpx.AsyncClient, provider: Provider
) -> None:
    body = native_body(provider, [user_message(provider, "lookup_order A-1, then GET_WEATHER")],
                       tools=tools_field(provider, [WEATHER, ORDER]))
    response = await send(client, simulator, provider, body)
    calls = served_calls(provider, response.json())
    assert [name for _, name, _ in calls] == ["get_weather", "lookup_order"]
    assert calls[1][2] == {"order_id": "sim"}
    ids = [call_id for call_id, _, _ in calls]
    assert provider is Provider.OLLAMA or len(set(ids)) == 2


@pytest.mark.parametrize("provider", list(Provider))
async def test_no_mention_no_call(simulator: ProviderSimulator, client: httpx.AsyncClient, provider: Provider) -> None:
    body = native_body(provider, [user_message(provider, "hello there")], tools=tools_field(provider, [WEATHER]))
    response = await send(client, simulator, provider, body)
    assert served_calls(provider, response.json()) == []
    assert served_text(provider, response.json()) == "sim: hello there"
    assert simulator.ledger.calls[0].tool_calls == ()


@pytest.mark.parametrize("provider", [Provider.OPENAI, Provider.MISTRAL, Provider.ANTHROPIC])
@pytest.mark.parametrize(("choice", "called", "openai_finish"), [
    ("none", [], "stop"),
    ("required", ["get_weather"], "tool_calls"),
    ("lookup_order", ["lookup_order"], "stop"),  # OpenAI finishes a call forced by name with "stop"
])
async def test_tool_choice(
    simulator: ProviderSimulator, client: httpx.AsyncClient, provider: Provider, choice: str, called: list[str],
    openai_finish: str,
) -> None:
    body = native_body(provider, [user_message(provider, "no tool named here")],
                       tools=tools_field(provider, [WEATHER, ORDER]), **choice_field(provider, choice))
    response = await send(client, simulator, provider, body)
    assert response.status_code == 200, response.text
    assert [name for _, name, _ in served_calls(provider, response.json())] == called
    finish = finish_of(provider, response.json())
    if provider is Provider.OPENAI:
        assert finish == openai_finish
    else:
        assert finish == (TOOL_FINISH[provider] if called else STOP[provider])


@pytest.mark.parametrize("provider", [Provider.OPENAI, Provider.MISTRAL, Provider.ANTHROPIC])
async def test_a_forced_tool_that_is_not_offered_is_a_400(
    simulator: ProviderSimulator, client: httpx.AsyncClient, provider: Provider
) -> None:
    body = native_body(provider, [user_message(provider, "hi")], tools=tools_field(provider, [WEATHER]),
                       **choice_field(provider, "missing_tool"))
    response = await send(client, simulator, provider, body)
    assert response.status_code in (400, 422)
    assert "missing_tool" in response.text


@pytest.mark.parametrize("provider", list(Provider))
async def test_the_answer_after_a_tool_result_uses_it(
    simulator: ProviderSimulator, client: httpx.AsyncClient, provider: Provider
) -> None:
    user = "weather in Paris? use get_weather"
    tools = tools_field(provider, [WEATHER])
    first = await send(client, simulator, provider, native_body(provider, [user_message(provider, user)], tools=tools))
    [call] = simulator.ledger.calls[0].tool_calls
    result = '{"temperature_c": 18, "sky": "clear"}'
    messages = [user_message(provider, user), *tool_round(provider, call, result)]
    if provider is Provider.OLLAMA:  # Ollama's tool message may omit the name: the call before it tells
        del messages[-1]["tool_name"]
    second = await send(client, simulator, provider, native_body(provider, messages, tools=tools))
    assert first.status_code == second.status_code == 200, second.text
    body = second.json()
    assert served_calls(provider, body) == []
    assert served_text(provider, body) == f"sim: get_weather said {result}"
    assert finish_of(provider, body) == STOP[provider]
    billed = simulator.ledger.calls[1].usage
    assert billed is not None
    sent_back = words(user) + words("get_weather " + json.dumps(WEATHER_ARGS)) + words(result)
    assert billed == TokenCounts(input_tokens=sent_back + tool_cost(WEATHER),
                                 output_tokens=words(f"sim: get_weather said {result}"))


# -------------------------------------------------------------------------------- structured output


@pytest.mark.parametrize("provider", list(Provider))
async def test_a_schema_gets_a_valid_json_answer(
    simulator: ProviderSimulator, client: httpx.AsyncClient, provider: Provider
) -> None:
    body = native_body(provider, [user_message(provider, "Ada, 36, ada@example.com")],
                       **format_field(provider, EXTRACTION))
    response = await send(client, simulator, provider, body)
    assert response.status_code == 200, response.text
    text = served_text(provider, response.json())
    assert json.loads(text) == EXTRACTED
    assert finish_of(provider, response.json()) == STOP[provider]
    [ledger] = simulator.ledger.calls
    assert ledger.text == text
    assert ledger.usage is not None and ledger.usage.output_tokens == words(text)


@pytest.mark.parametrize("provider", [Provider.OPENAI, Provider.MISTRAL, Provider.OLLAMA])
async def test_json_mode_wraps_the_text_answer(
    simulator: ProviderSimulator, client: httpx.AsyncClient, provider: Provider
) -> None:
    body = native_body(provider, [user_message(provider, "say hi")], **format_field(provider, None))
    response = await send(client, simulator, provider, body)
    assert json.loads(served_text(provider, response.json())) == {"answer": "sim: say hi"}


async def test_a_forced_anthropic_tool_carries_the_schema_value(
    simulator: ProviderSimulator, client: httpx.AsyncClient
) -> None:
    """The other way to get structured output from Anthropic: one tool, forced by name."""
    extractor = {"name": "record", "description": "Record the person", "parameters": EXTRACTION}
    body = native_body(Provider.ANTHROPIC, [user_message(Provider.ANTHROPIC, "Ada, 36")],
                       tools=tools_field(Provider.ANTHROPIC, [extractor]),
                       **choice_field(Provider.ANTHROPIC, "record"))
    response = await send(client, simulator, Provider.ANTHROPIC, body)
    [(_, name, arguments)] = served_calls(Provider.ANTHROPIC, response.json())
    assert (name, arguments) == ("record", EXTRACTED)


# ------------------------------------------------------------------------------------------- images


@pytest.mark.parametrize("provider", list(Provider))
async def test_inline_images_cost_a_documented_count(
    simulator: ProviderSimulator, client: httpx.AsyncClient, provider: Provider
) -> None:
    body = native_body(provider, [user_message(provider, "describe this picture", image_b64=IMAGE_B64)])
    response = await send(client, simulator, provider, body)
    assert response.status_code == 200, response.text
    assert served_text(provider, response.json()) == "sim: describe this picture"
    per_image = IMAGE_BASE_TOKENS + len(IMAGE_BYTES) // IMAGE_BYTES_PER_TOKEN
    assert per_image == 95
    [ledger] = simulator.ledger.calls
    assert (ledger.input_shape.images, ledger.input_shape.image_tokens) == (1, per_image)
    assert ledger.usage is not None and ledger.usage.input_tokens == 3 + per_image


@pytest.mark.parametrize("provider", [Provider.OPENAI, Provider.MISTRAL, Provider.ANTHROPIC])
async def test_an_image_by_url_is_not_fetched_and_costs_the_base(
    simulator: ProviderSimulator, client: httpx.AsyncClient, provider: Provider
) -> None:
    body = native_body(provider, [user_message(provider, "look", image_url="https://example.invalid/cat.png")])
    response = await send(client, simulator, provider, body)
    assert response.status_code == 200, response.text
    assert simulator.ledger.calls[0].input_shape.image_tokens == IMAGE_BASE_TOKENS
    assert len(simulator.ledger.requests()) == 1, "the simulator fetched nothing, not even from itself"


@pytest.mark.parametrize("provider", list(Provider))
async def test_undecodable_image_data_is_a_400(
    simulator: ProviderSimulator, client: httpx.AsyncClient, provider: Provider
) -> None:
    body = native_body(provider, [user_message(provider, "look", image_b64="not base64!")])
    response = await send(client, simulator, provider, body)
    assert response.status_code in (400, 422)
    assert "base64" in response.text
    assert simulator.ledger.billed() == []


@pytest.mark.parametrize("provider", [Provider.OPENAI, Provider.MISTRAL, Provider.ANTHROPIC])
async def test_a_required_choice_after_tool_results_calls_the_last_tool(
    simulator: ProviderSimulator, client: httpx.AsyncClient, provider: Provider
) -> None:
    """Where the worker offers Anthropic's structured-answer tool: an agent that must call a tool ends with it."""
    call = ServedToolCall(id="abc123XYZ", name="get_weather", arguments=WEATHER_ARGS)
    messages = [user_message(provider, "use get_weather"), *tool_round(provider, call, "18 C")]
    body = native_body(provider, messages, tools=tools_field(provider, [WEATHER, ORDER]),
                       **choice_field(provider, "required"))
    response = await send(client, simulator, provider, body)
    assert [name for _, name, _ in served_calls(provider, response.json())] == ["lookup_order"]
