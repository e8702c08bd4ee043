"""A hostile provider endpoint: an aiohttp server on loopback that answers the OpenAI (keyed) and Ollama
(keyless) chat routes the way an attacker's endpoint would. The job's model name picks the attack:

``ok`` a normal answer; ``gzip-bomb`` a small gzip body that inflates to ``bomb_bytes``; ``huge`` an endless
identity body; ``trickle`` one byte at a time, never finishing; ``echo`` the caller's key back in the text,
the finish reason and the usage; ``echo-error`` the key in a 400's error message; ``redirect`` a 307 to the
cloud metadata address; ``error-text`` a 502 whose HTML body carries ``ERROR_MARKER``; ``set-cookie`` a normal
answer that sets a cookie; ``bad-gzip`` a body that claims gzip and is not; ``not-http`` a status line that is
not HTTP, carrying ``ERROR_MARKER``.

Every request is recorded (path, model, whether it carried a Cookie header), never a credential's value.
``scripted_dns`` scripts what a host name resolves to for the worker's provider calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import zlib
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult

from schemas.models import Provider

ERROR_MARKER = "internal-db-host=10.1.2.3 build=hostile"
COOKIE = "hostile-session=set-by-another-workspace"
METADATA_URL = "http://169.254.169.254/latest/meta-data/iam/security-credentials/"
ROUTES = {Provider.OPENAI: ("/openai/v1", "/chat/completions"), Provider.OLLAMA: ("/ollama", "/api/chat")}
MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Seen:
    path: str
    attack: str
    cookie: str | None


def answer(provider: Provider, text: str, finish: str = "stop", **usage: Any) -> dict[str, Any]:
    if provider is Provider.OLLAMA:
        return {"model": "m", "message": {"role": "assistant", "content": text}, "done": True,
                "done_reason": finish, "prompt_eval_count": 1, "eval_count": 1}
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2, **usage}}


def gzip_bomb(provider: Provider, size: int) -> bytes:
    """A JSON answer whose text is ``size`` bytes of "A", gzipped without ever holding it whole."""
    head, tail = orjson.dumps(answer(provider, "\0")).split(b"\\u0000")
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b"A" * MIB
    parts = [packer.compress(head), *(packer.compress(block) for _ in range(size // MIB)), packer.compress(tail)]
    return b"".join([*parts, packer.flush()])


class HostileEndpoint:
    def __init__(self, *, bomb_bytes: int = 64 * MIB, huge_bytes: int = 256 * MIB) -> None:
        self.bomb_bytes = bomb_bytes
        self.huge_bytes = huge_bytes
        self.seen: list[Seen] = []
        self.bytes_sent = 0
        self._bombs: dict[Provider, bytes] = {}
        self._runner: web.AppRunner | None = None
        self.port = 0

    def base_url(self, provider: Provider) -> str:
        return f"http://127.0.0.1:{self.port}{ROUTES[provider][0]}"

    async def start(self) -> None:
        app = web.Application()
        for provider, (prefix, path) in ROUTES.items():
            app.router.add_post(prefix + path, self._handler(provider))
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    def _handler(self, provider: Provider) -> Any:
        async def handle(request: web.Request) -> web.StreamResponse:
            body = orjson.loads(await request.read())
            attack = str(body.get("model", "")).removeprefix("hostile-")
            self.seen.append(Seen(request.path, attack, request.headers.get("cookie")))
            key = request.headers.get("authorization", "").removeprefix("Bearer ")
            return await self._attack(request, provider, attack, key)

        return handle

    async def _attack(self, request: web.Request, provider: Provider, attack: str, key: str) -> web.StreamResponse:
        if attack == "gzip-bomb":
            if provider not in self._bombs:
                self._bombs[provider] = gzip_bomb(provider, self.bomb_bytes)
            return web.Response(body=self._bombs[provider], content_type="application/json",
                                headers={"content-encoding": "gzip"})
        if attack in ("huge", "trickle"):
            return await self._stream(request, attack)
        if attack == "echo":
            return web.json_response(answer(provider, f"you sent {key}", finish=key, echo=key), dumps=_dumps)
        if attack == "echo-error":
            return web.json_response({"error": {"message": f"invalid api key {key} for this org"}}, status=400,
                                     dumps=_dumps)
        if attack == "redirect":
            return web.Response(status=307, text=f"moved to {METADATA_URL}", headers={"location": METADATA_URL})
        if attack == "error-text":
            return web.Response(status=502, text=f"<html><body>{ERROR_MARKER}</body></html>",
                                content_type="text/html")
        if attack == "not-http" and request.transport is not None:
            request.transport.write(f"NOT HTTP {ERROR_MARKER}\r\n\r\n".encode())
            request.transport.close()
            return web.Response()
        if attack == "bad-gzip":
            return web.Response(body=b"this is not gzip at all", content_type="application/json",
                                headers={"content-encoding": "gzip"})
        response = web.json_response(answer(provider, "fine"), dumps=_dumps)
        if attack == "set-cookie":
            name, value = COOKIE.split("=")
            response.set_cookie(name, value, path="/")
        return response

    async def _stream(self, request: web.Request, attack: str) -> web.StreamResponse:
        """An answer that never ends: 64 KiB blocks (``huge``) or one byte every 50 ms (``trickle``)."""
        response = web.StreamResponse(headers={"content-type": "application/json"})
        await response.prepare(request)
        block, pause = (b"A" * 65536, 0.0) if attack == "huge" else (b" ", 0.05)
        with contextlib.suppress(ConnectionError):
            await response.write(b'{"choices": [{"message": {"content": "')
            while self.bytes_sent < self.huge_bytes:
                await response.write(block)
                self.bytes_sent += len(block)
                await asyncio.sleep(pause)
        return response


class FixedResolver(AbstractResolver):
    """A DNS that answers each name from a script, one answer per lookup (the last one repeats)."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self.lookups.append(host)
        script = self.answers[host]
        address = script.pop(0) if len(script) > 1 else script[0]
        return [{"hostname": host, "host": address, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


def scripted_dns(monkeypatch: pytest.MonkeyPatch, answers: dict[str, list[str]]) -> FixedResolver:
    """The DNS of the worker's provider calls, for the test: what a name resolves to is what ``answers`` says."""
    resolver = FixedResolver(answers)
    monkeypatch.setattr(aiohttp, "DefaultResolver", lambda: resolver)
    return resolver


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


__all__ = ["COOKIE", "ERROR_MARKER", "METADATA_URL", "FixedResolver", "HostileEndpoint", "Seen", "scripted_dns"]
