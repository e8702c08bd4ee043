"""The provider call's span, by the OpenTelemetry GenAI conventions: a call hook (``worker.jobs.call_hooks``).

``chat <model>``, CLIENT, a child of the job's span: ``gen_ai.operation.name`` ``chat``,
``gen_ai.provider.name`` (``openai``, ``anthropic``, ``mistral_ai``, ``ollama``), the requested and the
answering model, the endpoint's host and port, and the usage. The convention counts cache tokens inside the
input tokens and reasoning tokens inside the output tokens, unlike our buckets:
``gen_ai.usage.input_tokens`` = input + cache read + cache write, ``gen_ai.usage.output_tokens`` = output +
reasoning, and the cache and reasoning counts on their own when they are not zero. A failed call has
``error.type`` (our error code) and status ERROR. ``byok.call.id`` is the call's id, which is also its usage
event's ``event_id``. Nothing of the prompt, the answer or the key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Final
from urllib.parse import urlsplit

from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.util.types import AttributeValue

from schemas.models import ErrorCode, Provider, TokenCounts
from worker.jobs.call_hooks import ProviderCall
from worker.jobs.tracing import error_type, failed
from worker.providers.base import ProviderReply

GEN_AI_PROVIDER: Final[dict[Provider, str]] = {
    Provider.OPENAI: "openai", Provider.ANTHROPIC: "anthropic", Provider.MISTRAL: "mistral_ai",
    Provider.OLLAMA: "ollama",
}


def usage_attributes(usage: TokenCounts) -> dict[str, AttributeValue]:
    found: dict[str, AttributeValue] = {
        "gen_ai.usage.input_tokens": usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens + usage.reasoning_tokens,
    }
    if usage.cache_read_tokens:
        found["gen_ai.usage.cache_read.input_tokens"] = usage.cache_read_tokens
    if usage.cache_write_tokens:
        found["gen_ai.usage.cache_creation.input_tokens"] = usage.cache_write_tokens
    if usage.reasoning_tokens:
        found["gen_ai.usage.reasoning.output_tokens"] = usage.reasoning_tokens
    return found


def request_attributes(call: ProviderCall) -> dict[str, AttributeValue]:
    job, endpoint = call.job, call.endpoint
    found: dict[str, AttributeValue] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": GEN_AI_PROVIDER[job.model.provider],
        "gen_ai.request.model": job.model.name,
        "server.address": endpoint.host,
        "byok.call.id": call.call_id,
    }
    url = urlsplit(endpoint.base_url)
    found["server.port"] = url.port or (443 if url.scheme == "https" else 80)
    spec = job.input
    for name, value in (("max_tokens", spec.max_tokens), ("temperature", spec.temperature), ("top_p", spec.top_p)):
        if value is not None:
            found[f"gen_ai.request.{name}"] = value
    return found


def reply_attributes(reply: ProviderReply) -> dict[str, AttributeValue]:
    found: dict[str, AttributeValue] = {}
    if reply.response_model is not None:
        found["gen_ai.response.model"] = reply.response_model
    if reply.finish_reason is not None:
        found["gen_ai.response.finish_reasons"] = (reply.finish_reason,)
    if reply.usage is not None:
        found.update(usage_attributes(reply.usage))
    return found


class ChatSpan:
    """The call hook that wraps each provider call in its ``chat <model>`` span."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def __call__(self, call: ProviderCall) -> AbstractAsyncContextManager[None]:
        return _chat_span(self._tracer, call)


@asynccontextmanager
async def _chat_span(tracer: Tracer, call: ProviderCall) -> AsyncIterator[None]:
    with tracer.start_as_current_span(
        f"chat {call.job.model.name}", kind=SpanKind.CLIENT, attributes=request_attributes(call),
        record_exception=False, set_status_on_exception=False,
    ) as span:
        try:
            yield
        except BaseException as exc:
            failed(span, error_type(exc))
            raise
        if call.reply is not None:
            span.set_attributes(reply_attributes(call.reply))
            if call.reply.unusable is not None:
                # Billed, but the answer cannot be used: the job fails with provider_error.
                failed(span, ErrorCode.PROVIDER_ERROR.value)


__all__ = ["GEN_AI_PROVIDER", "ChatSpan", "reply_attributes", "request_attributes", "usage_attributes"]
