"""The model a provider says answered (``ProviderReply.response_model``): read from each protocol's ``model``
field, and only when it is a model name (an endpoint's free text never reaches a span)."""

from __future__ import annotations

from typing import Any

import pytest

from schemas.models import Provider
from worker.providers import adapter_for
from worker.providers.base import answered_model

BODIES: dict[Provider, dict[str, Any]] = {
    Provider.OPENAI: {"model": "gpt-4o-mini-2024-07-18", "choices": [
        {"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
    Provider.MISTRAL: {"model": "mistral-small-2409", "choices": [
        {"message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1}},
    Provider.ANTHROPIC: {"model": "claude-3-5-haiku-20241022", "content": [{"type": "text", "text": "hi"}],
                         "stop_reason": "end_turn", "usage": {"input_tokens": 1, "output_tokens": 1}},
    Provider.OLLAMA: {"model": "llama3.2:latest", "message": {"role": "assistant", "content": "hi"},
                      "done_reason": "stop", "prompt_eval_count": 1, "eval_count": 1},
}


@pytest.mark.parametrize("provider", list(BODIES))
def test_each_protocol_reports_the_model_that_answered(provider: Provider) -> None:
    body = BODIES[provider]
    assert adapter_for(provider).parse_response(body).response_model == body["model"]
    assert adapter_for(provider).parse_response({**body, "model": None}).response_model is None


@pytest.mark.parametrize("model", ["the prompt was: tell me a secret", "", "x" * 200, "a\nb", 42, None])
def test_anything_but_a_model_name_is_not_repeated(model: object) -> None:
    assert answered_model({"model": model}) is None
