"""The leak scanner and its plumbing: canaries, artifacts, every encoding of a key we look for.

A canary is a secret the test controls (a provider key sealed through ``byok keys seal``, the Vault root
token). An artifact is anything the system produced (a log file, a message body and its headers, CLI
output, a metrics page). ``scan`` looks for each canary, every 12-character window of it, its URL-encoded
and hex forms and its base64 (standard and URL-safe, at every byte alignment) in every artifact.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import aio_pika
import httpx
from aiohttp import web

from tests.broker import KINDS, BrokerTap
from worker.broker.names import JOB_ROUTING_KEY, Topology
from worker.settings import Settings
from worker.testing.simulator import key_fingerprint

WINDOW = 12
"""Characters (bytes) of a canary that count as a leak on their own."""
B64_WINDOW = 16
"""Base64 characters that encode WINDOW bytes."""


# ------------------------------------------------------------------------------------------ needles


@dataclass(frozen=True, slots=True)
class Needle:
    canary: str
    form: str
    text: str
    fold: bool
    """Matched case-insensitively (raw, URL-encoded and hex forms); base64 is matched exactly."""


@dataclass(frozen=True, slots=True)
class Canary:
    name: str
    value: str

    def needles(self) -> list[Needle]:
        raw = self.value.encode()
        found: dict[tuple[str, bool], Needle] = {}

        def add(form: str, text: str, fold: bool) -> None:
            key = (text.lower() if fold else text, fold)
            found.setdefault(key, Needle(self.name, form, key[0], fold))

        add("raw", self.value, True)
        for form, encoded in (("url", quote(self.value, safe="")), ("url+", quote_plus(self.value)),
                              ("hex", binascii.hexlify(raw).decode())):
            add(form, encoded, True)
        for window in windows(self.value, WINDOW):
            add("window", window, True)
            add("url-window", quote(window, safe=""), True)
        for window in windows(binascii.hexlify(raw).decode(), 2 * WINDOW):
            add("hex-window", window, True)
        for form, encode in (("base64", base64.b64encode), ("base64url", base64.urlsafe_b64encode)):
            for core in base64_cores(raw, encode):
                add(form, core, False)
                for window in windows(core, B64_WINDOW):
                    add(f"{form}-window", window, False)
        return list(found.values())


def windows(text: str, size: int) -> list[str]:
    return [text[i:i + size] for i in range(len(text) - size + 1)] if len(text) >= size else [text]


def base64_cores(raw: bytes, encode: Callable[[bytes], bytes]) -> list[str]:
    """The part of the base64 of ``raw`` that does not depend on its neighbours, for each byte alignment.

    Embedded at offset ``shift`` (mod 3) in a longer byte string, ``raw`` is encoded by the 4-character
    groups that hold only its own bytes: those are the same whatever surrounds it.
    """
    cores = []
    for shift in range(3):
        encoded = encode(b"\0" * shift + raw).decode()
        first_group = -(-shift // 3)
        end_group = (shift + len(raw)) // 3
        cores.append(encoded[first_group * 4:end_group * 4])
    return cores


# ---------------------------------------------------------------------------------------- artifacts


@dataclass(frozen=True, slots=True)
class Artifact:
    kind: str
    name: str
    data: bytes


@dataclass(frozen=True, slots=True)
class Hit:
    needle: Needle
    artifact: Artifact
    offset: int

    def describe(self) -> str:
        # The context is shown with the match masked, so a failure report does not spread the key further.
        text = self.artifact.data.decode("latin-1")
        start = max(self.offset - 60, 0)
        end = self.offset + len(self.needle.text)
        context = text[start:self.offset] + "<" + "#" * len(self.needle.text) + ">" + text[end:end + 60]
        return (f"{self.needle.canary} ({self.needle.form}) in {self.artifact.kind}:{self.artifact.name} "
                f"at {self.offset}: {context!r}")


@dataclass
class ScanReport:
    hits: list[Hit]
    artifacts: int
    bytes_scanned: int
    needles: int


def scan(artifacts: Iterable[Artifact], canaries: Iterable[Canary],
         exempt: Callable[[Canary, Artifact], bool] | None = None) -> ScanReport:
    """Every needle of every canary in every artifact (``exempt`` skips a pair on purpose)."""
    canary_list = list(canaries)
    needles = {c.name: c.needles() for c in canary_list}
    hits: list[Hit] = []
    count = size = 0
    for artifact in artifacts:
        count += 1
        size += len(artifact.data)
        text = artifact.data.decode("latin-1")  # byte for byte: an ASCII key matches in any ASCII-compatible text
        folded = text.lower()
        for canary in canary_list:
            if exempt is not None and exempt(canary, artifact):
                continue
            for needle in needles[canary.name]:
                offset = (folded if needle.fold else text).find(needle.text)
                if offset >= 0:
                    hits.append(Hit(needle, artifact, offset))
    return ScanReport(hits, count, size, sum(len(n) for n in needles.values()))


def render(value: Any) -> str:
    """Headers and properties as text, bytes decoded, nested tables (x-death) included."""
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, dict):
        return "{" + ", ".join(f"{render(k)}: {render(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(render(v) for v in value) + "]"
    return str(value)


# ------------------------------------------------------------------------------------- captured messages


def captured_artifacts(tap: BrokerTap) -> list[Artifact]:
    """Each message the tap holds as two artifacts: its body, and every property and header."""
    found = []
    for kind in KINDS:
        for index, captured in enumerate(tap.of(kind)):
            name = f"{index}:{captured.message_id or '-'}"
            meta = {k: v for k, v in captured.properties.items() if k != "body_size"}
            found += [Artifact(kind, f"{name}/body", captured.body),
                      Artifact(kind, f"{name}/meta", render(meta).encode())]
    return found


async def publish(settings: Settings, jobs: list[tuple[str, bytes]], *, reply_to: str | None = None) -> None:
    """Jobs as a publisher sends them: ``message_id`` is the job id, persistent, confirmed."""
    names = Topology(settings.topology_prefix)
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(names.jobs_exchange)
        for job_id, body in jobs:
            await exchange.publish(
                aio_pika.Message(body, content_type="application/json", message_id=job_id, reply_to=reply_to,
                                 correlation_id=f"corr-{job_id}", delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
                routing_key=JOB_ROUTING_KEY,
            )


async def http_artifacts(port: int, label: str) -> list[Artifact]:
    """The worker's /metrics, /livez and /readyz, status line and headers included."""
    found = []
    async with httpx.AsyncClient(timeout=5) as client:
        for path in ("/metrics", "/livez", "/readyz"):
            response = await client.get(f"http://127.0.0.1:{port}{path}")
            head = f"HTTP {response.status_code}\n" + "".join(f"{k}: {v}\n" for k, v in response.headers.items())
            found.append(Artifact("metrics" if path == "/metrics" else "health", f"{label}{path}",
                                  head.encode() + b"\n" + response.content))
    return found


