"""The job's conversation, tools and response format in Anthropic Messages terms.

- Assistant tool calls are ``tool_use`` blocks; tool messages are ``tool_result`` blocks, and the results of
  one assistant turn's calls go together in one user turn (a user message right after them joins it, after
  the results, as Anthropic wants them first).
- Structured output is a forced tool: a tool named after the response format (``response`` for
  ``json_object``) whose ``input_schema`` is the response schema, unchanged; its ``tool_use`` input is the
  answer. This works on every Claude model and on Anthropic-protocol servers, and takes any object schema
  as it is; the newer ``output_config.format`` needs recent models and a subset of JSON Schema
  (``additionalProperties: false`` everywhere), so ``json_object`` could not be expressed with it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Final

from schemas.conversation import (
    AssistantMessage,
    ImagePart,
    JsonSchemaFormat,
    TextPart,
    ToolChoiceName,
    ToolMessage,
    UserMessage,
    response_name,
)
from schemas.models import CompletionInput
from worker.providers.tool_mapping import stable_call_id

TOOL_USE_ID: Final = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
RESPONSE_TOOL_DESCRIPTION: Final = "Give the final answer with this tool; its input is the answer."

Message = UserMessage | AssistantMessage | ToolMessage


def anthropic_messages(messages: Sequence[Message]) -> list[dict[str, Any]]:
    mapped: list[dict[str, Any]] = []
    results_turn: list[dict[str, Any]] | None = None  # the open user turn of tool results
    for message in messages:
        if isinstance(message, ToolMessage):
            if results_turn is None:
                results_turn = []
                mapped.append({"role": "user", "content": results_turn})
            results_turn.append(_tool_result(message))
            continue
        if isinstance(message, UserMessage) and results_turn is not None:
            results_turn.extend(_blocks(message.content))
        elif isinstance(message, UserMessage):
            mapped.append({"role": "user", "content": _content(message.content)})
        else:
            mapped.append({"role": "assistant", "content": _assistant_content(message)})
        results_turn = None
    return mapped


def _content(content: str | Sequence[TextPart | ImagePart]) -> str | list[dict[str, Any]]:
    return content if isinstance(content, str) else _blocks(content)


def _blocks(content: str | Sequence[TextPart | ImagePart]) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [{"type": "text", "text": part.text} if isinstance(part, TextPart) else _image(part) for part in content]


def _image(part: ImagePart) -> dict[str, Any]:
    if part.url is not None:
        return {"type": "image", "source": {"type": "url", "url": part.url}}
    return {"type": "image", "source": {"type": "base64", "media_type": part.media_type, "data": part.data}}


def _assistant_content(message: AssistantMessage) -> str | list[dict[str, Any]]:
    if not message.tool_calls:
        return _content(message.content or "")  # the model holds that content is set here
    # Anthropic refuses text blocks without non-whitespace text.
    blocks = [block for block in _blocks(message.content or "") if block["text"].strip()]
    for call in message.tool_calls:
        blocks.append({"type": "tool_use", "id": _tool_use_id(call.id), "name": call.name, "input": call.arguments})
    return blocks


def _tool_result(message: ToolMessage) -> dict[str, Any]:
    return {"type": "tool_result", "tool_use_id": _tool_use_id(message.tool_call_id),
            "content": _content(message.content)}


def _tool_use_id(call_id: str) -> str:
    """Anthropic refuses ids with other characters than letters, digits, ``_`` and ``-`` (other providers'
    ids may have them): those map the same way for a call and its result."""
    return call_id if TOOL_USE_ID.fullmatch(call_id) else stable_call_id(call_id, prefix="toolu_", digits=10)


def anthropic_tools(spec: CompletionInput) -> dict[str, Any]:
    """``tools`` and ``tool_choice``, the response format's forced tool included."""
    tools: list[dict[str, Any]] = []
    for tool in spec.tools or ():
        mapped: dict[str, Any] = {"name": tool.name, "input_schema": tool.parameters}
        if tool.description is not None:
            mapped["description"] = tool.description
        tools.append(mapped)
    choice = _tool_choice(spec) if spec.tools else None
    if spec.response_format is not None:
        name = response_name(spec.response_format)
        answer: dict[str, Any] = {"name": name, "description": RESPONSE_TOOL_DESCRIPTION}
        if isinstance(spec.response_format, JsonSchemaFormat):
            answer["input_schema"] = spec.response_format.schema_
            if spec.response_format.strict is not None:
                answer["strict"] = spec.response_format.strict
        else:
            answer["input_schema"] = {"type": "object"}
        tools.append(answer)
        choice = _answer_choice(spec, name)
    options: dict[str, Any] = {}
    if tools:
        options["tools"] = tools
    if choice is not None:
        options["tool_choice"] = choice
    return options


def _tool_choice(spec: CompletionInput) -> dict[str, Any] | None:
    if isinstance(spec.tool_choice, ToolChoiceName):
        return {"type": "tool", "name": spec.tool_choice.name}
    return {"auto": {"type": "auto"}, "none": {"type": "none"}, "required": {"type": "any"}, None: None}[
        spec.tool_choice
    ]


def _answer_choice(spec: CompletionInput, answer_tool: str) -> dict[str, Any]:
    """With a response format the model must call a tool: the answer tool, or one of the job's own while
    it may still use them (``auto``/``required``); a named tool stays forced."""
    if isinstance(spec.tool_choice, ToolChoiceName):
        return {"type": "tool", "name": spec.tool_choice.name}
    if spec.tools and spec.tool_choice != "none":
        return {"type": "any"}
    return {"type": "tool", "name": answer_tool}
