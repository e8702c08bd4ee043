"""What a hostile provider endpoint can do to the worker (#13), through the real broker, Vault and worker.

A job names its own base URL, so an endpoint is whatever a workspace points the worker at. Each attack of
``HostileEndpoint`` must end its job with the right code and reason, leave nothing of the key in any
result, usage event, dead letter or log line, and leave the worker healthy (ready, and its memory about
where it was). By default the worker refuses loopback, private, link-local and metadata addresses, with the
same answer whether anything listens there or not.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from schemas.models import Provider
from tests.broker import BrokerTap, broker_tap, job_body, publish_jobs, running
from tests.conftest import Sealer
from tests.security.hostile_endpoint import COOKIE, ERROR_MARKER, MIB, HostileEndpoint, scripted_dns
from tests.security.leakscan import Artifact, Canary, render, scan
from tests.security.test_crash_leak import production_logs  # noqa: F401 - the production log chain, as a fixture
from worker.jobs.service import Worker
from worker.redaction import REDACTED
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = f"sk-hostile-{secrets.token_hex(16)}"
CAP = MIB
RSS_GROWTH_LIMIT = 64 * MIB


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


@pytest.fixture
async def hostile() -> AsyncIterator[HostileEndpoint]:
    endpoint = HostileEndpoint(bomb_bytes=64 * MIB, huge_bytes=256 * MIB)
    await endpoint.start()
    yield endpoint
    await endpoint.stop()


def keyed(hostile: HostileEndpoint, seal: Sealer, attack: str, workspace: str = "ws-hostile") -> dict[str, Any]:
    base_url = hostile.base_url(Provider.OPENAI)
    return {"provider": "openai", "name": f"hostile-{attack}", "base_url": base_url,
            "sealed_key": seal(workspace, KEY, Provider.OPENAI, base_url)}


def keyless(base_url: str, attack: str = "ok") -> dict[str, Any]:
    return {"provider": "ollama", "name": f"hostile-{attack}", "base_url": base_url}


def scan_for_the_key(tap: BrokerTap, logs: bytes) -> None:
    artifacts = [Artifact("logs", "worker", logs)]
    for index, message in enumerate(tap.everything()):
        artifacts += [Artifact(message.routing_key, f"{index}/body", message.body),
                      Artifact(message.routing_key, f"{index}/headers", render(message.headers).encode())]
    report = scan(artifacts, [Canary("key", KEY)])
    assert not report.hits, "\n".join(hit.describe() for hit in report.hits)


async def readyz(worker: Worker) -> int:
    assert worker.health is not None
    async with httpx.AsyncClient() as client:
        return (await client.get(f"http://127.0.0.1:{worker.health.port}/readyz")).status_code


TOO_LARGE = f"the provider's answer is larger than {CAP} bytes"
# job id: (model, status, error code, reason or text, retryable)
EXPECTED: dict[str, tuple[str, str, str | None, str, bool | None]] = {
    "ok": ("keyed", "succeeded", None, "fine", None),
    "gzip-bomb": ("keyed", "failed", "provider_error", TOO_LARGE, False),
    "ollama-gzip-bomb": ("keyless", "failed", "provider_error", TOO_LARGE, False),
    "huge": ("keyed", "failed", "provider_error", TOO_LARGE, False),
    "trickle": ("keyed", "failed", "timeout", "the provider call took longer than 1 s (BYOK_PROVIDER_CALL_TIMEOUT_S)",
                True),
    "echo": ("keyed", "succeeded", None, f"you sent {REDACTED}", None),
    "echo-error": ("keyed", "failed", "provider_error", f"invalid api key {REDACTED} for this org", False),
    "redirect": ("keyed", "failed", "provider_error", "HTTP 307", False),
    "error-text": ("keyed", "failed", "provider_error", "HTTP 502", True),
    "ollama-error-text": ("keyless", "failed", "provider_error", "HTTP 502", True),
    "bad-gzip": ("keyed", "failed", "provider_error", "the provider's answer does not decode", False),
    "set-cookie": ("keyed", "succeeded", None, "fine", None),
    "not-http": ("keyed", "failed", "provider_error", "connection to the provider failed (RemoteProtocolError)", True),
}


@pytest.mark.timeout(180)
async def test_hostile_answers_fail_cleanly_leak_no_key_and_leave_the_worker_healthy(
    settings: Settings, hostile: HostileEndpoint, seal: Sealer, production_logs: Any,  # noqa: F811
) -> None:
    hostile_settings = settings.model_copy(update={
        "allowed_hosts": frozenset({f"127.0.0.1:{hostile.port}"}), "provider_max_response_bytes": CAP,
        "provider_call_timeout_s": 1.0, "max_attempts": 1,
    })
    async with broker_tap(hostile_settings) as tap, running(Worker(hostile_settings)) as worker:
        await publish_jobs(hostile_settings, [job_body("warm-up", "ws-hostile", keyed(hostile, seal, "ok"))])
        await tap.wait_for(lambda: len(tap.results) == 1)
        rss_before = rss_bytes()

        jobs = []
        for job_id, (kind, *_rest) in EXPECTED.items():
            attack = job_id.removeprefix("ollama-")
            model = keyed(hostile, seal, attack) if kind == "keyed" else keyless(hostile.base_url(Provider.OLLAMA),
                                                                                 attack)
            jobs.append(job_body(job_id, "ws-hostile", model))
        await publish_jobs(hostile_settings, jobs)
        await tap.wait_for(lambda: len(tap.results) == 1 + len(EXPECTED), timeout_s=60)
        # After the cookie was set: the next job to the same origin must not carry it.
        await publish_jobs(hostile_settings, [job_body("after-cookie", "ws-other",
                                                             keyed(hostile, seal, "ok", "ws-other"))])
        await tap.wait_for(lambda: len(tap.results) == 2 + len(EXPECTED))

        rss_after = rss_bytes()
        assert await readyz(worker) == 200

    for job_id, (_kind, status, code, reason, retryable) in EXPECTED.items():
        result = tap.result_for(job_id)
        assert result["status"] == status, (job_id, result)
        if code is None:
            assert result["output"]["text"] == reason, job_id
        else:
            assert (result["error"]["code"], result["error"]["message"], result["error"]["retryable"]) == (
                code, reason, retryable), job_id
    echo = tap.result_for("echo")
    assert echo["output"]["provider_finish_reason"] == REDACTED
    assert echo["output"]["finish_reason"] == "other", "an unknown finish value is normalised beside the scrubbed one"
    echo_usage = [u.json for u in tap.usage if u.json["job_id"] == "echo"]
    assert echo_usage and echo_usage[0]["raw_usage"]["echo"] == REDACTED
    assert tap.result_for("redirect")["error"]["provider_status"] == 307
    assert [s.attack for s in hostile.seen].count("redirect") == 1, "a redirect is never followed"
    assert all(s.cookie is None for s in hostile.seen), f"a cookie travelled: {COOKIE}"
    assert tap.result_for("after-cookie")["status"] == "succeeded"

    everything = b"".join(m.body for m in tap.everything())
    assert ERROR_MARKER.encode() not in everything, "an endpoint's error body reached a message"
    scan_for_the_key(tap, production_logs.getvalue())
    growth = rss_after - rss_before
    print(f"\n[hostile] rss before {rss_before // MIB} MiB, after {rss_after // MIB} MiB, "
          f"streamed {hostile.bytes_sent // MIB} MiB")
    assert growth < RSS_GROWTH_LIMIT, f"the worker grew by {growth // MIB} MiB"


@pytest.mark.timeout(120)
async def test_by_default_loopback_private_and_metadata_are_refused_open_port_or_not(
    settings: Settings, hostile: HostileEndpoint, simulator: ProviderSimulator, seal: Sealer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scripted_dns(monkeypatch, {"internal.hostile.test": ["127.0.0.1"]})
    open_url, closed_url = hostile.base_url(Provider.OLLAMA), "http://127.0.0.1:1/ollama"
    keyed_url = hostile.base_url(Provider.OPENAI)
    refused_keyless = {
        "open-port": open_url,
        "closed-port": closed_url,
        "ipv6-loopback": f"http://[::1]:{hostile.port}/ollama",
        "localhost": f"http://localhost:{hostile.port}/ollama",
        "resolves-to-loopback": f"http://internal.hostile.test:{hostile.port}/ollama",
        "metadata": "http://169.254.169.254/latest",
        "private": "http://10.0.0.1:11434",
        "cgnat": "http://100.64.0.1:11434",
        "mapped": f"http://[::ffff:127.0.0.1]:{hostile.port}/ollama",
    }
    refused_keyed = {"keyed-loopback": keyed_url, "keyed-metadata": "https://169.254.169.254/v1"}
    defaults = settings.model_copy(update={"allowed_hosts": None})
    async with broker_tap(defaults) as tap, running(Worker(defaults)):
        bodies = [job_body(job_id, "ws-default", keyless(url, "error-text")) for job_id, url in refused_keyless.items()]
        bodies += [job_body(job_id, "ws-default", {"provider": "openai", "name": "hostile-error-text", "base_url": url,
                                                   "sealed_key": seal("ws-default", KEY, Provider.OPENAI, url)})
                   for job_id, url in refused_keyed.items()]
        await publish_jobs(defaults, bodies)
        await tap.wait_for(lambda: len(tap.results) == len(bodies), timeout_s=60)

    for job_id in refused_keyless:
        error = tap.result_for(job_id)["error"]
        assert error["code"] == "invalid_job" and "BYOK_ALLOWED_HOSTS" in error["message"], (job_id, error)
        assert tap.result_for(job_id)["attempts"] == 0
    for job_id in refused_keyed:
        assert tap.result_for(job_id)["error"]["code"] == "key_unavailable", job_id
    assert tap.result_for("open-port")["error"] == tap.result_for("closed-port")["error"], (
        "an open port must answer as a closed one")
    assert hostile.seen == [], "nothing reached the endpoint"
    assert simulator.ledger.requests() == []
    assert ERROR_MARKER.encode() not in b"".join(m.body for m in tap.everything())


@pytest.mark.timeout(60)
async def test_a_listed_name_is_called_even_when_it_resolves_to_loopback(
    settings: Settings, hostile: HostileEndpoint, monkeypatch: pytest.MonkeyPatch,
) -> None:
    scripted_dns(monkeypatch, {"ollama.internal": ["127.0.0.1"]})
    listed = settings.model_copy(update={"allowed_hosts": frozenset({f"ollama.internal:{hostile.port}"})})
    async with broker_tap(listed) as tap, running(Worker(listed)):
        await publish_jobs(listed, [job_body("listed", "ws-listed",
                                             keyless(f"http://ollama.internal:{hostile.port}/ollama"))])
        await tap.wait_for(lambda: len(tap.results) == 1)
    result = tap.result_for("listed")
    assert result["status"] == "succeeded" and result["output"]["text"] == "fine", result
    assert [s.attack for s in hostile.seen] == ["ok"]
