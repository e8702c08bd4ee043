"""The consumption page: static files shipped in the package (``worker/aggregator/web/``), and the security
headers of every answer.

The page is plain HTML, CSS and one script, no build step and nothing fetched from elsewhere; its data come
from the same ``/v1/...`` endpoints as any client's, with the token the page asks for once per tab.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ASSETS = {
    "/": ("index.html", "text/html"),
    "/app.js": ("app.js", "text/javascript"),
    "/app.css": ("app.css", "text/css"),
}

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

_COMMON_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def _read(name: str) -> bytes:
    return files("worker.aggregator").joinpath("web", name).read_bytes()


def add_page_routes(app: web.Application, *, tokens_required: bool) -> None:
    """``GET /`` and its two assets, read once from the package. The page learns from a meta tag whether
    to ask for a token before its first request (so that it makes none bound to fail)."""
    for path, (name, content_type) in _ASSETS.items():
        body = _read(name)
        if name == "index.html":
            body = body.replace(b"{{TOKENS_REQUIRED}}", b"true" if tokens_required else b"false")

        async def serve(_request: web.Request, body: bytes = body, content_type: str = content_type) -> web.Response:
            return web.Response(body=body, content_type=content_type, charset="utf-8")

        app.router.add_get(path, serve)


@web.middleware
async def security_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
    """A CSP without inline script on everything; API answers (workspace data) are never cached."""
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        response = exc
    response.headers.update(_COMMON_HEADERS)
    response.headers["Cache-Control"] = "no-cache" if request.path in _ASSETS else "no-store"
    if isinstance(response, web.HTTPException):
        raise response
    return response
