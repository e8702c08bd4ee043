"""A local provider simulator: one aiohttp server that speaks OpenAI, Mistral, Anthropic and Ollama.

It is the test double for real providers, the demo target and the benchmark target. Answers are
deterministic so a test can predict them:

- reply text: ``"sim: " + <content of the last user message, first 40 characters>``
  (cut to ``max_tokens`` words, ``finish_reason`` length, when the request asks for fewer);
- prompt tokens ``P``: whitespace-separated words of the system prompt and every message, at least 1;
- output tokens ``O``: words of the reply.

Behaviour per request, from the header ``x-sim-behavior`` (wins) or a model name ``sim-<behaviour>``:
``ok`` (default), ``auth``, ``rate``, ``quota``, ``overloaded``, ``error``, ``slow-<ms>``, ``cached``,
``reasoning``, ``cached-reasoning``, ``nousage``, ``flaky-<n>`` (see ``_SIMPLE_BEHAVIOURS``). With
``cached``, ``P // 2`` prompt tokens are cache reads (and for Anthropic ``P // 4`` more are cache writes);
with ``reasoning`` (OpenAI only) ``REASONING_TOKENS`` reasoning tokens are added inside
``completion_tokens``; ``cached-reasoning`` does both in one answer (Ollama ignores all three).

Every request on a protocol route lands in the ``Ledger`` (``GET /_sim/ledger``, ``POST /_sim/reset``) as a
call, with a fingerprint of the key it carried, never the key. Only 2xx answers that carried usage are
billed. Every HTTP request the server receives, on any path (protocol routes, the ``/_sim`` control
routes, and paths it does not serve at all), is also recorded in ``Ledger.requests()``: its method, path
(never the query string) and whether it carried a credential header (never the header's value).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from schemas.models import TOKEN_BUCKETS, Provider, TokenCounts

BEHAVIOR_HEADER = "x-sim-behavior"
MODEL_PREFIX = "sim-"
REPLY_PREFIX = "sim: "
REPLY_CHARS = 40
REASONING_TOKENS = 16
RETRY_AFTER_S = 1
LEDGER_PATH = "/_sim/ledger"
RESET_PATH = "/_sim/reset"

_SIMPLE_BEHAVIOURS = frozenset(
    {"ok", "auth", "rate", "quota", "overloaded", "error", "cached", "reasoning", "cached-reasoning", "nousage"}
)
_CACHED = frozenset({"cached", "cached-reasoning"})
_REASONING = frozenset({"reasoning", "cached-reasoning"})
_NUMBERED_BEHAVIOURS = ("slow", "flaky")

_PATHS: dict[Provider, tuple[str, str]] = {
    # provider: (base_url suffix, path the adapter appends to it)
    Provider.OPENAI: ("/openai/v1", "/chat/completions"),
    Provider.MISTRAL: ("/mistral", "/v1/chat/completions"),
    Provider.ANTHROPIC: ("/anthropic", "/v1/messages"),
    Provider.OLLAMA: ("/ollama", "/api/chat"),
}
_PROTOCOL_BY_PATH: dict[str, Provider] = {prefix + path: protocol for protocol, (prefix, path) in _PATHS.items()}


# --------------------------------------------------------------------------------------- behaviour


@dataclass(frozen=True, slots=True)
class Behavior:
    kind: str
    arg: int = 0

    @property
    def label(self) -> str:
        return f"{self.kind}-{self.arg}" if self.kind in _NUMBERED_BEHAVIOURS else self.kind


OK = Behavior("ok")


def parse_behavior(value: str | None) -> Behavior | None:
    """``auth``, ``sim-auth``, ``slow-1500``, ``sim-flaky-2``… or None when it names no behaviour."""
    if not value:
        return None
    name = value.strip().lower().removeprefix(MODEL_PREFIX)
    if name in _SIMPLE_BEHAVIOURS:
        return Behavior(name)
    for kind in _NUMBERED_BEHAVIOURS:
        number = name.removeprefix(f"{kind}-")
        if number != name and number.isdigit():
            return Behavior(kind, int(number))
    return None


def select_behavior(header: str | None, model: str) -> Behavior:
    from_header = parse_behavior(header)
    if from_header is not None:
        return from_header
    if model.lower().startswith(MODEL_PREFIX):
        return parse_behavior(model) or OK
    return OK


# ------------------------------------------------------------------------------------------ ledger


def key_fingerprint(key: str | None) -> str | None:
    return hashlib.sha256(key.encode()).hexdigest()[:12] if key else None


@dataclass(frozen=True, slots=True)
class LedgerCall:
    protocol: Provider
    model: str
    behavior: str
    status: int
    usage: TokenCounts | None
    """Billed buckets; None when the call was not billed (non-2xx, or 2xx without usage)."""
    key_fingerprint: str | None
    at: float

    @property
    def billed(self) -> bool:
        return self.usage is not None

    def as_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol.value,
            "model": self.model,
            "behavior": self.behavior,
            "status": self.status,
            "billed": self.billed,
            "usage": self.usage.model_dump() if self.usage is not None else None,
            "key_fingerprint": self.key_fingerprint,
            "at": self.at,
        }


AUTH_HEADERS = ("authorization", "x-api-key")
"""The credential headers of the four protocols (bearer key; Anthropic's ``x-api-key``)."""


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """One HTTP request as the server received it, whatever its path: never a header value or the query."""

    method: str
    path: str
    protocol: Provider | None
    """The protocol route it matched (method and path), or None: a control route or a path not served."""
    has_auth: bool
    """Whether it carried a non-empty credential header (one of ``AUTH_HEADERS``)."""
    at: float

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "protocol": self.protocol.value if self.protocol is not None else None,
            "has_auth": self.has_auth,
            "at": self.at,
        }


