"""Proof that nothing leaks (issue 4): canary keys through every path, everything captured, every form searched.

Canaries: an ``sk-canary-<hex>`` key (OpenAI and Anthropic protocols), a prefixless 32-character
Mistral-style key, both sealed with the real ``byok keys seal``, and the Vault root token the processes
run with. Real broker, real OpenBao, real simulator, real ``byok worker`` subprocesses at debug level,
plus a careless third-party endpoint that repeats the key it receives in every error it sends back.

Paths: success on three protocols, every error code, retries through the delay queue, dead letters,
``byok dlq list/show/replay``, ``byok keys create/seal/rotate/status/rewrap`` (and two misuses with the
key on argv or a clear key piped to rewrap), a SIGKILL mid-call and redelivery to another worker.
Captured: the workers' log files (fd level), CLI stdout and stderr, results, usage events, dead letters
and delayed retries (bodies and every property and header), replies, alerts, /metrics, /livez, /readyz,
/proc/<pid>/cmdline, and every trace span the workers exported (they run with ``OTEL_EXPORTER_OTLP_ENDPOINT``
pointing at a real OTLP/HTTP receiver; each export request as protobuf and as JSON). The spans are also
searched for prompt text: two canaries travel in every job's system prompt and user message.
``LEAK_SCAN_DUMP=<dir>`` writes all of it out for reading.

Run with ``-s`` to see the ``[leak scan]`` line with the counts.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import string
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest

from schemas.models import Provider
from tests.broker import BrokerTap, broker_tap, byok, job_body, publish_jobs
from tests.conftest import Sealer
from tests.otlp import OtlpReceiver, otlp_receiver
from tests.processes import ByokProcess, kill, start_worker
from tests.security.leakscan import (
    Artifact,
    Canary,
    EchoingProvider,
    captured_artifacts,
    cmdline_artifact,
    http_artifacts,
    log_artifact,
    publish,
    render,
    scan,
)
from tests.services import VaultServer
from tests.waiting import wait_until
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import CLIENT_GONE, ProviderSimulator, key_fingerprint

ALNUM = string.ascii_letters + string.digits
SLOW_MS = 2500
"""The provider call the crash interrupts."""

# Worker A: short provider read timeout (timeout path), every retry through the delay queue.
ENV_A = {"BYOK_PROVIDER_READ_TIMEOUT_S": "1", "BYOK_INLINE_RETRY_MAX_S": "0", "BYOK_MAX_ATTEMPTS": "2",
         "BYOK_LOG_LEVEL": "debug", "BYOK_LOG_FORMAT": "json"}
# Workers B (killed) and C (takes over): default timeouts, so the slow call is interrupted only by the kill.
ENV_BC = {"BYOK_LOG_LEVEL": "debug", "BYOK_LOG_FORMAT": "json"}



def traced(env: dict[str, str], receiver: OtlpReceiver) -> dict[str, str]:
    """``env`` with tracing on, to ``receiver`` (exported in batches every 100 ms)."""
    return {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "byok-leak-scan",
            "OTEL_BSP_SCHEDULE_DELAY": "100"}


def span_artifacts(receiver: OtlpReceiver) -> list[Artifact]:
    """Each OTLP export request as it arrived (protobuf) and as protobuf's JSON rendering."""
    found = [Artifact("spans", f"{i}/protobuf", body) for i, body in enumerate(receiver.bodies)]
    found += [Artifact("spans", f"{i}/json", text.encode()) for i, text in enumerate(receiver.as_json())]
    return found


