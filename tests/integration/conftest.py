"""A worker running in process against the real broker, Vault and the provider simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from schemas.models import Provider
from tests.broker import BrokerTap, broker_tap, byok
from worker.service import Worker
from worker.settings import Settings
from worker.simulator import ProviderSimulator

Sealer = Callable[..., str]


@pytest.fixture
async def simulator() -> AsyncIterator[ProviderSimulator]:
    sim = ProviderSimulator()
    await sim.start()
    yield sim
    await sim.stop()


@pytest.fixture
async def tap(settings: Settings) -> AsyncIterator[BrokerTap]:
    async with broker_tap(settings) as captured:
        yield captured


@pytest.fixture
async def running_worker(settings: Settings, tap: BrokerTap) -> AsyncIterator[Worker]:
    worker = Worker(settings)
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run(stop))
    ready = asyncio.create_task(worker.ready.wait())
    done, _ = await asyncio.wait({task, ready}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        task.result()  # raises the startup error
    assert ready in done, "worker did not become ready"
    yield worker
    stop.set()
    await asyncio.wait_for(task, 30)


_sealed: dict[tuple[str, ...], str] = {}


@pytest.fixture
def seal(settings: Settings) -> Sealer:
    """Seals a key with the real ``byok keys`` commands (key on stdin), cached per session."""

    def sealer(workspace_id: str, key: str, provider: Provider = Provider.OPENAI, base_url: str | None = None) -> str:
        cache_key = (settings.vault_addr, workspace_id, key, provider.value, base_url or "")
        if cache_key not in _sealed:
            byok(settings, "keys", "create", workspace_id)
            args = ["keys", "seal", workspace_id, "--provider", provider.value]
            if base_url:
                args += ["--base-url", base_url]
            out = byok(settings, *args, stdin=key.encode() + b"\n").stdout.decode()
            lines = out.splitlines()
            assert len(lines) == 1 and lines[0].startswith("vault:v"), "seal must print exactly one sealed line"
            _sealed[cache_key] = lines[0]
        return _sealed[cache_key]

    return sealer
