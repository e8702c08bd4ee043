"""Ollama chat (``POST {base_url}/api/chat``, no key, ``stream: false``).

Tools, images and structured output: ``worker.providers.ollama_tools``.
"""

from __future__ import annotations

from typing import Any

from schemas.models import CompletionJob, Provider, TokenCounts
from worker.failures import JobFailure
from worker.keys.endpoint import Endpoint
from worker.providers.base import ProviderReply, ProviderRequest, answered_model
from worker.providers.common import classify_status, count, error_body, mentions
from worker.providers.ollama_tools import ollama_messages, ollama_tool_options
from worker.providers.tool_mapping import (
    OLLAMA_FINISH,
    Answer,
    function_tool_calls,
    normalised_finish,
    provider_reply,
    structured_answer,
)

COUNTERS = (
    "prompt_eval_count", "eval_count",
    "total_duration", "load_duration", "prompt_eval_duration", "eval_duration",
)
TOKEN_COUNTERS = ("prompt_eval_count", "eval_count")
QUOTA_WORDS = ("usage limit", "quota", "upgrade for higher limits", "billing")


def ollama_usage(raw: dict[str, Any]) -> TokenCounts:
    """``prompt_eval_count`` → input, ``eval_count`` → output (Ollama has no cache or reasoning split)."""
    return TokenCounts(input_tokens=count(raw.get("prompt_eval_count")), output_tokens=count(raw.get("eval_count")))


def ollama_options(job: CompletionJob) -> dict[str, Any]:
    spec = job.input
    options: dict[str, Any] = {}
    if spec.max_tokens is not None:
        options["num_predict"] = spec.max_tokens
    if spec.temperature is not None:
        options["temperature"] = spec.temperature
    if spec.top_p is not None:
        options["top_p"] = spec.top_p
    if spec.stop:
        options["stop"] = list(spec.stop)
    return options


class OllamaAdapter:
    provider = Provider.OLLAMA
    needs_key = False

    def build_request(self, job: CompletionJob, endpoint: Endpoint, api_key: str | None) -> ProviderRequest:
        body: dict[str, Any] = {"model": job.model.name, "messages": ollama_messages(job), "stream": False}
        body.update(ollama_tool_options(job))
        options = ollama_options(job)
        if options:
            body["options"] = options
        # No key: ``needs_key`` is False, so the pipeline never unseals one for Ollama.
        return ProviderRequest(path="/api/chat", headers={"content-type": "application/json"}, body=body)

    def parse_response(self, body: dict[str, Any], job: CompletionJob | None = None) -> ProviderReply:
        message = body.get("message")
        if not isinstance(message, dict):
            raise ValueError("response has no message")
        content = message.get("content")
        text = content if isinstance(content, str) else ""
        raw_done = body.get("done_reason")
        done_reason = raw_done if isinstance(raw_done, str) else None
        counters = {name: body[name] for name in COUNTERS if name in body}
        raw_usage = counters if any(name in counters for name in TOKEN_COUNTERS) else None
        usage = ollama_usage(raw_usage) if raw_usage is not None else None

        def read() -> Answer:
            calls = function_tool_calls(message.get("tool_calls"))
            finish = normalised_finish(done_reason, OLLAMA_FINISH, calls)
            return Answer(text, finish, calls, structured_answer(job, text, finish, calls))

        return provider_reply(read, usage, raw_usage, done_reason, answered_model(body))

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> JobFailure:
        error = error_body(body).get("error")
        quota = status == 429 and isinstance(error, str) and mentions(error, QUOTA_WORDS)
        return classify_status(status, headers, body, quota_exhausted=quota)
