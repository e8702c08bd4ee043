"""Who may read what on the aggregator's HTTP API: bearer tokens scoped to a workspace or to ``*``.

- ``/v1/...`` needs ``Authorization: Bearer <token>`` when tokens are configured: missing or unknown is 401
  with ``WWW-Authenticate: Bearer``; a token scoped to another workspace gets the same 404 as a path that
  does not exist, so it learns nothing of other workspaces, not even that they exist.
- The page's static files, ``/healthz``, ``/metrics`` and ``/openapi.json`` hold no workspace data and need
  no token.
- Without tokens (``BYOK_API_TOKENS_FILE`` unset) every request is let through: the settings allow that only
  on a loopback address unless ``BYOK_API_ALLOW_UNAUTHENTICATED=true``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Middleware

from worker.aggregator.tokens import ALL_WORKSPACES, TokenRegistry, may_read

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

PROTECTED_PREFIX = "/v1/"
REALM = 'Bearer realm="byok"'

NOT_FOUND_BODY = {"error": "not_found", "message": "no such resource"}


def _json(data: Any, status: int, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json", headers=headers)


def not_found() -> web.Response:
    return _json(NOT_FOUND_BODY, 404)


def _unauthorized(message: str, challenge: str) -> web.Response:
    return _json({"error": "unauthorized", "message": message}, 401, {"WWW-Authenticate": challenge})


def bearer_token(request: web.Request) -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def request_scope(request: web.Request, tokens: TokenRegistry | None) -> str | None:
    """The scope of the request's token: ``*`` without tokens configured, None for no or an unknown token."""
    if tokens is None:
        return ALL_WORKSPACES
    token = bearer_token(request)
    return None if token is None else tokens.scope_of(token)


def auth_middleware(tokens: TokenRegistry | None) -> Middleware:
    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(PROTECTED_PREFIX):
            return await handler(request)
        if tokens is None:
            return await handler(request)
        token = bearer_token(request)
        if token is None:
            return _unauthorized("this API needs Authorization: Bearer <token>", REALM)
        scope = tokens.scope_of(token)
        if scope is None:
            return _unauthorized("the token is not valid", f'{REALM}, error="invalid_token"')
        workspace = request.match_info.get("workspace_id")
        if workspace is not None and not may_read(scope, workspace):
            return not_found()
        return await handler(request)

    return authenticate
