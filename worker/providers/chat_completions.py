"""What the OpenAI-style chat-completions protocols share (OpenAI and Mistral): the message list with
content parts, tool calls and tool results, the tools and response format, the sampling options, the
response with its tool calls and structured answer, and its usage."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from schemas.conversation import (
    AssistantMessage,
    ImagePart,
    JsonSchemaFormat,
    TextPart,
    Tool,
    ToolChoiceName,
    ToolMessage,
    UserMessage,
)
from schemas.models import CompletionJob, TokenCounts
from worker.providers.base import ProviderReply, answered_model
from worker.providers.common import count
from worker.providers.tool_mapping import (
    CHAT_COMPLETIONS_FINISH,
    Answer,
    arguments_json,
    data_url,
    function_tool_calls,
    normalised_finish,
    provider_reply,
    refuse,
    structured_answer,
)


def openai_usage(raw: dict[str, Any]) -> TokenCounts:
    """``cached_tokens`` (and ``cache_write_tokens``, which compatible servers report) are inside
    ``prompt_tokens``; ``reasoning_tokens`` are inside ``completion_tokens``. Parts larger than their
    whole are clamped so the buckets never add up to more than the provider billed."""
    prompt = count(raw.get("prompt_tokens"))
    completion = count(raw.get("completion_tokens"))
    prompt_details = _details(raw, "prompt_tokens_details")
    completion_details = _details(raw, "completion_tokens_details")
    cached = min(count(prompt_details.get("cached_tokens")), prompt)
    written = min(count(prompt_details.get("cache_write_tokens")), prompt - cached)
    reasoning = min(count(completion_details.get("reasoning_tokens")), completion)
    return TokenCounts(
        input_tokens=prompt - cached - written,
        cache_read_tokens=cached,
        cache_write_tokens=written,
        output_tokens=completion - reasoning,
        reasoning_tokens=reasoning,
    )


def _details(raw: dict[str, Any], name: str) -> dict[str, Any]:
    details = raw.get(name)
    return details if isinstance(details, dict) else {}


CallIdMapper = Callable[[str], str]


def chat_messages(job: CompletionJob, provider: str, call_id: CallIdMapper = str) -> list[dict[str, Any]]:
    """``call_id`` turns a job's tool-call id into one the protocol takes, the same way for a call and its
    result (Mistral's ids are nine letters and digits)."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": job.input.system}] if job.input.system else []
    messages.extend(_chat_message(message, provider, call_id) for message in job.input.messages)
    return messages


def _chat_message(
    message: UserMessage | AssistantMessage | ToolMessage, provider: str, call_id: CallIdMapper
) -> dict[str, Any]:
    if isinstance(message, UserMessage):
        return {"role": "user", "content": _content(message.content)}
    if isinstance(message, ToolMessage):
        if not isinstance(message.content, str) and any(isinstance(p, ImagePart) for p in message.content):
            raise refuse(provider, f"an image in a tool message (tool_call_id {message.tool_call_id!r}): "
                                   "its tool results take text only")
        return {"role": "tool", "tool_call_id": call_id(message.tool_call_id), "content": _content(message.content)}
    mapped: dict[str, Any] = {
        "role": "assistant", "content": None if message.content is None else _content(message.content),
    }
    if message.tool_calls:
        mapped["tool_calls"] = [
            {"id": call_id(call.id), "type": "function",
             "function": {"name": call.name, "arguments": arguments_json(call)}}
            for call in message.tool_calls
        ]
    return mapped


def _content(content: str | Sequence[TextPart | ImagePart]) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    return [
        {"type": "text", "text": part.text} if isinstance(part, TextPart)
        else {"type": "image_url", "image_url": {"url": data_url(part)}}
        for part in content
    ]


def tool_options(job: CompletionJob) -> dict[str, Any]:
    """``tools``, ``tool_choice`` (only with tools) and ``response_format``, as OpenAI and Mistral name them."""
    spec = job.input
    options: dict[str, Any] = {}
    if spec.tools:
        options["tools"] = [{"type": "function", "function": _function(tool)} for tool in spec.tools]
        if isinstance(spec.tool_choice, ToolChoiceName):
            options["tool_choice"] = {"type": "function", "function": {"name": spec.tool_choice.name}}
        elif spec.tool_choice is not None:
            options["tool_choice"] = spec.tool_choice
    if isinstance(spec.response_format, JsonSchemaFormat):
        schema: dict[str, Any] = {"name": spec.response_format.name, "schema": spec.response_format.schema_}
        if spec.response_format.strict is not None:
            schema["strict"] = spec.response_format.strict
        options["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif spec.response_format is not None:
        options["response_format"] = {"type": "json_object"}
    return options


def _function(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description is not None:
        function["description"] = tool.description
    return function


def sampling_options(job: CompletionJob) -> dict[str, Any]:
    options: dict[str, Any] = {}
    if job.input.temperature is not None:
        options["temperature"] = job.input.temperature
    if job.input.top_p is not None:
        options["top_p"] = job.input.top_p
    if job.input.stop:
        options["stop"] = list(job.input.stop)
    return options


UsageMapper = Callable[[dict[str, Any]], TokenCounts]


def message_text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content chunks (Mistral's thinking models)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part["text"] for part in content
            if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str)
        )
    return ""


def parse_chat_completion(
    body: dict[str, Any], usage_of: UsageMapper = openai_usage, job: CompletionJob | None = None
) -> ProviderReply:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("response has no choices")
    message = choices[0].get("message") or {}
    if not isinstance(message, dict):
        raise ValueError("response has no message")
    raw_finish = choices[0].get("finish_reason")
    provider_finish = raw_finish if isinstance(raw_finish, str) else None
    raw_usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    usage = usage_of(raw_usage) if raw_usage is not None else None
    return provider_reply(partial(_answer, message, provider_finish, job), usage, raw_usage, provider_finish,
                          answered_model(body))


def _answer(message: dict[str, Any], provider_finish: str | None, job: CompletionJob | None) -> Answer:
    calls = function_tool_calls(message.get("tool_calls"))
    text = message_text(message.get("content"))
    finish = normalised_finish(provider_finish, CHAT_COMPLETIONS_FINISH, calls)
    refusal = message.get("refusal")
    if isinstance(refusal, str) and refusal and not calls:
        text, finish = text or refusal, "content_filter"
    return Answer(text, finish, calls, structured_answer(job, text, finish, calls))
