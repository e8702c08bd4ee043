"""The real services a benchmark runs against, each in its own process so its CPU can be measured.

A throwaway RabbitMQ vhost, an OpenBao dev server, provider simulators (``byok simulate-provider``),
workspace keys sealed the way ``byok keys seal`` does, and ``byok worker`` subprocesses.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from pydantic import SecretStr

from schemas.models import Provider
from tests.processes import ByokProcess, process_env
from tests.services import rabbit_vhost
from worker.keys.admin import KeyAdmin
from worker.keys.endpoint import Endpoint
from worker.settings import Settings
from worker.testing.devstack import DevVault, free_port, start_dev_vault, wait_for_port

PROVIDER_KEY = "sk-bench-" + "k" * 40


@dataclass
class Simulator:
    process: subprocess.Popen[bytes]
    port: int
    latency_ms: float

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def openai_base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/openai/v1"

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.resolve(Provider.OPENAI, self.openai_base_url)

    def stop(self) -> None:
        stop_process(self.process)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_simulator(latency_ms: float) -> Simulator:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.simulate", str(port), str(latency_ms)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for_port("127.0.0.1", port, 30)
    return Simulator(process, port, latency_ms)


@dataclass
class Stack:
    amqp_url: str
    vault: DevVault
    simulators: dict[float, Simulator] = field(default_factory=dict)
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="byok-bench-")))
    worker_source: Path | None = None
    """Run ``byok worker`` from another source tree (a copy with ``worker/`` and ``schemas/``), for A/B runs."""
    _sealed: dict[tuple[str, str], str] = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local)

    def simulator(self, latency_ms: float) -> Simulator:
        if latency_ms not in self.simulators:
            self.simulators[latency_ms] = start_simulator(latency_ms)
        return self.simulators[latency_ms]

    def settings(self, prefix: str) -> Settings:
        return Settings(
            amqp_url=SecretStr(self.amqp_url),
            topology_prefix=prefix,
            vault_addr=self.vault.addr,
            vault_token=SecretStr(self.vault.root_token),
            store_url=f"sqlite:///{self.workdir / 'unused.db'}",
            allowed_hosts=frozenset({"127.0.0.1"}),  # the simulators listen on loopback, refused unless listed
        )

    def _admin(self) -> KeyAdmin:
        admin: KeyAdmin | None = getattr(self._local, "admin", None)
        if admin is None:
            admin = KeyAdmin(self.vault.client())
            self._local.admin = admin
        return admin

    def _seal_one(self, workspace_id: str, endpoint: Endpoint) -> str:
        admin = self._admin()
        admin.create(workspace_id)
        return admin.seal(workspace_id, endpoint, SecretStr(PROVIDER_KEY))

    def seal(self, workspaces: list[str], endpoint: Endpoint, threads: int = 8) -> dict[str, str]:
        """A derived transit key per workspace and one sealed provider key each, with ``KeyAdmin`` (what
        ``byok keys create`` and ``byok keys seal`` run), bound to ``endpoint``; several threads."""
        todo = [ws for ws in workspaces if (ws, endpoint.base_url) not in self._sealed]
        with ThreadPoolExecutor(threads) as pool:
            for ws, sealed in zip(todo, pool.map(lambda ws: self._seal_one(ws, endpoint), todo), strict=True):
                self._sealed[(ws, endpoint.base_url)] = sealed
        return {ws: self._sealed[(ws, endpoint.base_url)] for ws in workspaces}

    def launch_worker(self, prefix: str, prefetch: int, *, name: str = "", **env: str) -> ByokProcess:
        """``byok worker`` as in production (JSON logs at info, to a file); returns at once, not yet ready.
        ``name``: told apart from other workers of the same topology (its log file)."""
        port = free_port()
        overrides = {"BYOK_PREFETCH": str(prefetch), "BYOK_LOG_LEVEL": "info", "BYOK_LOG_FORMAT": "json",
                     "BYOK_METRICS_LISTEN": f"127.0.0.1:{port}", **env}
        log_path = self.workdir / f"worker-{prefix}{name}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "worker.cli", "worker"], stdout=log,
                                       stderr=subprocess.STDOUT, env=process_env(self.settings(prefix), **overrides),
                                       cwd=self.worker_source)
        return ByokProcess(process, log_path, port)

    def stop(self) -> None:
        for simulator in self.simulators.values():
            simulator.stop()
        self.vault.stop()


@contextlib.contextmanager
def stack() -> Iterator[Stack]:
    with rabbit_vhost() as url:
        vault = start_dev_vault()
        services = Stack(url, vault)
        try:
            yield services
        finally:
            services.stop()
            shutil.rmtree(services.workdir, ignore_errors=True)


def new_prefix(name: str) -> str:
    return f"bench{secrets.token_hex(3)}.{name}"


def scrape(port: int) -> dict[str, float]:
    """The worker's /metrics, summed per sample name with its labels: ``{'name{labels}': value}``."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        samples[name] = float(value)
    return samples


def metric_sum(samples: dict[str, float], name: str) -> float:
    return sum(v for k, v in samples.items() if k == name or k.startswith(name + "{"))


