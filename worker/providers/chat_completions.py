"""What the OpenAI-style chat-completions protocols share (OpenAI, Mistral, and Ollama's messages):
the message list, the sampling options, the response and its usage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from schemas.models import CompletionJob, TokenCounts
from worker.providers.base import ProviderReply
from worker.providers.common import count


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


def chat_messages(job: CompletionJob) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": job.input.system}] if job.input.system else []
    messages.extend({"role": m.role, "content": m.content} for m in job.input.messages)
    return messages


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


def parse_chat_completion(body: dict[str, Any], usage_of: UsageMapper = openai_usage) -> ProviderReply:
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("response has no choices")
    message = choices[0].get("message") or {}
    finish = choices[0].get("finish_reason")
    raw_usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
    return ProviderReply(
        text=message_text(message.get("content")) if isinstance(message, dict) else "",
        finish_reason=finish if isinstance(finish, str) else None,
        usage=usage_of(raw_usage) if raw_usage is not None else None,
        raw_usage=raw_usage,
    )
