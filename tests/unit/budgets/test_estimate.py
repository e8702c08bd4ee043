"""The worst-case bound of a call: never below what the simulator bills for text, tools and images."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from schemas.models import CompletionJob, Provider
from worker.aggregator.pricing import PriceFile, PriceTable
from worker.budgets.estimate import (
    DEFAULT_OUTPUT_BOUND,
    IMAGE_TOKEN_BOUND,
    MESSAGE_OVERHEAD_TOKENS,
    call_bound,
    estimate,
    input_bound,
)
from worker.keys.endpoint import Endpoint
from worker.providers.anthropic import DEFAULT_MAX_TOKENS
from worker.providers.openai import OpenAIAdapter
from worker.testing.simulator.answers import answer
from worker.testing.simulator.behavior import select_behavior
from worker.testing.simulator.requests import read_prompt

PRICES = PriceTable(PriceFile.model_validate({"version": "t", "prices": [
    {"provider": "openai", "model": "m", "effective_from": "2020-01-01", "input": 1.0, "output": 2.0, "source": "t"},
    {"provider": "anthropic", "model": "c", "effective_from": "2020-01-01", "input": 3.0, "cache_write": 3.75,
     "cache_read": 0.3, "output": 15.0, "source": "t"},
]}), "test")


def make_job(content: Any = "hello", provider: str = "openai", name: str = "m", **spec: Any) -> CompletionJob:
    model: dict[str, Any] = {"provider": provider, "name": name}
    if provider != "ollama":
        model["sealed_key"] = "vault:v1:abc"
    return CompletionJob.model_validate({"job_id": "j", "workspace_id": "w", "model": model,
                                         "input": {"messages": [{"role": "user", "content": content}], **spec}})


@pytest.mark.parametrize("text", ["hello", "日本語のテキスト" * 50, "🙂" * 300, "a" * 5000, "x " * 2000])
def test_the_input_bound_is_at_least_the_utf8_bytes_of_the_text(text: str) -> None:
    assert input_bound(make_job(text)) >= len(text.encode()) + MESSAGE_OVERHEAD_TOKENS


def test_output_is_max_tokens_or_the_documented_bound() -> None:
    assert call_bound(make_job(max_tokens=7)).output_tokens == 7
    assert call_bound(make_job(provider="anthropic", name="c")).output_tokens == DEFAULT_MAX_TOKENS
    assert call_bound(make_job(name="gpt-4o")).output_tokens == 16_384
    assert call_bound(make_job(name="unknown-model")).output_tokens == DEFAULT_OUTPUT_BOUND


def test_an_image_counts_its_bound_not_its_base64_bytes() -> None:
    data = base64.b64encode(b"\x89PNG" + b"\0" * 30_000).decode()
    image = {"type": "image", "media_type": "image/png", "data": data}
    with_image = input_bound(make_job([{"type": "text", "text": "look"}, image]))
    without = input_bound(make_job([{"type": "text", "text": "look"}]))
    assert with_image - without < IMAGE_TOKEN_BOUND + 100
    assert with_image - without >= IMAGE_TOKEN_BOUND - 100


def test_cost_prices_input_at_the_dearest_input_price_and_an_unpriced_model_has_none() -> None:
    job = make_job(provider="anthropic", name="c", max_tokens=10)
    bound = call_bound(job)
    got = estimate(job, PRICES).cost_usd
    assert got == pytest.approx((bound.input_tokens * 3.75 + 10 * 15.0) / 1e6)
    assert estimate(make_job(name="nobody-prices-this"), PRICES).cost_usd is None


TOOL = {"name": "get_weather", "description": "Weather for a city, today or on a given date",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "date": {"type": "string"}},
                       "required": ["city"]}}


@pytest.mark.parametrize("spec", [
    {"messages": [{"role": "user", "content": "what is the weather in Paris, get_weather please"}],
     "tools": [TOOL]},
    {"system": "You are terse. " * 40, "messages": [{"role": "user", "content": "summarise " * 300}]},
    {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "describe"},
        {"type": "image", "media_type": "image/png", "data": base64.b64encode(b"\0" * 50_000).decode()}]}]},
])
def test_the_bound_is_never_below_what_the_simulator_bills(spec: dict[str, Any]) -> None:
    job = CompletionJob.model_validate({"job_id": "j", "workspace_id": "w",
                                        "model": {"provider": "openai", "name": "m", "sealed_key": "vault:v1:a"},
                                        "input": {**spec, "max_tokens": 50}})
    body = OpenAIAdapter().build_request(job, Endpoint.resolve(Provider.OPENAI, None), "sk-x").body  # as sent
    prompt = read_prompt(Provider.OPENAI, body)
    billed = answer(Provider.OPENAI, prompt, select_behavior(None, prompt.model)).usage
    bound = call_bound(job)
    assert bound.input_tokens >= billed.input_tokens + billed.cache_read_tokens + billed.cache_write_tokens
    assert bound.output_tokens >= billed.output_tokens + billed.reasoning_tokens