@dataclass(slots=True)
class Ledger:
    calls: list[LedgerCall] = field(default_factory=list)
    """Requests on the protocol routes, answered (billed or not)."""
    seen: list[SeenRequest] = field(default_factory=list)
    """Every HTTP request received, on any path, in arrival order."""

    def record(self, call: LedgerCall) -> None:
        self.calls.append(call)

    def record_request(self, request: SeenRequest) -> None:
        self.seen.append(request)

    def reset(self) -> None:
        self.calls.clear()
        self.seen.clear()

    def requests(self) -> list[SeenRequest]:
        """Every request the server received since the last reset, on any path (a copy)."""
        return list(self.seen)

    def billed(self) -> list[LedgerCall]:
        return [call for call in self.calls if call.usage is not None]

    def totals(self) -> dict[str, int]:
        """``requests`` = billed calls, and the sum of each of the five buckets over them."""
        totals = dict.fromkeys(TOKEN_BUCKETS, 0)
        billed = self.billed()
        for call in billed:
            usage = call.usage
            assert usage is not None
            for name in TOKEN_BUCKETS:
                totals[name] += getattr(usage, name)
        return {"requests": len(billed), **totals}

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": [call.as_json() for call in self.calls],
            "totals": self.totals(),
            "requests": [seen.as_json() for seen in self.seen],
        }


# ------------------------------------------------------------------------------- request reading


class BadRequest(Exception):
    """The request body is not what the protocol expects (answered 400/422 in the provider's shape)."""


@dataclass(frozen=True, slots=True)
class Prompt:
    model: str
    texts: tuple[str, ...]
    last_user: str
    max_tokens: int | None


