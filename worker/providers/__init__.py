"""Provider protocols: one adapter module each, looked up by the job's ``model.provider``."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import assert_never

from schemas.models import Provider
from worker.providers.anthropic import AnthropicAdapter
from worker.providers.base import ProviderAdapter, ProviderReply, ProviderRequest
from worker.providers.mistral import MistralAdapter
from worker.providers.ollama import OllamaAdapter
from worker.providers.openai import OpenAIAdapter


def _adapter(provider: Provider) -> ProviderAdapter:
    # A match over the enum that mypy checks is exhaustive: a new Provider without an adapter fails the type check.
    match provider:
        case Provider.OPENAI:
            return OpenAIAdapter()
        case Provider.ANTHROPIC:
            return AnthropicAdapter()
        case Provider.MISTRAL:
            return MistralAdapter()
        case Provider.OLLAMA:
            return OllamaAdapter()
        case _:
            assert_never(provider)


ADAPTERS: Mapping[Provider, ProviderAdapter] = MappingProxyType({provider: _adapter(provider) for provider in Provider})


def adapter_for(provider: Provider) -> ProviderAdapter:
    return ADAPTERS[provider]


__all__ = ["ADAPTERS", "ProviderAdapter", "ProviderReply", "ProviderRequest", "adapter_for"]
