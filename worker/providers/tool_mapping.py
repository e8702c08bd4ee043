"""What the four protocols share when they carry tools, structured output and images: the normalised
finish reason, tool-call arguments and structured answers read strictly (never a silent string), worker-made
tool-call ids, and the refusal of what a protocol cannot express.

An answer whose tool calls or structured output cannot be used raises ``UnusableAnswer`` while it is read;
``provider_reply`` turns it into a reply that carries the reason and the usage: the job fails with
``provider_error``, but the call was billed and counts.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson
from pydantic import ValidationError

from schemas.conversation import TOOL_NAME_PATTERN, ImagePart, TextPart, ToolCall
from schemas.models import CompletionJob, TokenCounts
from worker.failures import InvalidJob
from worker.providers.base import ProviderReply

TOOL_NAME = re.compile(TOOL_NAME_PATTERN)


class UnusableAnswer(ValueError):
    """The provider answered, but its tool calls or structured output cannot be used."""

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "other"]

CHAT_COMPLETIONS_FINISH: Final[Mapping[str, FinishReason]] = {
    "stop": "stop", "length": "length", "model_length": "length", "tool_calls": "tool_calls",
    "function_call": "tool_calls", "content_filter": "content_filter",
}
ANTHROPIC_FINISH: Final[Mapping[str, FinishReason]] = {
    "end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
    "model_context_window_exceeded": "length", "tool_use": "tool_calls", "refusal": "content_filter",
}
OLLAMA_FINISH: Final[Mapping[str, FinishReason]] = {"stop": "stop", "length": "length"}


def normalised_finish(
    raw: str | None, table: Mapping[str, FinishReason], tool_calls: Sequence[ToolCall]
) -> FinishReason | None:
    """``tool_calls`` exactly when the answer carries tool calls; else the table's value, ``other`` for the
    unknown, None when the provider said nothing."""
    if tool_calls:
        return "tool_calls"
    if raw is None:
        return None
    reason = table.get(raw, "other")
    # A tool-use stop whose only call was the structured answer (Anthropic) is a plain stop.
    return "stop" if reason == "tool_calls" else reason


def parse_arguments(name: str, raw: Any, *, encoded: bool = True) -> dict[str, Any]:
    """A tool call's arguments: a JSON object, sent as a JSON string (chat completions; ``encoded``) or as
    an object (Anthropic, Ollama)."""
    if isinstance(raw, str) and encoded:
        try:
            raw = orjson.loads(raw) if raw.strip() else {}
        except orjson.JSONDecodeError as exc:
            raise UnusableAnswer(f"the arguments of tool call {name!r} are not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise UnusableAnswer(f"the arguments of tool call {name!r} are not a JSON object")
    return raw


def structured_answer(
    job: CompletionJob | None, text: str, finish: FinishReason | None, tool_calls: Sequence[ToolCall]
) -> dict[str, Any] | None:
    """The answer to the job's ``response_format``: a JSON object, or the job fails (never a silent string).

    None when no format was asked for, when the model called tools instead (an agent's turn that is not
    its final answer yet), or when it refused (``content_filter``: the refusal is the text)."""
    if job is None or job.input.response_format is None or tool_calls or finish == "content_filter":
        return None
    hint = " (the answer was cut at max_tokens)" if finish == "length" else ""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise UnusableAnswer(f"the structured output is not valid JSON{hint}: {exc}") from None
    if not isinstance(value, dict):
        raise UnusableAnswer(f"the structured output is not a JSON object{hint}")
    return value


def tool_call(call_id: Any, name: Any, arguments: Any, *, encoded: bool = True) -> ToolCall:
    """A response's tool call; ``call_id`` None when the protocol gives none (the worker makes one)."""
    if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
        raise UnusableAnswer("a tool call has no valid tool name")
    if not isinstance(call_id, str) or not call_id:
        call_id = new_call_id()
    try:
        return ToolCall(id=call_id, name=name, arguments=parse_arguments(name, arguments, encoded=encoded))
    except ValidationError as exc:
        # pydantic's text would echo the model's output: locations only.
        fields = ", ".join(".".join(map(str, error["loc"])) for error in exc.errors())
        raise UnusableAnswer(f"tool call {name!r} is not usable ({fields})") from None


def function_tool_calls(raw: Any) -> tuple[ToolCall, ...]:
    """``tool_calls: [{id?, function: {name, arguments}}]`` of a chat-completions or Ollama message; Ollama
    gives its calls no id, so the worker makes one (``call_…``), which a job sends back as it is."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise UnusableAnswer("the message's tool_calls is not a list")
    calls = []
    for item in raw:
        function = item.get("function") if isinstance(item, dict) else None
        if not isinstance(function, dict):
            raise UnusableAnswer("a tool call has no function")
        calls.append(tool_call(item.get("id"), function.get("name"), function.get("arguments")))
    return tuple(calls)


BASE62: Final = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def stable_call_id(call_id: str, *, prefix: str, digits: int) -> str:
    """A tool-call id a protocol takes, made from one it refuses: ``prefix`` and base-62 digits of the id's
    SHA-256, so a call and its result map the same way and the pairing holds (``digits`` at most 10)."""
    number = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8])
    out = []
    for _ in range(digits):
        number, digit = divmod(number, 62)
        out.append(BASE62[digit])
    return prefix + "".join(out)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def arguments_json(call: ToolCall) -> str:
    return orjson.dumps(call.arguments).decode()


def data_url(part: ImagePart) -> str:
    """An image as chat completions take it: its https URL, or a ``data:`` URL of the inline bytes."""
    return part.url if part.url is not None else f"data:{part.media_type};base64,{part.data}"


def joined_text(parts: Sequence[TextPart | ImagePart]) -> str:
    return "".join(part.text for part in parts if isinstance(part, TextPart))


def refuse(provider: str, what: str) -> InvalidJob:
    return InvalidJob(f"{provider} cannot express {what}")



@dataclass(frozen=True, slots=True)
class Answer:
    """What a model answered, read strictly."""

    text: str
    finish_reason: FinishReason | None
    tool_calls: tuple[ToolCall, ...] = ()
    parsed: dict[str, Any] | None = None


def provider_reply(
    read: Callable[[], Answer], usage: TokenCounts | None, raw_usage: dict[str, Any] | None,
    provider_finish: str | None, response_model: str | None = None,
) -> ProviderReply:
    """The reply to a billed answer: what ``read`` makes of it or, when its tool calls or structured output
    cannot be used, the reason why; the usage either way."""
    try:
        answer = read()
    except UnusableAnswer as problem:
        return ProviderReply(text="", finish_reason=None, usage=usage, raw_usage=raw_usage,
                             provider_finish_reason=provider_finish, unusable=str(problem),
                             response_model=response_model)
    return ProviderReply(text=answer.text, finish_reason=answer.finish_reason, usage=usage, raw_usage=raw_usage,
                         provider_finish_reason=provider_finish, tool_calls=answer.tool_calls, parsed=answer.parsed,
                         response_model=response_model)