def _text(content: Any) -> str:
    """A message's text: a plain string, or the ``text`` of each content block."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    if content is None:
        return ""
    raise BadRequest("message content must be a string or a list of content blocks")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("messages: a non-empty list of message objects is required")
    return messages


def _optional_int(value: Any, name: str) -> int | None:
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"{name}: must be a non-negative integer")
    return value


def read_prompt(protocol: Provider, body: dict[str, Any]) -> Prompt:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("model: a model name is required")
    messages = _messages(body)
    texts = [_text(m.get("content")) for m in messages]
    if protocol is Provider.ANTHROPIC:
        texts.insert(0, _text(body.get("system")))
        max_tokens = _optional_int(body.get("max_tokens"), "max_tokens")
        if max_tokens is None:
            raise BadRequest("max_tokens: Field required")
    elif protocol is Provider.OLLAMA:
        options = body.get("options")
        if not isinstance(options, dict):
            options = {}
        max_tokens = _optional_int(options.get("num_predict"), "options.num_predict")
    else:
        max_tokens = _optional_int(body.get("max_completion_tokens", body.get("max_tokens")), "max_tokens")
    message_texts = texts[-len(messages) :]
    users = [text for m, text in zip(messages, message_texts, strict=True) if m.get("role") == "user"]
    last_user = users[-1] if users else ""
    return Prompt(model=model, texts=tuple(texts), last_user=last_user, max_tokens=max_tokens)


# --------------------------------------------------------------------------------- deterministic answer


@dataclass(frozen=True, slots=True)
class Answer:
    text: str
    finish: str  # "stop" or "length" (each renderer maps it to the provider's own word)
    usage: TokenCounts
    """The five buckets: what this answer bills."""


def words(text: str) -> int:
    return len(text.split())


def answer(protocol: Provider, prompt: Prompt, behavior: Behavior) -> Answer:
    reply = REPLY_PREFIX + prompt.last_user[:REPLY_CHARS]
    finish = "stop"
    if prompt.max_tokens is not None and words(reply) > prompt.max_tokens:
        reply, finish = " ".join(reply.split()[: prompt.max_tokens]), "length"
    total_in = max(1, sum(words(t) for t in prompt.texts))
    cache_read = cache_write = reasoning = 0
    if behavior.kind in _CACHED and protocol is not Provider.OLLAMA:
        cache_read = total_in // 2
        cache_write = total_in // 4 if protocol is Provider.ANTHROPIC else 0
    if behavior.kind in _REASONING and protocol is Provider.OPENAI:
        reasoning = REASONING_TOKENS
    usage = TokenCounts(
        input_tokens=total_in - cache_read - cache_write,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        output_tokens=words(reply),
        reasoning_tokens=reasoning,
    )
    return Answer(text=reply, finish=finish, usage=usage)


# ------------------------------------------------------------------------------ response bodies


def _openai_usage(usage: TokenCounts) -> dict[str, Any]:
    prompt = usage.input_tokens + usage.cache_read_tokens + usage.cache_write_tokens
    completion = usage.output_tokens + usage.reasoning_tokens
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": usage.cache_read_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": usage.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _mistral_usage(usage: TokenCounts) -> dict[str, Any]:
    prompt = usage.input_tokens + usage.cache_read_tokens
    completion = usage.output_tokens
    raw: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if usage.cache_read_tokens:
        raw["prompt_tokens_details"] = {"cached_tokens": usage.cache_read_tokens}
    return raw


def openai_body(call_id: str, model: str, ans: Answer, with_usage: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"chatcmpl-{call_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ans.text, "refusal": None, "annotations": []},
                "logprobs": None,
                "finish_reason": ans.finish,
            }
        ],
        "service_tier": "default",
        "system_fingerprint": "fp_sim",
    }
    if with_usage:
        body["usage"] = _openai_usage(ans.usage)
    return body


def mistral_body(call_id: str, model: str, ans: Answer, with_usage: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": call_id,
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": ans.text, "tool_calls": None, "prefix": False},
                "finish_reason": ans.finish,
            }
        ],
    }
    if with_usage:
        body["usage"] = _mistral_usage(ans.usage)
    return body


def anthropic_body(call_id: str, model: str, ans: Answer, with_usage: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": f"msg_{call_id}",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": ans.text}],
        "model": model,
        "stop_reason": "end_turn" if ans.finish == "stop" else "max_tokens",
        "stop_sequence": None,
    }
    if with_usage:
        usage = ans.usage
        body["usage"] = {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens,
            "cache_read_input_tokens": usage.cache_read_tokens,
            "cache_creation": {
                "ephemeral_5m_input_tokens": usage.cache_write_tokens,
                "ephemeral_1h_input_tokens": 0,
            },
            "service_tier": "standard",
        }
    return body


def ollama_body(_call_id: str, model: str, ans: Answer, with_usage: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "message": {"role": "assistant", "content": ans.text},
        "done": True,
        "done_reason": ans.finish,
    }
    if with_usage:
        prompt_tokens = ans.usage.input_tokens
        # Durations in nanoseconds, as Ollama reports them: a fixed 1 ms per token.
        body.update(
            {
                "total_duration": (prompt_tokens + ans.usage.output_tokens) * 1_000_000 + 500_000,
                "load_duration": 500_000,
                "prompt_eval_count": prompt_tokens,
                "prompt_eval_duration": prompt_tokens * 1_000_000,
                "eval_count": ans.usage.output_tokens,
                "eval_duration": ans.usage.output_tokens * 1_000_000,
            }
        )
    return body


_RENDERERS: dict[Provider, Callable[[str, str, Answer, bool], dict[str, Any]]] = {
    Provider.OPENAI: openai_body,
    Provider.MISTRAL: mistral_body,
    Provider.ANTHROPIC: anthropic_body,
    Provider.OLLAMA: ollama_body,
}


# ----------------------------------------------------------------------------------------- errors

# kind -> (status, OpenAI error.type, OpenAI error.code, message)
_OPENAI_ERRORS: dict[str, tuple[int, str, str | None, str]] = {
    "auth": (
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
    ),
    "missing_key": (
        401,
        "invalid_request_error",
        None,
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth.",
    ),
    "rate": (
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests per min (RPM). Please try again in 1s.",
    ),
    "quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "overloaded": (503, "server_error", None, "The engine is currently overloaded, please try again later."),
    "error": (
        500,
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "bad_request": (400, "invalid_request_error", None, "Invalid request."),
}

# kind -> (status, Anthropic error.type, message). Anthropic reports an empty credit balance as a 400.
_ANTHROPIC_ERRORS: dict[str, tuple[int, str, str]] = {
    "auth": (401, "authentication_error", "invalid x-api-key"),
    "missing_key": (401, "authentication_error", "x-api-key header is required"),
    "rate": (
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per minute.",
    ),
    "quota": (
        400,
        "invalid_request_error",
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits.",
    ),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "error": (500, "api_error", "Internal server error"),
    "bad_request": (400, "invalid_request_error", "Invalid request."),
}

# kind -> (status, Mistral type, code, message)
_MISTRAL_ERRORS: dict[str, tuple[int, str, str | None, str]] = {
    "rate": (429, "rate_limited", "1300", "Requests rate limit exceeded"),
    "quota": (
        429,
        "insufficient_quota",
        "3505",
        "Monthly usage limit exceeded. Raise your limit in the billing settings of your workspace.",
    ),
    "overloaded": (503, "service_unavailable", "3000", "Service unavailable, please retry later."),
    "error": (500, "internal_server_error", "3000", "Internal server error"),
    "bad_request": (422, "invalid_request_error", None, "Invalid request."),
}

_OLLAMA_ERRORS: dict[str, tuple[int, str]] = {
    "auth": (401, "unauthorized"),
    "missing_key": (401, "unauthorized"),
    "rate": (429, "too many requests, please retry later"),
    "quota": (429, "you have reached your usage limit, upgrade for higher limits"),
    "overloaded": (503, "server busy, please try again.  maximum pending requests exceeded"),
    "error": (500, "an unknown error was encountered while running the model"),
    "bad_request": (400, "invalid request"),
}


def error_payload(protocol: Provider, kind: str, detail: str | None = None) -> tuple[int, dict[str, Any]]:
    """The provider's error status and body for ``kind``: a behaviour, ``missing_key`` or ``bad_request``."""
    if protocol is Provider.OPENAI:
        status, etype, code, message = _OPENAI_ERRORS[kind]
        return status, {"error": {"message": detail or message, "type": etype, "param": None, "code": code}}
    if protocol is Provider.ANTHROPIC:
        status, etype, message = _ANTHROPIC_ERRORS[kind]
        return status, {
            "type": "error",
            "error": {"type": etype, "message": detail or message},
            "request_id": "req_sim",
        }
    if protocol is Provider.MISTRAL:
        if kind in ("auth", "missing_key"):
            return 401, {"message": "Unauthorized", "request_id": "sim"}
        status, etype, code, message = _MISTRAL_ERRORS[kind]
        return status, {
            "object": "error",
            "message": detail or message,
            "type": etype,
            "param": None,
            "code": code,
        }
    status, message = _OLLAMA_ERRORS[kind]
    return status, {"error": detail or message}