# job id -> (protocol, model name, expected error code or None for success). Workspace, endpoint and
# sealed key are the canary's own.
PROVIDER_CASES: dict[str, tuple[str, str, str | None]] = {
    "ok-openai": ("openai", "gpt-4o-mini", None),
    "ok-mistral": ("mistral", "mistral-small-latest", None),
    "ok-anthropic": ("anthropic", "claude-3-5-haiku-latest", None),
    "nousage-mistral": ("mistral", "sim-nousage", None),
    "flaky-openai": ("openai", "sim-flaky-1", None),  # a 500, the delay queue, then success
    "auth-openai": ("openai", "sim-auth", "auth_failed"),
    "auth-mistral": ("mistral", "sim-auth", "auth_failed"),
    "auth-anthropic": ("anthropic", "sim-auth", "auth_failed"),
    "quota-openai": ("openai", "sim-quota", "quota_exhausted"),
    "quota-mistral": ("mistral", "sim-quota", "quota_exhausted"),
    "rate-openai": ("openai", "sim-rate", "rate_limited"),  # 429, the delay queue, 429 again
    "rate-mistral": ("mistral", "sim-rate", "rate_limited"),
    "error-openai": ("openai", "sim-error", "provider_error"),
    "overloaded-mistral": ("mistral", "sim-overloaded", "provider_error"),
    "timeout-openai": ("openai", "sim-slow-3000", "timeout"),  # read timeout 1 s, twice
}
OTHER_CASES: dict[str, str] = {
    "key-other-workspace": "key_unavailable",
    "key-other-endpoint": "key_unavailable",
    "key-other-provider": "key_unavailable",
    "invalid-no-key": "invalid_job",
    "invalid-field": "invalid_job",
    "pasted-plaintext": "invalid_job",
    "expired": "expired",
}
# job id -> (protocol, model name, expected error code): a provider that repeats the key in its errors.
ECHO_CASES: dict[str, tuple[str, str, str]] = {
    "echo-auth-openai": ("openai", "echo-auth", "auth_failed"),
    "echo-error-openai": ("openai", "echo-error", "provider_error"),  # retried through the delay queue
    "echo-auth-mistral": ("mistral", "echo-auth", "auth_failed"),
    "echo-invalid-mistral": ("mistral", "echo-invalid", "provider_error"),
    "echo-auth-anthropic": ("anthropic", "echo-auth", "auth_failed"),
}
NEVER_CALLED = ("gpt-other-workspace", "gpt-other-endpoint", "gpt-other-provider", "gpt-expired")
# Retried once through the delay queue (BYOK_MAX_ATTEMPTS=2 on worker A).
DELAYED = ("flaky-openai", "rate-openai", "rate-mistral", "error-openai", "overloaded-mistral", "timeout-openai",
           "echo-error-openai")
REPLAYED = ("error-openai", "overloaded-mistral", "echo-error-openai", "echo-invalid-mistral")


def mistral_style_key() -> str:
    """32 letters and digits, no prefix (as Mistral issues them)."""
    while True:
        key = "".join(secrets.choice(ALNUM) for _ in range(32))
        if any(c.isdigit() for c in key) and any(c.isalpha() for c in key):
            return key


class Cli:
    """Runs the real ``byok`` command (settings in its environment) and keeps its stdout and stderr."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.artifacts: list[Artifact] = []
        self.runs = 0

    async def __call__(self, label: str, *args: str, stdin: bytes | None = b"", expect: int = 0) -> str:
        result = await asyncio.to_thread(byok, self.settings, *args, stdin=stdin, check=False)
        self.runs += 1
        self.artifacts += [Artifact("cli", f"{label}/stdout", result.stdout),
                           Artifact("cli", f"{label}/stderr", result.stderr)]
        assert result.returncode == expect, f"byok ({label}) exited {result.returncode}: {result.stderr[-1500:]!r}"
        return result.stdout.decode()


class Workers:
    """``byok worker`` subprocesses: started off the event loop (the simulator runs on it), always stopped."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.started: list[tuple[str, ByokProcess]] = []
        self.artifacts: list[Artifact] = []

    async def start(self, label: str, env: dict[str, str]) -> ByokProcess:
        process = await asyncio.to_thread(start_worker, self.settings, **env)
        self.started.append((label, process))
        self.artifacts.append(cmdline_artifact(process.process.pid, f"worker-{label}"))
        return process

    async def snapshot(self, label: str, process: ByokProcess) -> None:
        self.artifacts += await http_artifacts(process.health_port, f"worker-{label}")

    def logs(self) -> list[Artifact]:
        return [log_artifact(p.log_path, f"worker-{label}.log") for label, p in self.started]

    async def stop_all(self) -> None:
        for _, process in self.started:
            await asyncio.to_thread(process.stop)


