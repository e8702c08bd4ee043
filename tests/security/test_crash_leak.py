"""The crash path of the leak proof: a provider library that fails with the key in its exception text.

The worker logs ``job.crashed`` with the traceback (exception chain included) and requeues the message
until the delivery limit dead-letters it. Everything that path writes (the log lines through the real
production processor chain at debug level, the dead letter) is scanned for the key and every 12-character
window of it.
"""

from __future__ import annotations

import io
import secrets
from collections.abc import Iterator

import httpx
import orjson
import pytest
import structlog

from schemas.models import Provider
from tests.broker import BrokerTap, job_body, publish_jobs, running
from tests.conftest import Sealer
from tests.security.leakscan import Artifact, Canary, render, scan
from worker.jobs.service import Worker
from worker.logging_setup import processor_chain
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = f"sk-canary-{secrets.token_hex(16)}"


class LeakyTransport(httpx.AsyncBaseTransport):
    """A careless HTTP stack: its exceptions quote the request's credentials, directly and in their cause."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        authorization = request.headers["authorization"]
        try:
            raise ValueError(f"pool state dump: headers={{'Authorization': '{authorization}'}}")
        except ValueError as cause:
            raise RuntimeError(f"connection reset while sending {authorization} to {request.url}") from cause


@pytest.fixture
def production_logs() -> Iterator[io.BytesIO]:
    """structlog as ``configure_logging`` sets it up, at debug level, into a buffer (not cached, so the
    next tests' ``capture_logs`` still works)."""
    buffer = io.BytesIO()
    structlog.configure(
        processors=processor_chain(structlog.processors.JSONRenderer(serializer=orjson.dumps)),
        wrapper_class=structlog.make_filtering_bound_logger(0),
        logger_factory=structlog.BytesLoggerFactory(file=buffer),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    try:
        yield buffer
    finally:
        structlog.reset_defaults()


@pytest.mark.timeout(90)
async def test_a_traceback_with_the_key_in_it_never_reaches_a_log_or_a_dead_letter(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer, production_logs: io.BytesIO
) -> None:
    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
             "sealed_key": seal("ws-crash-leak", KEY, Provider.OPENAI, base_url)}
    async with running(Worker(settings, provider_transport=LeakyTransport)):
        await publish_jobs(settings, [job_body("crash-leak-1", "ws-crash-leak", model)])
        await tap.wait_for(lambda: len(tap.dead) == 1, timeout_s=60)

    logs = production_logs.getvalue()
    crashes = [line for line in logs.splitlines() if b'"job.crashed"' in line]
    assert len(crashes) == settings.delivery_limit + 1, "one crash per delivery: the first and each redelivery"
    assert all(b"Traceback" in line and b"RuntimeError" in line and b"ValueError" in line for line in crashes), (
        "the traceback and its cause are logged")
    dead = tap.dead[0]
    artifacts = [Artifact("logs", "worker", logs), Artifact("dead", "body", dead.body),
                 Artifact("dead", "headers", render(dead.headers).encode())]
    report = scan(artifacts, [Canary("sk", KEY)])
    print(f"\n[crash leak scan] crashes logged={len(crashes)}, log bytes={len(logs)}, dead letters={len(tap.dead)}, "
          f"substrings checked={report.needles}, hits={len(report.hits)}")
    assert not report.hits, "\n".join(h.describe() for h in report.hits[:10])