def _error_headers(kind: str) -> dict[str, str]:
    if kind == "rate":
        return {"retry-after": str(RETRY_AFTER_S), "retry-after-ms": str(RETRY_AFTER_S * 1000)}
    return {}


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
"""Recorded for a request whose caller disconnected before the answer (nginx's convention)."""


class ProviderSimulator:
    def __init__(self, *, latency_s: float = 0.0) -> None:
        self.latency_s = latency_s
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
        for protocol, (prefix, path) in _PATHS.items():
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
        return self.root_url + _PATHS[provider][0]

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    def reset(self) -> None:
        self._ledger.reset()
        self._flaky_seen.clear()

    # -- handlers

    async def _ledger_handler(self, _request: web.Request) -> web.Response:
        return _json(200, self._ledger.as_json())

    async def _reset_handler(self, _request: web.Request) -> web.Response:
        self.reset()
        return _json(200, {"reset": True})

    def _protocol_handler(self, protocol: Provider) -> Handler:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(protocol, request)

        return handle

    async def _serve(self, protocol: Provider, request: web.Request) -> web.Response:
        key = presented_key(protocol, request)
        started = time.time()
        try:
            parsed = orjson.loads(await request.read())
            if not isinstance(parsed, dict):
                raise BadRequest("the request body must be a JSON object")
            prompt = read_prompt(protocol, parsed)
        except (orjson.JSONDecodeError, BadRequest) as exc:
            detail = str(exc) if isinstance(exc, BadRequest) else "the request body is not valid JSON"
            return await self._fail(protocol, "bad_request", "", OK, key, started, detail)
        behavior = select_behavior(request.headers.get(BEHAVIOR_HEADER), prompt.model)

        problem = self._auth_problem(protocol, request, key)
        if problem is not None:
            return await self._fail(protocol, problem[0], prompt.model, behavior, key, started, problem[1])
        if behavior.kind in ("auth", "rate", "quota", "overloaded", "error"):
            return await self._fail(protocol, behavior.kind, prompt.model, behavior, key, started)
        if behavior.kind == "flaky" and self._flaky_fails(prompt.last_user, behavior.arg):
            return await self._fail(protocol, "error", prompt.model, behavior, key, started)

        extra_s = behavior.arg / 1000.0 if behavior.kind == "slow" else 0.0
        await self._delay(extra_s)
        ans = answer(protocol, prompt, behavior)
        with_usage = behavior.kind != "nousage"
        body = _RENDERERS[protocol](self._next_id(), prompt.model, ans, with_usage)
        if request.transport is None or request.transport.is_closing():
            # The caller hung up (a killed worker): nothing was delivered, so nothing is billed.
            self._record(protocol, prompt.model, behavior, CLIENT_GONE, None, key, started)
            return _json(CLIENT_GONE, {})
        self._record(protocol, prompt.model, behavior, 200, ans.usage if with_usage else None, key, started)
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
        self._record(protocol, model, behavior, status, None, key, started)
        return _json(status, body, _error_headers(kind))

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
        usage: TokenCounts | None,
        key: str | None,
        started: float,
    ) -> None:
        self._ledger.record(
            LedgerCall(
                protocol=protocol,
                model=model,
                behavior=behavior.label,
                status=status,
                usage=usage,
                key_fingerprint=key_fingerprint(key),
                at=started,
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