async def in_flight(port: int) -> float:
    async with httpx.AsyncClient(timeout=2) as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    for line in text.splitlines():
        if line.startswith("byok_jobs_in_flight "):
            return float(line.split()[1])
    return 0.0


def results_for(capture: BrokerTap, job_id: str) -> list[dict[str, Any]]:
    return [r for r in (orjson.loads(m.body) for m in capture.of("results")) if r["job_id"] == job_id]


@pytest.fixture
async def echo() -> AsyncIterator[EchoingProvider]:
    provider = EchoingProvider()
    await provider.start()
    yield provider
    await provider.stop()


@pytest.fixture
def traces() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture
async def workers(settings: Settings) -> AsyncIterator[Workers]:
    pool = Workers(settings)
    try:
        yield pool
    finally:
        await pool.stop_all()


def dump_artifacts(artifacts: list[Artifact]) -> None:
    """With LEAK_SCAN_DUMP=<dir>, everything that was scanned is written there for a human to read."""
    target = os.environ.get("LEAK_SCAN_DUMP")
    if not target:
        return
    for i, artifact in enumerate(artifacts):
        name = "".join(c if c.isalnum() or c in "-_." else "_" for c in artifact.name)
        path = Path(target) / artifact.kind / f"{i:03d}-{name}"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(artifact.data)


def scanner_finds(canary: Canary, data: bytes) -> bool:
    return bool(scan([Artifact("control", "control", data)], [canary]).hits)


