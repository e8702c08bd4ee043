"""Session-wide real services; per-test names so tests never see each other's messages."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.services import VaultServer, rabbit_vhost, start_vault
from worker.settings import Settings


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
def topology_prefix() -> str:
    return f"t{secrets.token_hex(4)}.byok"


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
    )
