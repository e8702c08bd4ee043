"""The job's conversation, tools and response format in Ollama ``/api/chat`` terms.

A message's content is one string (its text parts joined) with its images as base64 ``images``; an image URL
is ``invalid_job``, because the worker never fetches a URL. Tool calls carry no id in Ollama: a tool message
names its tool (``tool_name``, looked up from the call it answers). Ollama cannot force a tool call, so
``tool_choice`` ``required`` or a named tool is ``invalid_job``; ``none`` sends no tools. A response format is
``format``: the JSON Schema itself, or ``"json"`` for ``json_object``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from schemas.conversation import AssistantMessage, ImagePart, JsonSchemaFormat, TextPart, ToolChoiceName, ToolMessage
from schemas.models import CompletionJob
from worker.providers.tool_mapping import joined_text, refuse


def ollama_messages(job: CompletionJob) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": job.input.system}] if job.input.system else []
    tool_names: dict[str, str] = {}
    for message in job.input.messages:
        if isinstance(message, AssistantMessage):
            mapped = _with_content({"role": "assistant"}, message.content or "")
            if message.tool_calls:
                tool_names.update((call.id, call.name) for call in message.tool_calls)
                mapped["tool_calls"] = [
                    {"function": {"name": call.name, "arguments": call.arguments}} for call in message.tool_calls
                ]
        elif isinstance(message, ToolMessage):
            mapped = _with_content({"role": "tool"}, message.content)
            mapped["tool_name"] = tool_names[message.tool_call_id]  # the job's model checked the pairing
        else:
            mapped = _with_content({"role": "user"}, message.content)
        messages.append(mapped)
    return messages


def _with_content(message: dict[str, Any], content: str | Sequence[TextPart | ImagePart]) -> dict[str, Any]:
    if isinstance(content, str):
        message["content"] = content
        return message
    message["content"] = joined_text(content)
    images = [part for part in content if isinstance(part, ImagePart)]
    if any(image.url is not None for image in images):
        raise refuse("ollama", "an image by URL (the worker never fetches a URL): send it as base64 data")
    if images:
        message["images"] = [image.data for image in images]
    return message


def ollama_tool_options(job: CompletionJob) -> dict[str, Any]:
    spec = job.input
    options: dict[str, Any] = {}
    if isinstance(spec.tool_choice, ToolChoiceName) or spec.tool_choice == "required":
        shown = spec.tool_choice if isinstance(spec.tool_choice, str) else {"name": spec.tool_choice.name}
        raise refuse("ollama", f"tool_choice {shown!r}: it cannot force a tool call")
    if spec.tools and spec.tool_choice != "none":
        options["tools"] = [
            {"type": "function", "function": {
                "name": tool.name, "parameters": tool.parameters,
                **({"description": tool.description} if tool.description is not None else {}),
            }}
            for tool in spec.tools
        ]
    if isinstance(spec.response_format, JsonSchemaFormat):
        options["format"] = spec.response_format.schema_
    elif spec.response_format is not None:
        options["format"] = "json"
    return options