def assert_scanner_works(canaries: list[Canary], real_log: bytes) -> None:
    """The positive control of the scanner itself: every form it claims to search is found."""
    for canary in canaries:
        raw = canary.value.encode()
        planted = {
            "raw": b"before " + raw + b" after",
            "upper case": raw.upper(),
            "12-char window": b"x" + raw[7:19] + b"y",
            "url-encoded": quote(canary.value + "/", safe="").encode(),
            "hex": raw.hex().encode(),
            "base64 shift 0": base64.b64encode(raw),
            "base64 shift 1": base64.b64encode(b"a" + raw + b"z"),
            "base64 shift 2": base64.b64encode(b"ab" + raw),
            "base64url shift 1": base64.urlsafe_b64encode(b"{" + raw),
            "base64 of a 15-byte part": base64.b64encode(raw[3:18]),
            "inside the real worker log": real_log[: len(real_log) // 2] + raw + real_log[len(real_log) // 2:],
        }
        for form, data in planted.items():
            assert scanner_finds(canary, data), f"the scanner misses {canary.name} as {form}"


@pytest.mark.timeout(150)
async def test_no_canary_reaches_any_log_message_cli_output_or_metric(
    settings: Settings, vault: VaultServer, simulator: ProviderSimulator, echo: EchoingProvider, workers: Workers,
    traces: OtlpReceiver,
) -> None:
    started = time.monotonic()
    suffix = secrets.token_hex(3)
    ws, other_ws = f"ws-leak-{suffix}", f"ws-leak-other-{suffix}"
    sk_key = f"sk-canary-{secrets.token_hex(16)}"
    plain_key = mistral_style_key()
    canaries = [Canary("openai_sk", sk_key), Canary("mistral_plain", plain_key),
                Canary("vault_root_token", vault.root_token)]
    # A publisher who pastes a clear key where the sealed one belongs: the dead letter keeps the body it
    # was sent (that is the contract), nothing else may repeat it.
    pasted = Canary("pasted_into_job", f"sk-canary-pasted-{secrets.token_hex(12)}")
    # Prompt text: the results repeat the user message (the simulator's answer), only spans are searched for it.
    prompts = [Canary("system_prompt", f"system-canary-{secrets.token_hex(10)}"),
               Canary("user_prompt", f"prompt-canary-{secrets.token_hex(10)}")]
    url = {p.value: simulator.base_url(p) for p in (Provider.OPENAI, Provider.MISTRAL, Provider.ANTHROPIC)}
    cli = Cli(settings)

    # Copies only: the dead letters stay in their queue for `byok dlq`.
    async with broker_tap(settings, copies=True) as capture:
        # -- keys: created and sealed with the real CLI while worker A starts --------------------------
        async def seal_all() -> dict[str, str]:
            await asyncio.gather(cli("keys-create", "keys", "create", ws),
                                 cli("keys-create-other", "keys", "create", other_ws))
            keys = {"openai": sk_key, "anthropic": sk_key, "mistral": plain_key}
            targets = {**{p: (p, url[p], k) for p, k in keys.items()},
                       **{f"echo-{p}": (p, echo.base_url(p), k) for p, k in keys.items()}}
            outs = await asyncio.gather(*(
                cli(f"keys-seal-{label}", "keys", "seal", ws, "--provider", provider, "--base-url", base_url,
                    stdin=key.encode() + b"\n")
                for label, (provider, base_url, key) in targets.items()
            ))
            lines = {label: out.splitlines() for label, out in zip(targets, outs, strict=True)}
            assert all(len(v) == 1 and v[0].startswith("vault:v1:") for v in lines.values()), lines
            return {label: v[0] for label, v in lines.items()}

        worker_a_start = asyncio.create_task(workers.start("a", traced(ENV_A, traces)))
        try:
            sealed = await seal_all()
        finally:
            worker_a = await worker_a_start

        def job(job_id: str, provider: str, name: str, *, workspace: str = ws, sealed_key: str | None = None,
                base_url: str | None = None, **extra: Any) -> tuple[str, bytes]:
            model = {"provider": provider, "name": name, "base_url": base_url or url[provider],
                     "sealed_key": sealed_key or sealed[provider]}
            return job_id, orjson.dumps({
                "job_id": job_id, "workspace_id": workspace, "automation_id": "leak-scan",
                "tags": {"run": suffix, "case": job_id}, "model": model, "metadata": {"case": job_id},
                "input": {"system": f"be brief {prompts[0].value}",
                          "messages": [{"role": "user", "content": f"leak scan {job_id} {prompts[1].value}"}],
                          "max_tokens": 64},
                **extra,
            })

        no_key = orjson.loads(job("invalid-no-key", "openai", "gpt-4o-mini")[1])
        del no_key["model"]["sealed_key"]
        bad_field = orjson.loads(job("invalid-field", "openai", "gpt-4o-mini")[1])
        bad_field["input"]["temperature"] = "hot"
        pasted_job = job("pasted-plaintext", "openai", "gpt-4o-mini", sealed_key=pasted.value)
        jobs = [
            *(job(job_id, provider, name) for job_id, (provider, name, _) in PROVIDER_CASES.items()),
            *(job(job_id, provider, name, base_url=echo.base_url(provider), sealed_key=sealed[f"echo-{provider}"])
              for job_id, (provider, name, _) in ECHO_CASES.items()),
            job("key-other-workspace", "openai", "gpt-other-workspace", workspace=other_ws),
            job("key-other-endpoint", "openai", "gpt-other-endpoint", base_url=f"{simulator.root_url}/elsewhere/v1"),
            job("key-other-provider", "openai", "gpt-other-provider", sealed_key=sealed["mistral"]),
            ("invalid-no-key", orjson.dumps(no_key)),
            ("invalid-field", orjson.dumps(bad_field)),
            pasted_job,
            job("expired", "openai", "gpt-expired", deadline="2000-01-01T00:00:00Z"),
        ]
        expected = {job_id: code for job_id, (_, _, code) in (PROVIDER_CASES | ECHO_CASES).items()} | OTHER_CASES
        failed = sorted(job_id for job_id, code in expected.items() if code)

        # -- every path through worker A --------------------------------------------------------------
        await publish(settings, jobs, reply_to=capture.reply_queue)
        await publish(settings, [("unroutable", b"\x00 this is not json {")])
        await wait_until(lambda: {orjson.loads(m.body)["job_id"] for m in capture.of("results")} == set(expected)
                         and len(capture.of("dead")) == len(failed) + 1,
                         what=lambda: f"{capture.counts()}, dead letters of "
                                      f"{sorted(render(d.message_id) for d in capture.of('dead'))}",
                         timeout=40)
        for job_id, code in expected.items():
            (result,) = results_for(capture, job_id)
            assert result["status"] == ("failed" if code else "succeeded"), result
            assert (result["error"] or {}).get("code") == code, result
        # Every job asked for a reply, and gets it, those that went through the delay queue included.
        replied = {orjson.loads(m.body)["job_id"] for m in capture.of("replies")}
        assert set(expected) <= replied, sorted(set(expected) - replied)
        assert sorted(render(d.message_id) for d in capture.of("delayed")) == sorted(DELAYED), (
            "each retried job went through the delay queue once")
        assert sorted(render(d.headers.get("x-byok-error")) for d in capture.of("dead")) == sorted(
            [*(expected[j] for j in failed), "invalid_job"])
        assert all(d.headers.get("x-byok-reason") for d in capture.of("dead"))

        # -- dead-letter CLI and key CLI, side by side --------------------------------------------------
        async def dlq_flow() -> None:
            await cli("dlq-list", "dlq", "list")
            listed = orjson.loads(await cli("dlq-list-json", "dlq", "list", "--json"))
            assert {v["message_id"] for v in listed} == {*failed, "unroutable"}
            await cli("dlq-show", "dlq", "show", "error-openai")
            await cli("dlq-replay", "dlq", "replay", "--reason", "provider_error", "--workspace", ws)
            await wait_until(lambda: all(len(results_for(capture, j)) == 2 for j in REPLAYED),
                             what=lambda: f"replayed results {[len(results_for(capture, j)) for j in REPLAYED]}")
            await cli("dlq-list-after-replay", "dlq", "list", "--workspace", ws, "--json")

        async def keys_flow() -> None:
            await cli("keys-rotate", "keys", "rotate", ws)
            outs = await asyncio.gather(
                cli("keys-status", "keys", "status", ws),
                cli("keys-status-json", "keys", "status", ws, "--json"),
                cli("keys-rewrap", "keys", "rewrap", ws, "--provider", "openai", "--base-url", url["openai"],
                    stdin=sealed["openai"].encode() + b"\n"),
                # Misuse: the key on the command line, and a clear key piped into rewrap. Refused, not echoed.
                cli("keys-seal-key-on-argv", "keys", "seal", ws, "--provider", "openai", sk_key, expect=2),
                cli("keys-rewrap-clear-key", "keys", "rewrap", ws, "--provider", "mistral", "--base-url",
                    url["mistral"], stdin=plain_key.encode() + b"\n", expect=2),
            )
            rewrapped = outs[2].strip()
            assert rewrapped.startswith("vault:v2:") and rewrapped != sealed["openai"]
            await publish(settings, [job("rewrapped-openai", "openai", "gpt-4o-mini", sealed_key=rewrapped)])
            await wait_until(lambda: results_for(capture, "rewrapped-openai"), what="the rewrapped job's result")
            assert results_for(capture, "rewrapped-openai")[0]["status"] == "succeeded"

        await asyncio.gather(dlq_flow(), keys_flow())
        await workers.snapshot("a", worker_a)
        await asyncio.to_thread(worker_a.stop)

        # -- a crash mid-call: SIGKILL worker B with both canary keys in flight, worker C takes over -------
        crash_ids = ("crash-openai", "crash-mistral")
        worker_b = await workers.start("b", traced(ENV_BC, traces))
        seen_before = len(simulator.ledger.requests())
        await publish(settings, [job("crash-openai", "openai", f"sim-slow-{SLOW_MS}"),
                                 job("crash-mistral", "mistral", f"sim-slow-{SLOW_MS}")])
        # Unsealed and on the wire: the simulator records a request as it arrives, long before it answers.
        await wait_until(lambda: len(simulator.ledger.requests()) >= seen_before + len(crash_ids),
                         what="both slow calls reaching the simulator")
        arrived = sorted(r.path for r in simulator.ledger.requests()[seen_before:])
        assert arrived == ["/mistral/v1/chat/completions", "/openai/v1/chat/completions"], arrived
        assert await in_flight(worker_b.health_port) == len(crash_ids)
        await workers.snapshot("b", worker_b)
        await asyncio.to_thread(kill, worker_b)
        assert not any(results_for(capture, j) for j in crash_ids), "B was killed before it could finish"
        worker_c = await workers.start("c", traced(ENV_BC, traces))
        await wait_until(lambda: all(results_for(capture, j) for j in crash_ids), what="the crash jobs' results")
        assert all(results_for(capture, j)[0]["status"] == "succeeded" for j in crash_ids)
        await workers.snapshot("c", worker_c)
        await asyncio.to_thread(worker_c.stop)
        # The last messages published are the crash jobs' usage events (confirmed with their results).
        await wait_until(lambda: {u.json["job_id"] for u in capture.usage} >= set(crash_ids),
                         what="the crash jobs' usage events")

    # -- positive controls: the canaries really travelled, and the scanner really finds them -------------
    calls = simulator.ledger.calls
    fingerprints = {key_fingerprint(sk_key): "sk", key_fingerprint(plain_key): "plain"}
    assert all(c.key_fingerprint in fingerprints for c in calls), "every provider call carried a canary key"
    delivered = {(c.protocol.value, fingerprints[c.key_fingerprint or ""]) for c in calls if c.status == 200}
    assert delivered == {("openai", "sk"), ("anthropic", "sk"), ("mistral", "plain")}, delivered
    assert not [c for c in calls if c.model in NEVER_CALLED], "a key_unavailable or expired job reached a provider"
    # key-other-endpoint points at /elsewhere/v1, which no route serves: only the all-requests record shows it.
    off_route = [(r.method, r.path) for r in simulator.ledger.requests() if r.protocol is None]
    assert not off_route, f"a request reached a path no provider route serves: {off_route}"
    echoed = {(protocol, fp) for protocol, _, fp in echo.seen}
    assert echoed == {("openai", key_fingerprint(sk_key)), ("anthropic", key_fingerprint(sk_key)),
                      ("mistral", key_fingerprint(plain_key))}, "the echoing provider did not get the canaries"
    for job_id in ECHO_CASES:
        assert all("[redacted]" in r["error"]["message"] for r in results_for(capture, job_id)), (
            "the echoed key was not there to scrub")
    gone = [c for c in calls if c.status == CLIENT_GONE and c.model == f"sim-slow-{SLOW_MS}"]
    assert len(gone) == len(crash_ids), "the kill interrupted both provider calls"

    logs = workers.logs()
    log_a = logs[0].data
    assert log_a.count(b'"job.finished"') == len(expected) + len(REPLAYED) + 1, "one outcome line per job on worker A"
    assert b'"job.delayed"' in log_a and b'"job.unroutable"' in log_a
    assert b'"job.finished"' in logs[2].data, "worker C's log is empty"
    assert_scanner_works([*canaries, pasted, *prompts], log_a)
    # A and C were stopped (SIGTERM): each flushed its spans on the way out. B was killed: its are lost.
    spans = traces.snapshot()
    traced_jobs = {s.attributes.get("byok.job.id") for s in spans if s.kind == "CONSUMER"}
    assert set(expected) | set(crash_ids) <= traced_jobs, sorted(set(expected) - traced_jobs)
    assert {s.attributes["gen_ai.provider.name"] for s in spans if s.kind == "CLIENT" and s.name.startswith("chat ")
            } == {"openai", "anthropic", "mistral_ai"}
    assert any(s.name == "unseal" for s in spans) and any(s.kind == "PRODUCER" for s in spans)
    in_jobs = [Artifact("dead", "job bodies", b"".join(d.body for d in capture.of("dead")))]
    assert all(scan(in_jobs, [p]).hits for p in prompts), "the prompt canaries did not travel in the jobs"

    # -- the scan ------------------------------------------------------------------------------------
    exported = span_artifacts(traces)
    artifacts = [*logs, *workers.artifacts, *cli.artifacts, *captured_artifacts(capture), *exported]
    dump_artifacts(artifacts)
    report = scan(artifacts, canaries)
    in_spans = scan(exported, prompts)
    pasted_body = pasted_job[1]
    scoped = scan(artifacts, [pasted], exempt=lambda _c, a: a.kind == "dead" and a.data == pasted_body)
    counts = capture.counts()
    windows = sum(1 for c in canaries for n in c.needles() if n.form == "window")
    kinds = {kind: sum(1 for a in artifacts if a.kind == kind) for kind in ("metrics", "health", "cmdline")}
    elapsed = time.monotonic() - started
    print(f"\n[leak scan] artifacts: logs={len(logs)}, results={counts['results']}, usage={counts['usage']}, "
          f"dead={counts['dead']}, replies={counts['replies']}, delayed={counts['delayed']}, "
          f"alerts={counts['alerts']}, cli={cli.runs} runs ({len(cli.artifacts)} streams), "
          f"metrics={kinds['metrics']}, health={kinds['health']}, cmdline={kinds['cmdline']}; "
          f"bytes scanned={report.bytes_scanned}; canaries={len(canaries)} (+1 scoped: pasted into a job); "
          f"substrings checked={report.needles} (12-char windows={windows}, the rest URL/hex/base64 forms; "
          f"+{scoped.needles} scoped); provider calls with a canary key: simulator={len(calls)} "
          f"(cut by the kill={len(gone)}), echoing provider={len(echo.seen)}; "
          f"spans={len(spans)} in {len(traces.bodies)} OTLP requests (+{len(prompts)} prompt canaries searched "
          f"there, {in_spans.needles} substrings); hits={len(report.hits) + len(scoped.hits) + len(in_spans.hits)}; "
          f"{elapsed:.1f}s")
    assert not report.hits, "canary leaked:\n" + "\n".join(h.describe() for h in report.hits[:20])
    assert not scoped.hits, "a key pasted into a job leaked:\n" + "\n".join(h.describe() for h in scoped.hits[:20])
    assert not in_spans.hits, "prompt text in a span:\n" + "\n".join(h.describe() for h in in_spans.hits[:20])


@pytest.mark.timeout(60)
async def test_a_key_unsealed_for_its_endpoint_is_not_served_from_cache_to_another_endpoint(
    settings: Settings, simulator: ProviderSimulator, seal: Sealer, running_worker: Worker, tap: BrokerTap
) -> None:
    """Regression: the unseal cache was keyed by (workspace, sealed key) only. Once a Mistral key had been
    unsealed for its own endpoint, a job pairing the same sealed key with another provider or base URL got
    it from the cache and sent it there (the binding was checked only on a cache miss)."""
    key = mistral_style_key()
    workspace = f"ws-cache-{secrets.token_hex(3)}"
    mistral = simulator.base_url(Provider.MISTRAL)
    sealed = seal(workspace, key, Provider.MISTRAL, mistral)
    own = {"provider": "mistral", "name": "mistral-small-latest", "base_url": mistral, "sealed_key": sealed}
    await publish_jobs(settings, [job_body("own-endpoint", workspace, own)])
    await tap.wait_for(lambda: len(tap.results) == 1)
    assert tap.result_for("own-endpoint")["status"] == "succeeded"
    elsewhere = [
        {**own, "provider": "openai", "name": "gpt-elsewhere", "base_url": simulator.base_url(Provider.OPENAI)},
        {**own, "name": "mistral-elsewhere", "base_url": f"{simulator.root_url}/elsewhere"},
        {**own, "name": "mistral-other-path", "base_url": mistral + "/v9"},
    ]
    await publish_jobs(settings, [job_body(f"elsewhere-{i}", workspace, m) for i, m in enumerate(elsewhere)])
    await tap.wait_for(lambda: len(tap.results) == 1 + len(elsewhere))
    for i in range(len(elsewhere)):
        result = tap.result_for(f"elsewhere-{i}")
        assert result["status"] == "failed" and result["error"]["code"] == "key_unavailable", result
    assert [c.model for c in simulator.ledger.calls] == ["mistral-small-latest"], "the key went somewhere else"
    # Two of the other endpoints are paths the simulator serves no route for: the all-requests record shows
    # anything that reached them.
    assert [(r.method, r.path) for r in simulator.ledger.requests()] == [
        ("POST", "/mistral/v1/chat/completions")], "a request went to another endpoint"
    # One hit: the own-endpoint job's run, after its key was unsealed before it took a run slot. None of the
    # other endpoints' jobs was served from the cache (each missed, and Vault refused its binding).
    assert running_worker.cache.hits == 1
