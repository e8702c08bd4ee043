"""Session-wide real services; per-test names so tests never see each other's messages."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import aio_pika
import pytest

from schemas.models import Provider
from tests.broker import BrokerTap, broker_tap, byok, running
from tests.services import VaultServer, rabbit_vhost, start_vault
from worker.broker.names import Topology
from worker.broker.topology import aggregator_topology, topology_spec
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

Sealer = Callable[..., str]


@pytest.fixture(scope="session")
def vault() -> Iterator[VaultServer]:
    server = start_vault()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def amqp_url() -> Iterator[str]:
    with rabbit_vhost() as url:
        yield url


@pytest.fixture
async def topology_prefix(amqp_url: str) -> AsyncIterator[str]:
    """This test's own names; its queues are deleted afterwards, so the broker does not carry the quorum
    queues of every test of the session at once."""
    prefix = f"t{secrets.token_hex(4)}.byok"
    yield prefix
    names = Topology(prefix)
    queues = [q.name for q in (*topology_spec(names, delivery_limit=5).queues, *aggregator_topology(names).queues)]
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        for name in dict.fromkeys(queues):
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(name)
            if not channel.is_closed:
                await channel.close()


@pytest.fixture
def settings(amqp_url: str, vault: VaultServer, topology_prefix: str, tmp_path: Path) -> Settings:
    """Worker/aggregator settings on the real services, with this test's own topology names."""
    return Settings(
        amqp_url=amqp_url,
        topology_prefix=topology_prefix,
        vault_addr=vault.addr,
        vault_token=vault.root_token,
        store_url=f"sqlite:///{tmp_path / 'byok.db'}",
        metrics_listen="127.0.0.1:0",
        api_listen="127.0.0.1:0",
        log_level="debug",
        shutdown_grace_s=5,
        retry_base_delay_s=0.05,
        # The simulator and every other test endpoint listen on loopback, which the worker refuses unless listed.
        allowed_hosts=frozenset({"127.0.0.1"}),
    )



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
    async with running(Worker(settings)) as worker:
        yield worker


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
