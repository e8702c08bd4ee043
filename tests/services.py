"""Real services for the tests: an OpenBao dev server and a private RabbitMQ vhost.

Nothing here is a mock. A service that cannot be started or reached fails the run loudly.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
from collections.abc import Iterator

from worker.testing.devstack import DevVault, free_port, start_dev_vault, wait_for_port

RABBIT_HOST = "127.0.0.1"
RABBIT_PORT = 5672

VaultServer = DevVault
start_vault = start_dev_vault

__all__ = ["VaultServer", "free_port", "rabbit_vhost", "rabbitmqctl", "start_vault", "wait_for_port"]


def rabbitmqctl(*args: str) -> None:
    result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr or result.stdout}")


@contextlib.contextmanager
def rabbit_vhost() -> Iterator[str]:
    """A throwaway vhost on the local broker; yields its AMQP URL (guest/guest)."""
    wait_for_port(RABBIT_HOST, RABBIT_PORT, 30)
    name = f"byok-test-{secrets.token_hex(4)}"
    rabbitmqctl("add_vhost", name)
    try:
        rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield f"amqp://guest:guest@{RABBIT_HOST}:{RABBIT_PORT}/{name}"
    finally:
        rabbitmqctl("delete_vhost", name)
