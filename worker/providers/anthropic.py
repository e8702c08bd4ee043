"""Anthropic Messages (``POST {base_url}/v1/messages``, ``x-api-key`` + ``anthropic-version``).

The job's ``temperature`` and ``top_p`` are not sent: Anthropic deprecated the sampling parameters
(current models answer 400 "`temperature` is deprecated for this model") and the official SDK's
``MessageCreateParams`` no longer declare them, so a request carrying them would break on new models
and fail the contract tests.

Tools, images and structured output: ``worker.providers.anthropic_tools``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from schemas.conversation import response_name
from schemas.models import CompletionJob, Provider, TokenCounts
from worker.failures import InvalidJob, JobFailure
from worker.keys.endpoint import Endpoint
from worker.providers.anthropic_tools import anthropic_messages, anthropic_tools
from worker.providers.base import ProviderReply, ProviderRequest, answered_model
from worker.providers.common import classify_status, count, error_body, mentions
from worker.providers.prompt_cache import mark_anthropic_prefix
from worker.providers.tool_mapping import (
    ANTHROPIC_FINISH,
    Answer,
    normalised_finish,
    parse_arguments,
    provider_reply,
    structured_answer,
    tool_call,
)

API_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 4096
"""Anthropic requires ``max_tokens``; a job that does not set it gets this."""

# Anthropic has no machine-readable signal for an empty balance: a 400 invalid_request_error whose
# message names the credit balance, or (documented) a 402 billing_error.
QUOTA_TYPES = frozenset({"billing_error"})
QUOTA_WORDS = ("credit balance", "billing", "purchase credits", "usage limits", "spend limit")


def anthropic_usage(raw: dict[str, Any]) -> TokenCounts:
    """``input_tokens`` already excludes cache reads and cache writes; thinking is billed as output."""
    return TokenCounts(
        input_tokens=count(raw.get("input_tokens")),
        cache_read_tokens=count(raw.get("cache_read_input_tokens")),
        cache_write_tokens=count(raw.get("cache_creation_input_tokens")),
        output_tokens=count(raw.get("output_tokens")),
    )


def _text(content: list[Any]) -> str:
    return "".join(
        block["text"] for block in content
        if isinstance(block, dict) and block.get("type") == "text" and isinstance(block.get("text"), str)
    )


def _answer(content: list[Any], stop_reason: str | None, job: CompletionJob | None) -> Answer:
    """Text blocks, and ``tool_use`` blocks: the job's tool calls, or the forced answer tool's input (parsed)."""
    format_ = job.input.response_format if job is not None else None
    answer_tool = response_name(format_) if format_ is not None else None
    uses = [block for block in content if isinstance(block, dict) and block.get("type") == "tool_use"]
    calls = tuple(tool_call(use.get("id"), use.get("name"), use.get("input"), encoded=False)
                  for use in uses if use.get("name") != answer_tool)
    text = _text(content)
    finish = normalised_finish(stop_reason, ANTHROPIC_FINISH, calls)
    answers = [use for use in uses if use.get("name") == answer_tool]
    if answers and not calls:
        return Answer(text, finish, calls, parse_arguments(answers[0]["name"], answers[0].get("input"), encoded=False))
    # A compatible server that answered in text (no forced tool): the text must be the JSON.
    return Answer(text, finish, calls, structured_answer(job, text, finish, calls))


class AnthropicAdapter:
    provider = Provider.ANTHROPIC
    needs_key = True

    def build_request(self, job: CompletionJob, endpoint: Endpoint, api_key: str | None) -> ProviderRequest:
        if api_key is None:
            raise InvalidJob("anthropic needs a sealed_key")
        spec = job.input
        body: dict[str, Any] = {
            "model": job.model.name,
            "max_tokens": spec.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": anthropic_messages(spec.messages),
        }
        if spec.system:
            body["system"] = spec.system
        if spec.stop:
            body["stop_sequences"] = list(spec.stop)
        body.update(anthropic_tools(spec))
        mark_anthropic_prefix(job, body)
        headers = {"x-api-key": api_key, "anthropic-version": API_VERSION, "content-type": "application/json"}
        return ProviderRequest(path="/v1/messages", headers=headers, body=body)

    def parse_response(self, body: dict[str, Any], job: CompletionJob | None = None) -> ProviderReply:
        content = body.get("content")
        if not isinstance(content, list):
            raise ValueError("response has no content list")
        raw_usage = body.get("usage") if isinstance(body.get("usage"), dict) else None
        usage = anthropic_usage(raw_usage) if raw_usage is not None else None
        raw_stop = body.get("stop_reason")
        stop_reason = raw_stop if isinstance(raw_stop, str) else None
        return provider_reply(partial(_answer, content, stop_reason, job), usage, raw_usage, stop_reason,
                              answered_model(body))

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> JobFailure:
        error = error_body(body).get("error")
        etype = error.get("type") if isinstance(error, dict) else None
        message = error.get("message") if isinstance(error, dict) else None
        quota = etype in QUOTA_TYPES or (isinstance(message, str) and mentions(message, QUOTA_WORDS))
        return classify_status(status, headers, body, quota_exhausted=quota)
