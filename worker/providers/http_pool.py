"""One pooled HTTP client per provider endpoint origin.

httpx's own pool stalls with hundreds of slow requests in flight (encode/httpx#3215), so requests go
through aiohttp. In production a provider call goes to an ``AiohttpOrigin`` that does exactly what an
``httpx.AsyncClient`` over ``httpx_aiohttp.AiohttpTransport`` did (same headers, URL, timeouts, pool,
cookies, redirects, decoding and exception mapping; ``python -m tests.equivalence`` compares the
two) without httpx's request/response machinery, which cost three times the CPU of the aiohttp call
itself (BENCHMARKS.md). Tests hand in a transport factory (an ``httpx.MockTransport``…) and get a real
``httpx.AsyncClient`` over it instead.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

import aiohttp
import httpx
from httpx_aiohttp.transport import map_aiohttp_exceptions
from multidict import CIMultiDict

TransportFactory = Callable[[], httpx.AsyncBaseTransport]

_MAX_CACHED_URLS = 4096


@dataclass(frozen=True, slots=True)
class ProviderResponse:
    """The parts of an ``httpx.Response`` a provider call reads."""

    status_code: int
    raw_headers: tuple[tuple[bytes, bytes], ...]
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    @property
    def headers(self) -> httpx.Headers:
        return httpx.Headers(list(self.raw_headers))


class AiohttpOrigin:
    """A provider origin's aiohttp session, posting the way ``httpx.AsyncClient`` + ``AiohttpTransport`` did."""

    def __init__(self, *, timeout: httpx.Timeout, limits: httpx.Limits, default_headers: httpx.Headers,
                 ssl_context: ssl.SSLContext) -> None:
        # What AiohttpTransport.handle_async_request derives from httpx's timeout for every request.
        self._timeout = aiohttp.ClientTimeout(sock_connect=timeout.connect, sock_read=timeout.read,
                                              connect=timeout.pool)
        self._limits = limits
        self._ssl = ssl_context
        self._default_headers = CIMultiDict(default_headers.multi_items())
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, str] = {}

    def _open(self) -> aiohttp.ClientSession:
        # The session AiohttpTransport.get_client builds (the connector needs the running loop).
        max_connections = self._limits.max_connections
        connector = aiohttp.TCPConnector(
            keepalive_timeout=self._limits.keepalive_expiry,
            ssl=self._ssl,
            limit=100 if max_connections is None else max_connections,  # aiohttp's default when unset
        )
        # Cookies a provider sets (Cloudflare's __cf_bm…) go back to it, as httpx's own cookie jar did; aiohttp's
        # jar needs ``unsafe`` to keep them for an IP-address origin too.
        self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(unsafe=True))
        return self._session

    def _url(self, url: str) -> str:
        """httpx's normalisation of ``url`` (raises ``httpx.InvalidURL`` as it did), cached per URL."""
        normalised = self._urls.get(url)
        if normalised is None:
            normalised = str(httpx.URL(url))
            if len(self._urls) >= _MAX_CACHED_URLS:
                self._urls.clear()
            self._urls[url] = normalised
        return normalised

    async def post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> ProviderResponse:
        session = self._session or self._open()
        merged = self._default_headers.copy()
        merged.update(headers)
        with map_aiohttp_exceptions():
            async with session.request(
                "POST", self._url(url), headers=merged, data=content or None, allow_redirects=False,
                auto_decompress=False, compress=False, timeout=self._timeout,
            ) as response:
                body = await response.read()
                status, raw_headers = response.status, response.raw_headers
                encodings = response.headers.getall("content-encoding", ())
        if any(encoding.strip().lower() != "identity" for encoding in encodings):
            # A compressed answer: decode it exactly as httpx did (same decoders, same DecodingError).
            decoded = httpx.Response(status, headers=list(raw_headers), stream=httpx.ByteStream(body))
            body = await decoded.aread()
        return ProviderResponse(status, raw_headers, body)

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


ProviderClient = httpx.AsyncClient | AiohttpOrigin


class HttpClientPool:
    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
        transport_factory: TransportFactory | None = None,
    ) -> None:
        self._timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s, pool=read_timeout_s)
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._transport_factory = transport_factory
        self._clients: dict[str, ProviderClient] = {}
        self._default_headers: httpx.Headers | None = None
        self._ssl: ssl.SSLContext | None = None
        if transport_factory is None:
            # Loading the CA bundle stops the event loop for tens of milliseconds: once, at start, for every origin.
            self._ssl = httpx.create_ssl_context(verify=True, cert=None, trust_env=True)

    def _headers(self) -> httpx.Headers:
        """The headers an ``httpx.AsyncClient`` sends by default (accept, accept-encoding, user-agent…)."""
        if self._default_headers is None:
            with httpx.Client(transport=httpx.MockTransport(_unused)) as client:
                self._default_headers = client.headers
        return self._default_headers

    def client_for(self, base_url: str) -> ProviderClient:
        parts = urlsplit(base_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        client = self._clients.get(origin)
        if client is None:
            if self._transport_factory is not None:
                client = httpx.AsyncClient(
                    transport=self._transport_factory(), timeout=self._timeout, limits=self._limits,
                    follow_redirects=False,
                )
            else:
                assert self._ssl is not None
                client = AiohttpOrigin(timeout=self._timeout, limits=self._limits, default_headers=self._headers(),
                                       ssl_context=self._ssl)
            self._clients[origin] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()


def _unused(_request: httpx.Request) -> httpx.Response:
    raise AssertionError("only used for httpx's default headers")


__all__ = ["AiohttpOrigin", "HttpClientPool", "ProviderClient", "ProviderResponse", "TransportFactory"]