def cmdline_artifact(pid: int, label: str) -> Artifact:
    return Artifact("cmdline", f"{label}/proc/{pid}/cmdline", Path(f"/proc/{pid}/cmdline").read_bytes())


def log_artifact(path: Path, label: str) -> Artifact:
    return Artifact("logs", label, path.read_bytes())


# ------------------------------------------------------------------------------- an echoing provider


class EchoingProvider:
    """A careless third-party endpoint: every answer is an error whose message repeats the key it was sent.

    A stand-in for a provider (like the simulator), not for any of our components. Model names choose
    the status: ``echo-auth`` 401, ``echo-error`` 500 (retried), ``echo-invalid`` 422 (FastAPI-style
    detail list, Mistral's shape). Keys it saw are kept as fingerprints, never as keys.
    """

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.port = 0
        self.seen: list[tuple[str, str, str | None]] = []
        """(protocol, model, key fingerprint) per request."""

    def base_url(self, protocol: str) -> str:
        return f"http://127.0.0.1:{self.port}/{protocol}" + ("/v1" if protocol == "openai" else "")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/openai/v1/chat/completions", self._answer("openai"))
        app.router.add_post("/mistral/v1/chat/completions", self._answer("mistral"))
        app.router.add_post("/anthropic/v1/messages", self._answer("anthropic"))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def _answer(self, protocol: str) -> Callable[[web.Request], Awaitable[web.Response]]:
        async def handle(request: web.Request) -> web.Response:
            body = await request.json()
            model = str(body.get("model"))
            if protocol == "anthropic":
                key = request.headers.get("x-api-key", "")
            else:
                key = request.headers.get("authorization", "").removeprefix("Bearer ")
            self.seen.append((protocol, model, key_fingerprint(key)))
            status = {"echo-auth": 401, "echo-error": 500, "echo-invalid": 422}.get(model, 400)
            text = (f"Incorrect API key provided: {key}. Sent as Authorization: Bearer {key}; "
                    f"api_key={key}; x-api-key: {key}")
            payload: dict[str, Any]
            if protocol == "openai":
                payload = {"error": {"message": text, "type": "invalid_request_error", "code": "invalid_api_key"}}
            elif protocol == "anthropic":
                payload = {"type": "error", "error": {"type": "authentication_error", "message": text}}
            elif status == 422:
                payload = {"detail": [{"type": "value_error", "loc": ["body", "model"], "msg": f"unknown key {key}",
                                       "input": key}]}
            else:
                payload = {"object": "error", "message": text, "type": "unauthorized", "code": key}
            return web.json_response(payload, status=status)

        return handle
