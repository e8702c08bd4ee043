"""Every provider of the contract has its adapter: ``adapter_for`` is total."""

from __future__ import annotations

import pytest

from schemas.models import Provider
from worker.providers import ADAPTERS, adapter_for


@pytest.mark.parametrize("provider", list(Provider))
def test_every_provider_has_its_adapter(provider: Provider) -> None:
    assert adapter_for(provider).provider is provider


def test_the_adapters_cannot_be_changed_at_run_time() -> None:
    with pytest.raises(TypeError):
        ADAPTERS[Provider.OPENAI] = ADAPTERS[Provider.OLLAMA]  # type: ignore[index]
