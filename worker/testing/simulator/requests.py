"""Each protocol's request body read into one neutral ``Prompt``: texts, tools, tool results, images, formats.

Lenient where the providers are lenient (unknown content parts are ignored), strict where a real provider
answers 400: no messages, no model, a non-object tool argument string, a forced tool that is not offered,
undecodable image data.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Any

from schemas.models import Provider


class BadRequest(Exception):
    """The request body is not what the protocol expects (answered 400/422 in the provider's shape)."""


@dataclass(frozen=True, slots=True)
class OfferedTool:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolResult:
    name: str
    """The tool whose call this answers ("" when the request does not say and no earlier call has its id)."""
    content: str


@dataclass(frozen=True, slots=True)
class OutputFormat:
    schema: dict[str, Any] | None
    """The JSON Schema the answer must follow; None for "any JSON object" (``json_object``, ``format: "json"``)."""


@dataclass(frozen=True, slots=True)
class Prompt:
    model: str
    texts: tuple[str, ...]
    """Every text counted as input words: system prompt, message texts, tool calls, tool results."""
    last_user: str
    max_tokens: int | None
    tools: tuple[OfferedTool, ...] = ()
    tool_choice: str = "auto"
    """``auto``, ``none`` or ``required`` (a tool must be called; Anthropic's ``any``, Mistral's ``any``)."""
    forced_tool: str | None = None
    """The tool a request forces by name."""
    tool_results: tuple[ToolResult, ...] = ()
    """The tool results the conversation ends with (the answer to them is due)."""
    images: tuple[int | None, ...] = ()
    """Decoded bytes of each image in the input; None for an image given by URL (never fetched)."""
    output_format: OutputFormat | None = None


@dataclass(slots=True)
class _Call:
    id: str | None
    name: str


@dataclass(slots=True)
class _Turn:
    """One message, whatever the protocol: its role, text, images, tool calls made, tool results given."""

    role: str
    texts: list[str] = field(default_factory=list)
    images: list[int | None] = field(default_factory=list)
    calls: list[_Call] = field(default_factory=list)
    results: list[tuple[str | None, str | None, str]] = field(default_factory=list)
    """(call id, tool name, content) of each tool result."""

    @property
    def text(self) -> str:
        return " ".join(self.texts)


def json_text(value: Any) -> str:
    """How the simulator writes (and counts) a JSON value: ``json.dumps`` with its default spacing."""
    return json.dumps(value, ensure_ascii=False)


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{name}: must be an object")
    return value


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise BadRequest(f"{name}: a non-empty string is required")
    return value


def _arguments(value: Any, name: str) -> dict[str, Any]:
    """Tool call arguments: an object, or (OpenAI, Mistral) a JSON text of one."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise BadRequest(f"{name}: arguments are not valid JSON") from exc
    return _mapping(value, f"{name}.arguments")


def _decoded_size(data: Any, name: str) -> int:
    if not isinstance(data, str):
        raise BadRequest(f"{name}: base64 image data is required")
    try:
        return len(base64.b64decode(data, validate=True))
    except (binascii.Error, ValueError) as exc:
        raise BadRequest(f"{name}: image data is not valid base64") from exc


def _image_url(url: Any, name: str) -> int | None:
    """A data URL's decoded size, or None for a URL the provider would fetch."""
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{name}: an image url is required")
    if url.startswith("data:"):
        header, _, data = url.partition(",")
        if not header.endswith(";base64"):
            raise BadRequest(f"{name}: only base64 data URLs are supported")
        return _decoded_size(data, name)
    return None


# ------------------------------------------------------------------- OpenAI and Mistral chat completions


def _chat_content(turn: _Turn, content: Any, name: str) -> None:
    if content is None:
        return
    if isinstance(content, str):
        turn.texts.append(content)
        return
    if not isinstance(content, list):
        raise BadRequest(f"{name}.content: must be a string or a list of content parts")
    for index, part in enumerate(content):
        part = _mapping(part, f"{name}.content[{index}]")
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            turn.texts.append(part["text"])
        elif part.get("type") == "image_url":
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            turn.images.append(_image_url(url, f"{name}.content[{index}].image_url"))


def _chat_turn(message: dict[str, Any], name: str) -> _Turn:
    turn = _Turn(role=str(message.get("role")))
    _chat_content(turn, message.get("content"), name)
    for index, call in enumerate(message.get("tool_calls") or []):
        where = f"{name}.tool_calls[{index}]"
        function = _mapping(_mapping(call, where).get("function"), f"{where}.function")
        tool = _string(function.get("name"), f"{where}.function.name")
        arguments = _arguments(function.get("arguments"), f"{where}.function")
        turn.calls.append(_Call(id=call.get("id"), name=tool))
        turn.texts.append(f"{tool} {json_text(arguments)}")
    if turn.role == "tool":
        turn.results.append((message.get("tool_call_id"), message.get("name"), turn.text))
    return turn


def _function_tools(body: dict[str, Any]) -> tuple[OfferedTool, ...]:
    tools = []
    for index, tool in enumerate(body.get("tools") or []):
        function = _mapping(_mapping(tool, f"tools[{index}]").get("function"), f"tools[{index}].function")
        tools.append(OfferedTool(
            name=_string(function.get("name"), f"tools[{index}].function.name"),
            description=str(function.get("description") or ""),
            parameters=_mapping(function.get("parameters", {}), f"tools[{index}].function.parameters"),
        ))
    return tuple(tools)


def _chat_tool_choice(value: Any) -> tuple[str, str | None]:
    if value is None or value == "auto":
        return "auto", None
    if value in ("none", "required"):
        return str(value), None
    if value == "any":  # Mistral's word for required
        return "required", None
    if isinstance(value, dict) and isinstance(value.get("function"), dict):
        return "required", _string(value["function"].get("name"), "tool_choice.function.name")
    if isinstance(value, dict):
        return "auto", None  # OpenAI's allowed_tools and custom choices: the model picks
    raise BadRequest(f"tool_choice: {value!r} is not a valid choice")


def _chat_output_format(value: Any) -> OutputFormat | None:
    if not isinstance(value, dict) or value.get("type") in (None, "text"):
        return None
    if value.get("type") == "json_object":
        return OutputFormat(schema=None)
    if value.get("type") == "json_schema":
        spec = _mapping(value.get("json_schema"), "response_format.json_schema")
        return OutputFormat(schema=_mapping(spec.get("schema", {}), "response_format.json_schema.schema"))
    raise BadRequest(f"response_format.type: {value.get('type')!r} is not supported")


# -------------------------------------------------------------------------------------- Anthropic


def _anthropic_blocks(turn: _Turn, content: Any, name: str) -> None:
    if isinstance(content, str):
        turn.texts.append(content)
        return
    if not isinstance(content, list):
        raise BadRequest(f"{name}: must be a string or a list of content blocks")
    for index, block in enumerate(content):
        where = f"{name}[{index}]"
        block = _mapping(block, where)
        kind = block.get("type")
        if kind == "text" and isinstance(block.get("text"), str):
            turn.texts.append(block["text"])
        elif kind == "image":
            source = _mapping(block.get("source"), f"{where}.source")
            if source.get("type") == "base64":
                turn.images.append(_decoded_size(source.get("data"), f"{where}.source.data"))
            else:
                turn.images.append(_image_url(source.get("url"), f"{where}.source.url"))
        elif kind == "tool_use":
            tool = _string(block.get("name"), f"{where}.name")
            turn.calls.append(_Call(id=block.get("id"), name=tool))
            turn.texts.append(f"{tool} {json_text(_mapping(block.get('input'), f'{where}.input'))}")
        elif kind == "tool_result":
            result = _Turn(role="tool")
            _anthropic_blocks(result, block.get("content", ""), f"{where}.content")
            turn.images.extend(result.images)
            turn.texts.append(result.text)
            turn.results.append((block.get("tool_use_id"), None, result.text))


def _anthropic_tools(body: dict[str, Any]) -> tuple[OfferedTool, ...]:
    tools = []
    for index, tool in enumerate(body.get("tools") or []):
        tool = _mapping(tool, f"tools[{index}]")
        if "input_schema" not in tool:
            continue  # a server tool (web search…): nothing the simulator calls
        tools.append(OfferedTool(
            name=_string(tool.get("name"), f"tools[{index}].name"),
            description=str(tool.get("description") or ""),
            parameters=_mapping(tool["input_schema"], f"tools[{index}].input_schema"),
        ))
    return tuple(tools)


def _anthropic_tool_choice(value: Any) -> tuple[str, str | None]:
    if value is None:
        return "auto", None
    kind = _mapping(value, "tool_choice").get("type")
    if kind in ("auto", "none"):
        return str(kind), None
    if kind == "any":
        return "required", None
    if kind == "tool":
        return "required", _string(value.get("name"), "tool_choice.name")
    raise BadRequest(f"tool_choice.type: {kind!r} is not valid")


def _anthropic_output_format(body: dict[str, Any]) -> OutputFormat | None:
    config = body.get("output_config")
    fmt = config.get("format") if isinstance(config, dict) else body.get("output_format")
    if fmt is None:
        return None
    if _mapping(fmt, "output_config.format").get("type") != "json_schema":
        raise BadRequest("output_config.format.type: must be json_schema")
    return OutputFormat(schema=_mapping(fmt.get("schema"), "output_config.format.schema"))


# ----------------------------------------------------------------------------------------- Ollama


def _ollama_turn(message: dict[str, Any], name: str) -> _Turn:
    turn = _Turn(role=str(message.get("role")))
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise BadRequest(f"{name}.content: must be a string")
    turn.texts.append(content or "")
    for index, image in enumerate(message.get("images") or []):
        turn.images.append(_decoded_size(image, f"{name}.images[{index}]"))
    for index, call in enumerate(message.get("tool_calls") or []):
        where = f"{name}.tool_calls[{index}].function"
        function = _mapping(_mapping(call, where).get("function"), where)
        tool = _string(function.get("name"), f"{where}.name")
        turn.calls.append(_Call(id=None, name=tool))
        turn.texts.append(f"{tool} {json_text(_arguments(function.get('arguments'), where))}")
    if turn.role == "tool":
        turn.results.append((None, message.get("tool_name"), turn.text))
    return turn


def _ollama_output_format(value: Any) -> OutputFormat | None:
    if value in (None, ""):
        return None
    if value == "json":
        return OutputFormat(schema=None)
    return OutputFormat(schema=_mapping(value, "format"))


# -------------------------------------------------------------------------------------- the prompt


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("messages: a non-empty list of message objects is required")
    return messages


def _optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"{name}: must be a non-negative integer")
    return value


