"""Jobs with tools, structured output and images whose requests the contract tests check, fixed and
generated, and the protocols' answers with tool calls, shaped as each provider documents them."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from schemas.models import Provider

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
IMAGE_URL = "https://example.com/receipt.jpg"

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "description": "City name"},
                       "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
CLOCK = {"name": "now"}  # no parameters: the default empty object schema
INVOICE_SCHEMA = {
    "type": "object",
    "properties": {"total": {"type": "number"}, "currency": {"type": "string"},
                   "lines": {"type": "array", "items": {"type": "object", "properties": {"item": {"type": "string"}},
                                                        "required": ["item"], "additionalProperties": False}}},
    "required": ["total", "currency", "lines"],
    "additionalProperties": False,
}

ASK = {"role": "user", "content": "Weather in Paris and Lyon?"}
TWO_CALLS = {"role": "assistant", "content": "Checking both.", "tool_calls": [
    {"id": "call_paris01", "name": "get_weather", "arguments": {"city": "Paris"}},
    {"id": "call_lyon002", "name": "get_weather", "arguments": {"city": "Lyon", "unit": "celsius"}},
]}
RESULTS = [
    {"role": "tool", "tool_call_id": "call_paris01", "content": "18°C, cloudy"},
    {"role": "tool", "tool_call_id": "call_lyon002", "content": [{"type": "text", "text": "21°C, sunny"}]},
]

TOOL_INPUTS: dict[str, dict[str, Any]] = {
    "tools, no choice": {"messages": [ASK], "tools": [WEATHER, CLOCK]},
    "tool_choice auto": {"messages": [ASK], "tools": [WEATHER], "tool_choice": "auto"},
    "tool_choice none": {"messages": [ASK], "tools": [WEATHER], "tool_choice": "none"},
    "tool_choice required": {"messages": [ASK], "tools": [WEATHER, CLOCK], "tool_choice": "required"},
    "tool_choice named": {"messages": [ASK], "tools": [WEATHER, CLOCK], "tool_choice": {"name": "get_weather"}},
    "tool results": {
        "system": "Use the tools.",
        "messages": [ASK, TWO_CALLS, *RESULTS, {"role": "user", "content": "And in Nice?"}],
        "tools": [WEATHER],
    },
    "tool call without text": {
        "messages": [ASK, {"role": "assistant", "content": None, "tool_calls": [TWO_CALLS["tool_calls"][0]]},
                     RESULTS[0]],
        "tools": [WEATHER], "max_tokens": 100,
    },
    "image base64": {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"},
        {"type": "image", "media_type": "image/png", "data": PNG_1PX}]}]},
    "image url": {"messages": [{"role": "user", "content": [
        {"type": "image", "url": IMAGE_URL}, {"type": "text", "text": "Total?"}]}]},
    "response json_schema": {
        "messages": [{"role": "user", "content": "Extract the invoice: 2 apples, 3.50 EUR"}],
        "response_format": {"type": "json_schema", "name": "invoice", "schema": INVOICE_SCHEMA, "strict": True},
    },
    "response json_object": {
        "messages": [{"role": "user", "content": "Give me a JSON object with a greeting."}],
        "response_format": {"type": "json_object"},
    },
    "agent with response format": {
        "messages": [ASK, TWO_CALLS, *RESULTS],
        "tools": [WEATHER], "tool_choice": "auto",
        "response_format": {"type": "json_schema", "name": "forecast", "schema": {
            "type": "object", "properties": {"summary": {"type": "string"}}, "required": ["summary"]}},
    },
    "image in a tool result": {
        "messages": [{"role": "user", "content": "Screenshot?"},
                     {"role": "assistant", "tool_calls": [{"id": "call_shot01", "name": "now", "arguments": {}}]},
                     {"role": "tool", "tool_call_id": "call_shot01", "content": [
                         {"type": "image", "media_type": "image/png", "data": PNG_1PX}]}],
        "tools": [CLOCK],
    },
}

# What a protocol cannot express: invalid_job before any call (the rest must validate).
REFUSED: dict[tuple[Provider, str], str] = {
    (Provider.OLLAMA, "tool_choice required"): "cannot force a tool call",
    (Provider.OLLAMA, "tool_choice named"): "cannot force a tool call",
    (Provider.OLLAMA, "image url"): "never fetches a URL",
    (Provider.OPENAI, "image in a tool result"): "tool results take text only",
    (Provider.MISTRAL, "image in a tool result"): "tool results take text only",
}


# ------------------------------------------------------------------ generated conversations

# Not the response formats' names below, which a tool may not shadow.
_name = st.from_regex(r"[A-Za-z0-9_-]{1,64}", fullmatch=True).filter(lambda n: n not in {"response", "final_answer"})
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=30)
_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.text(max_size=10),
                       st.floats(allow_nan=False, allow_infinity=False, width=32))
_arguments = st.dictionaries(st.text(min_size=1, max_size=8), _json_leaf, max_size=4)
_parameters = st.fixed_dictionaries(
    {"type": st.just("object"),
     "properties": st.dictionaries(st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                                   st.fixed_dictionaries({"type": st.sampled_from(["string", "number", "boolean"])}),
                                   max_size=3)},
)
_image = st.one_of(
    st.just({"type": "image", "media_type": "image/png", "data": PNG_1PX}),
    st.just({"type": "image", "url": IMAGE_URL}),
)
_user_content = st.one_of(
    _text,
    st.lists(st.one_of(st.builds(lambda t: {"type": "text", "text": t}, _text), _image), min_size=1, max_size=3),
)


@st.composite
def tool_conversations(draw: st.DrawFn) -> dict[str, Any]:
    """Any ``input`` with tools whose messages are a valid agent loop: user turns, assistant turns with
    tool calls, and the tool results of each call right after the turn that made it."""
    names = draw(st.lists(_name, min_size=1, max_size=4, unique=True))
    tools = [{"name": name, "description": draw(_text), "parameters": draw(_parameters)} for name in names]
    messages: list[dict[str, Any]] = [{"role": "user", "content": draw(_user_content)}]
    next_id = 0
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        calls = []
        for _ in range(draw(st.integers(min_value=1, max_value=3))):
            next_id += 1
            calls.append({"id": f"call_{next_id:04d}{draw(st.from_regex(r'[A-Za-z0-9]{0,8}', fullmatch=True))}",
                          "name": draw(st.sampled_from(names)), "arguments": draw(_arguments)})
        said = draw(st.one_of(st.none(), _text.filter(bool)))
        messages.append({"role": "assistant", "content": said, "tool_calls": calls})
        messages.extend({"role": "tool", "tool_call_id": call["id"], "content": draw(_text)} for call in calls)
        if draw(st.booleans()):
            messages.append({"role": "user", "content": draw(_user_content)})
    spec: dict[str, Any] = {"messages": messages, "tools": tools}
    choice = draw(st.sampled_from([None, "auto", "none", "required", "named"]))
    if choice == "named":
        spec["tool_choice"] = {"name": draw(st.sampled_from(names))}
    elif choice is not None:
        spec["tool_choice"] = choice
    if draw(st.booleans()):
        spec["response_format"] = draw(st.sampled_from([
            {"type": "json_object"},
            {"type": "json_schema", "name": "final_answer", "schema": {"type": "object"}, "strict": False},
        ]))
    return spec
