"""Mistral chat completions (``POST {base_url}/v1/chat/completions``, bearer key)."""

from __future__ import annotations

import re
from typing import Any

from schemas.models import CompletionJob, Provider, TokenCounts
from worker.failures import InvalidJob
from worker.keys.endpoint import Endpoint
from worker.providers.base import ProviderReply, ProviderRequest
from worker.providers.chat_completions import (
    chat_messages,
    openai_usage,
    parse_chat_completion,
    sampling_options,
    tool_options,
)
from worker.providers.common import classify_status, count, error_body, mentions
from worker.providers.tool_mapping import stable_call_id

MAX_TEMPERATURE = 1.5
MISTRAL_CALL_ID = re.compile(r"^[A-Za-z0-9]{9}$")
QUOTA_TYPES = frozenset({"insufficient_quota", "quota_exceeded", "billing_error"})
QUOTA_WORDS = ("quota", "usage limit", "billing", "credit", "payment")


def mistral_usage(raw: dict[str, Any]) -> TokenCounts:
    """``prompt_tokens`` → input, ``completion_tokens`` → output; cached prompt tokens, when reported
    (``prompt_tokens_details.cached_tokens``, or ``num_cached_tokens``), are inside ``prompt_tokens``
    as with OpenAI."""
    details = raw.get("prompt_tokens_details") or raw.get("prompt_token_details")
    if not isinstance(details, dict) or "cached_tokens" not in details:
        details = {"cached_tokens": count(raw.get("num_cached_tokens"))}
    return openai_usage({
        "prompt_tokens": raw.get("prompt_tokens"),
        "completion_tokens": raw.get("completion_tokens"),
        "prompt_tokens_details": {"cached_tokens": details.get("cached_tokens")},
    })


def mistral_call_id(call_id: str) -> str:
    """Mistral takes only tool-call ids of nine letters and digits (its own are): any other id, from another
    provider or made by the worker, is mapped to nine base-62 digits of its SHA-256, the same for the call and
    its result, so a conversation begun elsewhere continues on Mistral."""
    return call_id if MISTRAL_CALL_ID.fullmatch(call_id) else stable_call_id(call_id, prefix="", digits=9)


class MistralAdapter:
    provider = Provider.MISTRAL
    needs_key = True

    def build_request(self, job: CompletionJob, endpoint: Endpoint, api_key: str | None) -> ProviderRequest:
        if api_key is None:
            raise InvalidJob("mistral needs a sealed_key")
        if job.input.temperature is not None and job.input.temperature > MAX_TEMPERATURE:
            raise InvalidJob(f"mistral accepts a temperature of at most {MAX_TEMPERATURE}")
        messages = chat_messages(job, self.provider.value, mistral_call_id)
        body: dict[str, Any] = {"model": job.model.name, "messages": messages}
        body.update(sampling_options(job))
        body.update(tool_options(job))
        if job.input.max_tokens is not None:
            body["max_tokens"] = job.input.max_tokens
        headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        return ProviderRequest(path="/v1/chat/completions", headers=headers, body=body)

    def parse_response(self, body: dict[str, Any], job: CompletionJob | None = None) -> ProviderReply:
        return parse_chat_completion(body, mistral_usage, job)

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> Exception:
        parsed = error_body(body)
        nested = parsed.get("error")
        error: dict[str, Any] = nested if isinstance(nested, dict) else parsed
        signals = {error.get("type"), error.get("code")}
        message = error.get("message")
        quota = bool(signals & QUOTA_TYPES) or (
            status == 429 and isinstance(message, str) and mentions(message, QUOTA_WORDS)
        )
        return classify_status(status, headers, body, quota_exhausted=quota)
