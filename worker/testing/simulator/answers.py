"""The deterministic answer to a ``Prompt``: text, tool calls or JSON, and the five usage buckets it bills."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from schemas.models import Provider, TokenCounts
from worker.testing.simulator.behavior import CACHED, REASONING, Behavior
from worker.testing.simulator.ledger import InputShape, ServedToolCall
from worker.testing.simulator.requests import BadRequest, OfferedTool, Prompt, json_text
from worker.testing.simulator.schema_values import UnsupportedSchema, minimal_value

REPLY_PREFIX = "sim: "
REPLY_CHARS = 40
TOOL_RESULT_CHARS = 200
REASONING_TOKENS = 16
IMAGE_BASE_TOKENS = 85
"""Every image costs this many input tokens (an image by URL costs only this; it is never fetched)…"""
IMAGE_BYTES_PER_TOKEN = 100
"""…plus one token per this many decoded bytes of an inline image."""
TOOL_SCHEMA_BYTES_PER_TOKEN = 4
"""An offered tool costs the words of its name and description plus one token per 4 bytes of its
``parameters`` as sorted-key JSON."""
JSON_OBJECT_KEY = "answer"
"""A ``json_object`` answer (no schema) is ``{"answer": <the text answer>}``."""
_MISTRAL_ID_CHARS = "0123456789abcdefghijklmnopqrstuvwxyz"


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    finish: str
    """``stop``, ``length`` or ``tool_calls`` (each renderer maps it to the provider's own word)."""
    usage: TokenCounts
    """The five buckets: what this answer bills."""
    tool_calls: tuple[ServedToolCall, ...] = ()
    forced: bool = False
    """The tool call was forced by name (OpenAI then reports ``finish_reason`` ``stop``, as it really does)."""
    shape: InputShape = field(default_factory=InputShape)


def words(text: str) -> int:
    return len(text.split())


def image_tokens(decoded_bytes: int | None) -> int:
    return IMAGE_BASE_TOKENS + (decoded_bytes or 0) // IMAGE_BYTES_PER_TOKEN


def tool_tokens(tool: OfferedTool) -> int:
    schema = json.dumps(tool.parameters, sort_keys=True, separators=(",", ":")).encode()
    return words(tool.name) + words(tool.description) + len(schema) // TOOL_SCHEMA_BYTES_PER_TOKEN


def tool_call_id(protocol: Provider, answer_id: str, index: int) -> str | None:
    """Each protocol's id style: OpenAI ``call_…``, Anthropic ``toolu_…``, Mistral 9 alphanumerics, Ollama none."""
    if protocol is Provider.OPENAI:
        return f"call_{answer_id}_{index}"
    if protocol is Provider.ANTHROPIC:
        return f"toolu_{answer_id}_{index}"
    if protocol is Provider.MISTRAL:
        return answer_id[-8:] + _MISTRAL_ID_CHARS[index % len(_MISTRAL_ID_CHARS)]
    return None


def tools_to_call(prompt: Prompt) -> tuple[list[OfferedTool], bool]:
    """The tools the answer calls, and whether a name forced it.

    Unless the choice is ``none`` or the conversation ends with tool results (then the answer uses them), every
    offered tool whose name the last user message mentions (case-insensitive) is called, in the order offered.
    A tool choice that forces a call always calls: a name, that tool; ``required``/``any``, the mentioned tools
    or else the first one, and after tool results the last tool offered (where the worker puts Anthropic's
    structured-answer tool, so an agent asked for a structured answer ends with it instead of looping).
    """
    if not prompt.tools or prompt.tool_choice == "none":
        return [], False
    if prompt.forced_tool is not None:
        return [tool for tool in prompt.tools if tool.name == prompt.forced_tool][:1], True
    if prompt.tool_results:
        return ([prompt.tools[-1]] if prompt.tool_choice == "required" else []), False
    mentioned = [tool for tool in prompt.tools if tool.name.lower() in prompt.last_user.lower()]
    if prompt.tool_choice == "required":
        return mentioned or [prompt.tools[0]], False
    return mentioned, False


def _text_answer(prompt: Prompt) -> str:
    if prompt.tool_results:
        return REPLY_PREFIX + "; ".join(
            f"{result.name or 'tool'} said {result.content[:TOOL_RESULT_CHARS]}" for result in prompt.tool_results
        )
    return REPLY_PREFIX + prompt.last_user[:REPLY_CHARS]


def answer(
    protocol: Provider, prompt: Prompt, behavior: Behavior, answer_id: str = "sim", cache: tuple[int, int] = (0, 0)
) -> Answer:
    """``cache``: the prompt cache's (read, write) tokens for this call (``prompt_cache.py``); the ``cached``
    behaviours replace it with their fixed split."""
    called, forced = tools_to_call(prompt)
    calls = tuple(
        ServedToolCall(id=tool_call_id(protocol, answer_id, index), name=tool.name,
                       arguments=_arguments(tool))
        for index, tool in enumerate(called)
    )
    finish = "tool_calls" if calls else "stop"
    if calls:
        reply = ""
    elif prompt.output_format is not None:
        reply = json_text(_structured(prompt))
    else:
        reply = _text_answer(prompt)
        if prompt.max_tokens is not None and words(reply) > prompt.max_tokens:
            reply, finish = " ".join(reply.split()[: prompt.max_tokens]), "length"
    shape = InputShape(
        tools=len(prompt.tools), tool_tokens=sum(tool_tokens(tool) for tool in prompt.tools),
        images=len(prompt.images), image_tokens=sum(image_tokens(size) for size in prompt.images),
    )
    total_in = max(1, sum(words(t) for t in prompt.texts) + shape.tool_tokens + shape.image_tokens)
    cache_read, cache_write = (min(cache[0], total_in), min(cache[1], total_in - min(cache[0], total_in)))
    reasoning = 0
    if behavior.kind in CACHED and protocol is not Provider.OLLAMA:
        cache_read = total_in // 2
        cache_write = total_in // 4 if protocol is Provider.ANTHROPIC else 0
    if behavior.kind in REASONING and protocol is Provider.OPENAI:
        reasoning = REASONING_TOKENS
    output = words(reply) + sum(words(f"{call.name} {json_text(call.arguments)}") for call in calls)
    usage = TokenCounts(
        input_tokens=total_in - cache_read - cache_write,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=output,
        reasoning_tokens=reasoning,
    )
    return Answer(text=reply, finish=finish, usage=usage, tool_calls=calls, forced=forced, shape=shape)


def _arguments(tool: OfferedTool) -> dict[str, object]:
    try:
        value = minimal_value(tool.parameters)
    except UnsupportedSchema as exc:
        raise BadRequest(f"tools: {tool.name}: {exc}") from exc
    if not isinstance(value, dict):
        raise BadRequest(f"tools: {tool.name}: parameters must describe an object")
    return value


def _structured(prompt: Prompt) -> object:
    assert prompt.output_format is not None
    if prompt.output_format.schema is None:
        return {JSON_OBJECT_KEY: _text_answer(prompt)}
    try:
        return minimal_value(prompt.output_format.schema)
    except UnsupportedSchema as exc:
        raise BadRequest(f"response format schema: {exc}") from exc
