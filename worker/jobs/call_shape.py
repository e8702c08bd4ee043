"""The shape of a call's input for its usage event: sizes and the system prompt's fingerprint, never text.

The aggregator's drivers report estimates from these how much of a call's input the system prompt was
(``system_chars / input_chars`` of its input tokens) and how often the same system prompt repeats.
"""

from __future__ import annotations

import hashlib

import orjson

from schemas.conversation import AssistantMessage, ImagePart, TextPart, ToolMessage, UserMessage
from schemas.models import CompletionInput, UsageShape

FINGERPRINT_HEX = 16


def system_fingerprint(system: str | None) -> str | None:
    """The first 16 hex digits of the SHA-256 of the UTF-8 system prompt; None without one."""
    if not system:
        return None
    return hashlib.sha256(system.encode()).hexdigest()[:FINGERPRINT_HEX]


def _content_chars(content: str | list[TextPart | ImagePart] | list[TextPart] | None) -> tuple[int, int]:
    """Characters of text and the number of images of a message's content."""
    if content is None:
        return 0, 0
    if isinstance(content, str):
        return len(content), 0
    chars = sum(len(part.text) for part in content if isinstance(part, TextPart))
    return chars, sum(1 for part in content if isinstance(part, ImagePart))


def _message_chars(message: UserMessage | AssistantMessage | ToolMessage) -> tuple[int, int]:
    chars, images = _content_chars(message.content)
    if isinstance(message, AssistantMessage):
        for call in message.tool_calls or ():
            chars += len(call.name) + len(orjson.dumps(call.arguments).decode())
    return chars, images


def _tool_chars(spec: CompletionInput) -> int:
    return sum(
        len(tool.name) + len(tool.description or "") + len(orjson.dumps(tool.parameters, option=orjson.OPT_SORT_KEYS))
        for tool in spec.tools or ()
    )


def call_shape(spec: CompletionInput) -> UsageShape:
    system_chars = len(spec.system or "")
    counted = [_message_chars(message) for message in spec.messages]
    return UsageShape(
        system_chars=system_chars,
        input_chars=system_chars + sum(chars for chars, _ in counted) + _tool_chars(spec),
        messages=len(spec.messages),
        tools=len(spec.tools or ()),
        images=sum(images for _, images in counted),
        system_fingerprint=system_fingerprint(spec.system),
    )


__all__ = ["call_shape", "system_fingerprint"]
