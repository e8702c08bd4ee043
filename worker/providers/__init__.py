"""Provider protocols: one adapter module each, looked up by the job's ``model.provider``."""

from __future__ import annotations

from schemas.models import Provider
from worker.providers.anthropic import AnthropicAdapter
from worker.providers.base import ProviderAdapter, ProviderReply, ProviderRequest
from worker.providers.mistral import MistralAdapter
from worker.providers.ollama import OllamaAdapter
from worker.providers.openai import OpenAIAdapter

ADAPTERS: dict[Provider, ProviderAdapter] = {
    Provider.OPENAI: OpenAIAdapter(),
    Provider.ANTHROPIC: AnthropicAdapter(),
    Provider.MISTRAL: MistralAdapter(),
    Provider.OLLAMA: OllamaAdapter(),
}


def adapter_for(provider: Provider) -> ProviderAdapter | None:
    return ADAPTERS.get(provider)


__all__ = ["ADAPTERS", "ProviderAdapter", "ProviderReply", "ProviderRequest", "adapter_for"]
