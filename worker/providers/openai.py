"""OpenAI chat completions (``POST {base_url}/chat/completions``, bearer key)."""

from __future__ import annotations

from typing import Any

from schemas.models import CompletionJob, Provider
from worker.failures import InvalidJob, JobFailure
from worker.keys.endpoint import Endpoint
from worker.providers.base import ProviderReply, ProviderRequest
from worker.providers.chat_completions import chat_messages, parse_chat_completion, sampling_options, tool_options
from worker.providers.common import classify_status, error_body
from worker.providers.prompt_cache import openai_cache_key
from worker.providers.tool_mapping import stable_call_id

MAX_CALL_ID = 40
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active"})


def openai_call_id(call_id: str) -> str:
    """OpenAI refuses tool-call ids over 40 characters (400 ``string_above_max_length``): longer ids, from
    other providers' servers, are mapped the same way for a call and its result."""
    return call_id if len(call_id) <= MAX_CALL_ID else stable_call_id(call_id, prefix="call_", digits=10)


class OpenAIAdapter:
    provider = Provider.OPENAI
    needs_key = True

    def build_request(self, job: CompletionJob, endpoint: Endpoint, api_key: str | None) -> ProviderRequest:
        if api_key is None:
            raise InvalidJob("openai needs a sealed_key")
        messages = chat_messages(job, self.provider.value, openai_call_id)
        body: dict[str, Any] = {"model": job.model.name, "messages": messages}
        body.update(sampling_options(job))
        body.update(tool_options(job))
        body.update(openai_cache_key(job))
        if job.input.max_tokens is not None:
            # OpenAI itself deprecated max_tokens (reasoning models refuse it); compatible servers know max_tokens.
            field = "max_completion_tokens" if endpoint.host == "api.openai.com" else "max_tokens"
            body[field] = job.input.max_tokens
        headers = {"authorization": f"Bearer {api_key}", "content-type": "application/json"}
        return ProviderRequest(path="/chat/completions", headers=headers, body=body)

    def parse_response(self, body: dict[str, Any], job: CompletionJob | None = None) -> ProviderReply:
        return parse_chat_completion(body, job=job)

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> JobFailure:
        error = error_body(body).get("error")
        codes = {error.get("code"), error.get("type")} if isinstance(error, dict) else set()
        return classify_status(status, headers, body, quota_exhausted=bool(codes & QUOTA_CODES))
