"""Each protocol's success body for an ``Answer``: text, tool calls or JSON, and usage in its own fields."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from schemas.models import Provider, TokenCounts
from worker.testing.simulator.answers import Answer
from worker.testing.simulator.requests import json_text


def _openai_usage(usage: TokenCounts) -> dict[str, Any]:
    prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    completion = usage.output_tokens + usage.reasoning_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _mistral_usage(usage: TokenCounts) -> dict[str, Any]:
    prompt = usage.input_tokens + usage.cache_read_tokens
    completion = usage.output_tokens
    raw: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if usage.cache_read_tokens:
        raw["prompt_tokens_details"] = {"cached_tokens": usage.cache_read_tokens}
    return raw


def _function_calls(ans: Answer, *, with_index: bool) -> list[dict[str, Any]]:
    """Chat-completions tool calls: arguments as a JSON text (Mistral adds each call's ``index``)."""
    calls = []
    for index, call in enumerate(ans.tool_calls):
        rendered: dict[str, Any] = {
            "id": call.id, "type": "function",
            "function": {"name": call.name, "arguments": json_text(call.arguments)},
        }
        if with_index:
            rendered["index"] = index
        calls.append(rendered)
    return calls


def openai_body(call_id: str, model: str, ans: Answer, with_usage: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": ans.text, "refusal": None, "annotations": []}
    finish = ans.finish
    if ans.tool_calls:
        message["content"] = None
        message["tool_calls"] = _function_calls(ans, with_index=False)
        # OpenAI's own quirk: a call forced by name finishes with "stop", not "tool_calls".
        finish = "stop" if ans.forced else "tool_calls"
    body: dict[str, Any] = {
        "id": f"chatcmpl-{call_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": finish}],
        "service_tier": "default",
        "system_fingerprint": "fp_sim",
    }
    if with_usage:
        body["usage"] = _openai_usage(ans.usage)
    return body


def mistral_body(call_id: str, model: str, ans: Answer, with_usage: bool) -> dict[str, Any]:
    calls = _function_calls(ans, with_index=True) if ans.tool_calls else None
    body: dict[str, Any] = {
        "id": call_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ans.text, "tool_calls": calls, "prefix": False},
                "finish_reason": ans.finish,
            }
        ],
    }
    if with_usage:
        body["usage"] = _mistral_usage(ans.usage)
    return body


_ANTHROPIC_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def anthropic_body(call_id: str, model: str, ans: Answer, with_usage: bool) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": ans.text}] if ans.text or not ans.tool_calls else []
    content += [
        {"type": "tool_use", "id": call.id, "name": call.name, "input": call.arguments} for call in ans.tool_calls
    ]
    body: dict[str, Any] = {
        "id": f"msg_{call_id}",
        "type": "message",
        "role": "assistant",
        "content": content,
        "model": model,
        "stop_reason": _ANTHROPIC_STOP[ans.finish],
        "stop_sequence": None,
    }
    if with_usage:
        usage = ans.usage
        body["usage"] = {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens,
            "cache_read_input_tokens": usage.cache_read_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": usage.cache_write_tokens,
                "ephemeral_1h_input_tokens": 0,
            },
            "service_tier": "standard",
        }
    return body


def ollama_body(_call_id: str, model: str, ans: Answer, with_usage: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": ans.text}
    if ans.tool_calls:
        message["tool_calls"] = [
            {"function": {"name": call.name, "arguments": call.arguments}} for call in ans.tool_calls
        ]
    body: dict[str, Any] = {
        "model": model,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "message": message,
        "done": True,
        # Ollama says "stop" when it called tools too: the worker must tell from the message.
        "done_reason": "length" if ans.finish == "length" else "stop",
    }
    if with_usage:
        prompt_tokens = ans.usage.input_tokens
        # Durations in nanoseconds, as Ollama reports them: a fixed 1 ms per token.
        body.update(
            {
                "total_duration": (prompt_tokens + ans.usage.output_tokens) * 1_000_000 + 500_000,
                "load_duration": 500_000,
                "prompt_eval_count": prompt_tokens,
                "prompt_eval_duration": prompt_tokens * 1_000_000,
                "eval_count": ans.usage.output_tokens,
                "eval_duration": ans.usage.output_tokens * 1_000_000,
            }
        )
    return body


RENDERERS: dict[Provider, Callable[[str, str, Answer, bool], dict[str, Any]]] = {
    Provider.OPENAI: openai_body,
    Provider.MISTRAL: mistral_body,
    Provider.ANTHROPIC: anthropic_body,
    Provider.OLLAMA: ollama_body,
}
