"""Jobs whose provider requests the contract tests check: fixed edge cases, and generated ones."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from schemas.models import CompletionJob, Provider
from worker.failures import InvalidJob
from worker.keys.endpoint import Endpoint
from worker.providers import ADAPTERS
from worker.providers.base import ProviderRequest

API_KEY = "sk-contract-test-0123456789abcdef"

FIXED_INPUTS: dict[str, dict[str, Any]] = {
    "minimal": {"messages": [{"role": "user", "content": "Hello"}]},
    "full": {
        "system": "You are terse.",
        "messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
                     {"role": "user", "content": "Name a French painter."}],
        "max_tokens": 256, "temperature": 0.7, "top_p": 0.95, "stop": ["\n\n", "END", "###", "Q:"],
    },
    "edges": {
        "system": "Réponds en français. 日本語も可。",
        "messages": [{"role": "user", "content": "emoji 🎨 and \"quotes\" and\nnewlines"}],
        "max_tokens": 1, "temperature": 0.0, "top_p": 1.0, "stop": ["x"],
    },
    "assistant prefill": {
        "messages": [{"role": "user", "content": "Count to three"}, {"role": "assistant", "content": "1, 2,"}],
        "temperature": 1.5,
    },
    # Automatic prompt caching: a prefix long enough for Anthropic's marker, with tools; and caching off.
    "cached long system prompt": {
        "system": "Follow the house style guide. " * 400,
        "messages": [{"role": "user", "content": "Summarise the ticket"}],
        "tools": [{"name": "lookup", "description": "Looks a ticket up.",
                   "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}}],
    },
    "cached long tools only": {
        "messages": [{"role": "user", "content": "Summarise the ticket"}],
        "tools": [{"name": f"tool_{n}", "description": "A tool with a long description. " * 20,
                   "parameters": {"type": "object", "properties": {"id": {"type": "string"}}}} for n in range(10)],
    },
    "cache off": {
        "system": "Follow the house style guide. " * 400,
        "messages": [{"role": "user", "content": "Summarise the ticket"}],
        "cache": "off",
    },
}


def make_job(provider: Provider, spec: dict[str, Any], model: str = "contract-model") -> CompletionJob:
    ref: dict[str, Any] = {"provider": provider.value, "name": model}
    if provider is not Provider.OLLAMA:
        ref["sealed_key"] = "vault:v1:c2VhbGVk"
    return CompletionJob.model_validate({"job_id": "contract", "workspace_id": "ws", "model": ref, "input": spec})


def build(provider: Provider, spec: dict[str, Any], base_url: str | None = None) -> ProviderRequest | None:
    """The adapter's request, or None when the adapter refuses the job (``invalid_job``, nothing sent)."""
    endpoint = Endpoint.resolve(provider, base_url)
    key = None if provider is Provider.OLLAMA else API_KEY
    try:
        return ADAPTERS[provider].build_request(make_job(provider, spec), endpoint, key)
    except InvalidJob:
        return None


_text = st.text(st.characters(codec="utf-8"), max_size=40)
_message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant"]), "content": _text})


@st.composite
def job_inputs(draw: st.DrawFn) -> dict[str, Any]:
    """Any ``input`` a valid job may carry (schemas/models.py ``CompletionInput``)."""
    spec: dict[str, Any] = {"messages": draw(st.lists(_message, min_size=1, max_size=5))}
    optional = {
        "system": _text,
        "max_tokens": st.integers(min_value=1, max_value=1_000_000),
        "temperature": st.floats(min_value=0.0, max_value=2.0),
        "top_p": st.floats(min_value=0.0, max_value=1.0, exclude_min=True),
        "stop": st.lists(st.text(min_size=1, max_size=8), min_size=1, max_size=4),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            spec[name] = draw(strategy)
    return spec
