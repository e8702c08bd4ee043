"""The simulator's HTTP server: one aiohttp app with the four protocol routes and the ``/_sim`` control routes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from schemas.models import Provider
from worker.testing.simulator.answers import Answer, answer
from worker.testing.simulator.behavior import BEHAVIOR_HEADER, OK, Behavior, select_behavior
from worker.testing.simulator.bodies import RENDERERS
from worker.testing.simulator.errors import error_headers, error_payload
from worker.testing.simulator.ledger import (
    AUTH_HEADERS,
    InputShape,
    Ledger,
    LedgerCall,
    SeenRequest,
    key_fingerprint,
)
from worker.testing.simulator.prompt_cache import DEFAULT_TTL_S, PromptCache, request_prefix
from worker.testing.simulator.requests import BadRequest, read_prompt

LEDGER_PATH = "/_sim/ledger"
RESET_PATH = "/_sim/reset"

PATHS: dict[Provider, tuple[str, str]] = {
    # provider: (base_url suffix, path the adapter appends to it)
    Provider.OPENAI: ("/openai/v1", "/chat/completions"),
    Provider.MISTRAL: ("/mistral", "/v1/chat/completions"),
    Provider.ANTHROPIC: ("/anthropic", "/v1/messages"),
    Provider.OLLAMA: ("/ollama", "/api/chat"),
}
_PROTOCOL_BY_PATH: dict[str, Provider] = {prefix + path: protocol for protocol, (prefix, path) in PATHS.items()}


# ------------------------------------------------------------------------------------------ auth


def seen_request(request: web.Request) -> SeenRequest:
    """What the all-requests record keeps of ``request``: no header value, no query string, no body."""
    path = request.path
    protocol = _PROTOCOL_BY_PATH.get(path) if request.method == "POST" else None
    has_auth = any(request.headers.get(name, "").strip() for name in AUTH_HEADERS)
    return SeenRequest(method=request.method, path=path, protocol=protocol, has_auth=has_auth, at=time.time())


def presented_key(protocol: Provider, request: web.Request) -> str | None:
    if protocol is Provider.ANTHROPIC:
        return request.headers.get("x-api-key") or None
    authorization = request.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


# ---------------------------------------------------------------------------------------- server


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=orjson.dumps(body), content_type="application/json", headers=headers
    )


CLIENT_GONE = 499
"""Recorded for a request whose caller disconnected before the answer (nginx's convention); billed all the
same when the answer carried usage, as real providers bill a generation whose client went away."""


class ProviderSimulator:
    def __init__(self, *, latency_s: float = 0.0, cache_ttl_s: float = DEFAULT_TTL_S) -> None:
        self.latency_s = latency_s
        self.prompt_cache = PromptCache(ttl_s=cache_ttl_s)
        """Provider prompt caching (``prompt_cache.py``): a cache per key, model and prefix, with a TTL."""
        self._ledger = Ledger()
        self._flaky_seen: dict[str, int] = {}
        self._counter = 0
        self._runner: web.AppRunner | None = None
        self._port = 0
        self._host = "127.0.0.1"

    # -- lifecycle

    def make_app(self) -> web.Application:
        @web.middleware
        async def record_every_request(request: web.Request, handler: Handler) -> web.StreamResponse:
            # Before the handler: a request on a path no route serves (404/405) is recorded too, and a
            # request whose handler never finishes still shows it arrived.
            self._ledger.record_request(seen_request(request))
            return await handler(request)

        app = web.Application(client_max_size=8 * 1024 * 1024, middlewares=[record_every_request])
        for protocol, (prefix, path) in PATHS.items():
            app.router.add_post(prefix + path, self._protocol_handler(protocol))
        app.router.add_get(LEDGER_PATH, self._ledger_handler)
        app.router.add_post(RESET_PATH, self._reset_handler)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, host, port, backlog=4096, reuse_address=True)
        await site.start()
        self._runner = runner
        self._host = host
        address = runner.addresses[0]  # (host, port, ...): the port actually bound when 0 asked for any
        self._port = int(address[1])

    async def stop(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def port(self) -> int:
        if self._runner is None:
            raise RuntimeError("the simulator is not running")
        return self._port

    @property
    def root_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def base_url(self, provider: Provider) -> str:
        return self.root_url + PATHS[provider][0]

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    def reset(self) -> None:
        self._ledger.reset()
        self._flaky_seen.clear()
        self.prompt_cache.clear()

    # -- handlers

    async def _ledger_handler(self, _request: web.Request) -> web.Response:
        return _json(200, self._ledger.as_json())

    async def _reset_handler(self, _request: web.Request) -> web.Response:
        self.reset()
        return _json(200, {"reset": True})

    def _protocol_handler(self, protocol: Provider) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            # Concurrency per key: a workspace's key, so a test can see a cap on its calls in flight hold.
            fingerprint = key_fingerprint(presented_key(protocol, request))
            self._ledger.call_started(fingerprint)
            try:
                return await self._serve(protocol, request)
            finally:
                self._ledger.call_ended(fingerprint)

        return handle

    async def _serve(self, protocol: Provider, request: web.Request) -> web.Response:
        key = presented_key(protocol, request)
        started = time.time()
        try:
            parsed = orjson.loads(await request.read())
            if not isinstance(parsed, dict):
                raise BadRequest("the request body must be a JSON object")
            prompt = read_prompt(protocol, parsed)
            behavior = select_behavior(request.headers.get(BEHAVIOR_HEADER), prompt.model)
            answer_id = self._next_id()
            ans = answer(protocol, prompt, behavior, answer_id)
            prefix = request_prefix(protocol, parsed, prompt)
        except (orjson.JSONDecodeError, BadRequest) as exc:
            detail = str(exc) if isinstance(exc, BadRequest) else "the request body is not valid JSON"
            return await self._fail(protocol, "bad_request", "", OK, key, started, detail)

        problem = self._auth_problem(protocol, request, key)
        if problem is not None:
            return await self._fail(protocol, problem[0], prompt.model, behavior, key, started, problem[1])
        if behavior.kind in ("auth", "rate", "quota", "overloaded", "error"):
            return await self._fail(protocol, behavior.kind, prompt.model, behavior, key, started)
        if behavior.kind == "flaky" and self._flaky_fails(prompt.last_user, behavior.arg):
            return await self._fail(protocol, "error", prompt.model, behavior, key, started)

        extra_s = behavior.arg / 1000.0 if behavior.kind == "slow" else 0.0
        await self._delay(extra_s)
        # After the wait, as a provider serves it: a call that arrived later may have written the entry.
        use = self.prompt_cache.use(protocol, key_fingerprint(key), prompt.model, prefix, time.monotonic())
        if use.read or use.write:
            ans = answer(protocol, prompt, behavior, answer_id, (use.read, use.write))
        with_usage = behavior.kind != "nousage"
        body = RENDERERS[protocol](answer_id, prompt.model, ans, with_usage)
        if request.transport is None or request.transport.is_closing():
            # The caller hung up (a killed worker, a cut connection). As a real provider does, the call is
            # billed all the same: the tokens were generated; only the answer is lost.
            self._record(protocol, prompt.model, behavior, CLIENT_GONE, key, started, ans, billed=with_usage)
            return _json(CLIENT_GONE, {})
        self._record(protocol, prompt.model, behavior, 200, key, started, ans, billed=with_usage)
        return _json(200, body)

    @staticmethod
    def _auth_problem(protocol: Provider, request: web.Request, key: str | None) -> tuple[str, str] | None:
        if protocol is Provider.OLLAMA:
            return None
        if key is None:
            return "missing_key", ""
        if protocol is Provider.ANTHROPIC and not request.headers.get("anthropic-version"):
            return "bad_request", "anthropic-version: header is required"
        return None

    def _flaky_fails(self, content: str, failures: int) -> bool:
        seen = self._flaky_seen.get(content, 0)
        self._flaky_seen[content] = seen + 1
        return seen < failures

    async def _fail(
        self,
        protocol: Provider,
        kind: str,
        model: str,
        behavior: Behavior,
        key: str | None,
        started: float,
        detail: str | None = None,
    ) -> web.Response:
        await self._delay(0.0)
        status, body = error_payload(protocol, kind, detail or None)
        self._record(protocol, model, behavior, status, key, started)
        return _json(status, body, error_headers(kind))

    async def _delay(self, extra_s: float) -> None:
        wait = max(self.latency_s, 0.0) + extra_s
        if wait > 0:
            await asyncio.sleep(wait)

    def _next_id(self) -> str:
        self._counter += 1
        return f"sim{self._counter:010d}"

    def _record(
        self,
        protocol: Provider,
        model: str,
        behavior: Behavior,
        status: int,
        key: str | None,
        started: float,
        ans: Answer | None = None,
        *,
        billed: bool = False,
    ) -> None:
        self._ledger.record(
            LedgerCall(
                protocol=protocol,
                model=model,
                behavior=behavior.label,
                status=status,
                usage=ans.usage if ans is not None and billed else None,
                key_fingerprint=key_fingerprint(key),
                at=started,
                text=ans.text if ans is not None else None,
                tool_calls=ans.tool_calls if ans is not None else (),
                input_shape=ans.shape if ans is not None else InputShape(),
            )
        )


async def serve_forever(host: str, port: int, latency_s: float) -> None:
    """Run the simulator until cancelled (``byok simulate-provider``)."""
    simulator = ProviderSimulator(latency_s=latency_s)
    await simulator.start(host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await simulator.stop()
