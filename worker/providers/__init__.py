"""Provider protocols: one adapter module each, looked up by the job's ``model.provider``."""

from __future__ import annotations

from schemas.models import Provider
from worker.providers.base import ProviderAdapter, ProviderReply, ProviderRequest
from worker.providers.openai import OpenAIAdapter

ADAPTERS: dict[Provider, ProviderAdapter] = {
    Provider.OPENAI: OpenAIAdapter(),
}


def adapter_for(provider: Provider) -> ProviderAdapter | None:
    return ADAPTERS.get(provider)


__all__ = ["ADAPTERS", "ProviderAdapter", "ProviderReply", "ProviderRequest", "adapter_for"]