def _trailing_results(turns: list[_Turn]) -> tuple[ToolResult, ...]:
    """The results the conversation ends with, each named after the call it answers."""
    names_by_id = {call.id: call.name for turn in turns for call in turn.calls if call.id}
    start = len(turns)
    while start > 0 and turns[start - 1].results and turns[start - 1].role in ("tool", "user"):
        start -= 1
    calls_before = next((turn.calls for turn in reversed(turns[:start]) if turn.calls), [])
    results = [result for turn in turns[start:] for result in turn.results]
    named = []
    for position, (call_id, name, content) in enumerate(results):
        if not name:  # by id; else (Ollama) the call at the same position in the assistant turn before
            by_position = calls_before[position].name if position < len(calls_before) else ""
            name = names_by_id.get(call_id, "") if call_id else by_position
        named.append(ToolResult(name=name or "", content=content))
    return tuple(named)


def read_prompt(protocol: Provider, body: dict[str, Any]) -> Prompt:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: a model name is required")
    messages = _messages(body)
    output_format: OutputFormat | None
    if protocol is Provider.ANTHROPIC:
        system = _Turn(role="system")
        if body.get("system") is not None:
            _anthropic_blocks(system, body["system"], "system")
        turns = [system]
        for index, message in enumerate(messages):
            turn = _Turn(role=str(message.get("role")))
            _anthropic_blocks(turn, message.get("content"), f"messages[{index}].content")
            turns.append(turn)
        max_tokens = _optional_int(body.get("max_tokens"), "max_tokens")
        if max_tokens is None:
            raise BadRequest("max_tokens: Field required")
        tools = _anthropic_tools(body)
        choice, forced = _anthropic_tool_choice(body.get("tool_choice"))
        output_format = _anthropic_output_format(body)
    elif protocol is Provider.OLLAMA:
        turns = [_ollama_turn(m, f"messages[{i}]") for i, m in enumerate(messages)]
        options = body.get("options")
        if not isinstance(options, dict):
            options = {}
        max_tokens = _optional_int(options.get("num_predict"), "options.num_predict")
        tools, (choice, forced) = _function_tools(body), ("auto", None)
        output_format = _ollama_output_format(body.get("format"))
    else:
        turns = [_chat_turn(m, f"messages[{i}]") for i, m in enumerate(messages)]
        max_tokens = _optional_int(body.get("max_completion_tokens", body.get("max_tokens")), "max_tokens")
        tools = _function_tools(body)
        choice, forced = _chat_tool_choice(body.get("tool_choice"))
        output_format = _chat_output_format(body.get("response_format"))
    if forced is not None and forced not in {tool.name for tool in tools}:
        raise BadRequest(f"tool_choice: the tool {forced!r} is not among the tools offered")
    users = [turn.text for turn in turns if turn.role == "user" and not turn.results]
    return Prompt(
        model=model,
        texts=tuple(turn.text for turn in turns),
        last_user=users[-1] if users else "",
        max_tokens=max_tokens,
        tools=tools,
        tool_choice=choice,
        forced_tool=forced,
        tool_results=_trailing_results(turns),
        images=tuple(size for turn in turns for size in turn.images),
        output_format=output_format,
    )
