"""The worst-case cost of one provider call, known before it is sent.

Input: every UTF-8 byte of the request's JSON (system prompt, messages, tool calls and results, tool
definitions, response schema), plus ``MESSAGE_OVERHEAD_TOKENS`` per message, ``REQUEST_OVERHEAD_TOKENS`` per
request, ``TOOLS_OVERHEAD_TOKENS`` when tools or a response schema are offered, and ``IMAGE_TOKEN_BOUND``
per image (its bytes are not counted as text). Every provider tokenizer is byte-level BPE or a
SentencePiece with byte fallback: a token covers at least one byte of the text, so no text is billed as
more tokens than it has bytes; JSON quoting only adds bytes. What the provider adds around the text (role
markers, the tool-use system prompt) is what the overheads bound.

Output: ``max_tokens``, or the bound the adapter sends (Anthropic's default), or ``OUTPUT_BOUNDS`` per
model, else ``DEFAULT_OUTPUT_BOUND``. Each input token is priced at the dearest of the model's input,
cache-read and cache-write prices; output (and reasoning) at the output price.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.models import CompletionJob, Provider
from worker.aggregator.pricing import PER_TOKENS, PriceTable
from worker.providers.anthropic import DEFAULT_MAX_TOKENS as ANTHROPIC_DEFAULT_MAX_TOKENS

MESSAGE_OVERHEAD_TOKENS = 16
REQUEST_OVERHEAD_TOKENS = 64
TOOLS_OVERHEAD_TOKENS = 1024
IMAGE_TOKEN_BOUND = 25_600
"""The dearest image known: OpenAI's gpt-4o-mini bills a high-detail image up to 2,833 + 4 x 5,667 tokens."""
DEFAULT_OUTPUT_BOUND = 32_768
OUTPUT_BOUNDS: dict[tuple[Provider, str], int] = {
    (Provider.OPENAI, "gpt-4o"): 16_384,
    (Provider.OPENAI, "gpt-4o-mini"): 16_384,
    (Provider.OPENAI, "o1"): 100_000,
    (Provider.OPENAI, "o3"): 100_000,
    (Provider.OPENAI, "o3-mini"): 100_000,
    (Provider.OPENAI, "o4-mini"): 100_000,
    (Provider.OPENAI, "gpt-5"): 128_000,
    (Provider.OPENAI, "gpt-5-mini"): 128_000,
    (Provider.OPENAI, "gpt-5-nano"): 128_000,
}
"""Known models whose largest answer exceeds ``DEFAULT_OUTPUT_BOUND`` or is well below it."""


@dataclass(frozen=True, slots=True)
class CallBound:
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class Estimate:
    bound: CallBound
    cost_usd: float | None
    """None: the model has no price in effect today, so the call cannot be admitted under a block budget."""


def output_bound(job: CompletionJob) -> int:
    if job.input.max_tokens is not None:
        return job.input.max_tokens
    if job.model.provider is Provider.ANTHROPIC:
        return ANTHROPIC_DEFAULT_MAX_TOKENS
    return OUTPUT_BOUNDS.get((job.model.provider, job.model.name), DEFAULT_OUTPUT_BOUND)


def _without_images(value: Any, images: list[int]) -> Any:
    if isinstance(value, dict):
        if value.get("type") == "image":
            images.append(1)
            return None
        return {key: _without_images(item, images) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_images(item, images) for item in value]
    return value


def input_bound(job: CompletionJob) -> int:
    spec = job.input
    images: list[int] = []
    text = _without_images(spec.model_dump(mode="json", exclude_none=True), images)
    tokens = len(orjson.dumps(text)) + REQUEST_OVERHEAD_TOKENS
    tokens += MESSAGE_OVERHEAD_TOKENS * (len(spec.messages) + (1 if spec.system else 0))
    if spec.tools or spec.response_format is not None:
        tokens += TOOLS_OVERHEAD_TOKENS
    return tokens + IMAGE_TOKEN_BOUND * len(images)


def call_bound(job: CompletionJob) -> CallBound:
    return CallBound(input_bound(job), output_bound(job))


def estimate(job: CompletionJob, prices: PriceTable, now: datetime | None = None) -> Estimate:
    bound = call_bound(job)
    day = (now or datetime.now(UTC)).astimezone(UTC).date()
    entry = prices.price(job.model.provider.value, job.model.name, day)
    if entry is None:
        return Estimate(bound, None)
    input_price = max(entry.input, entry.cache_read_price, entry.cache_write_price)
    cost = (bound.input_tokens * input_price + bound.output_tokens * entry.output) / PER_TOKENS
    return Estimate(bound, cost)
