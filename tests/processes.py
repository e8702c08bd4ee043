"""Real ``byok`` processes for tests that kill, stop or restart them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.waiting import wait_until_sync
from worker.settings import Settings
from worker.testing.devstack import free_port


def process_env(settings: Settings, **overrides: str) -> dict[str, str]:
    env = {
        # A developer's own OTEL_* would turn tracing on in every process a test starts: only a test does that.
        **{name: value for name, value in os.environ.items() if not name.startswith("OTEL_")},
        "BYOK_AMQP_URL": settings.amqp_url.get_secret_value(),
        "BYOK_TOPOLOGY_PREFIX": settings.topology_prefix,
        "BYOK_VAULT_ADDR": settings.vault_addr,
        "BYOK_VAULT_TOKEN": settings.vault_token.get_secret_value() if settings.vault_token else "",
        "BYOK_STORE_URL": settings.store_url.get_secret_value(),
        "BYOK_LOG_LEVEL": "debug",
        "BYOK_RETRY_BASE_DELAY_S": str(settings.retry_base_delay_s),
    }
    if settings.allowed_hosts is not None:
        env["BYOK_ALLOWED_HOSTS"] = ",".join(sorted(settings.allowed_hosts))
    env.update(overrides)
    return env


@dataclass
class ByokProcess:
    process: subprocess.Popen[bytes]
    log_path: Path
    health_port: int = 0
    env: dict[str, str] = field(default_factory=dict)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        self.process.send_signal(sig)

    def wait(self, timeout_s: float) -> int:
        return self.process.wait(timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_worker(settings: Settings, ready_timeout_s: float = 30.0, **overrides: str) -> ByokProcess:
    port = free_port()
    env = process_env(settings, BYOK_METRICS_LISTEN=f"127.0.0.1:{port}", **overrides)
    log_path = Path(tempfile.mkstemp(prefix="byok-worker-", suffix=".log")[1])
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "worker.cli.main", "worker"], stdout=log,
                                   stderr=subprocess.STDOUT, env=env)
    worker = ByokProcess(process, log_path, port, env)
    try:
        wait_ready(worker, ready_timeout_s)
    except AssertionError:
        worker.stop()
        raise
    return worker


def wait_ready(worker: ByokProcess, timeout_s: float = 30.0) -> None:
    """Until the worker's /readyz says 200; fails at once, with its log, if the process exits."""

    def ready() -> bool:
        if worker.process.poll() is not None:
            raise AssertionError(f"worker exited with {worker.process.returncode}: {worker.log()[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{worker.health_port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until_sync(ready, timeout=timeout_s, poll_s=0.05, what=lambda: f"the worker ready: {worker.log()[-3000:]}")


def kill(worker: ByokProcess) -> None:
    worker.signal(signal.SIGKILL)
    worker.wait(10)
