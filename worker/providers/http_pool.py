"""One pooled HTTP client per provider endpoint origin, hardened against hostile endpoints.

httpx's own pool stalls with hundreds of slow requests in flight (encode/httpx#3215), so requests go
through aiohttp. In production a provider call goes to an ``AiohttpOrigin`` that does what an
``httpx.AsyncClient`` over ``httpx_aiohttp.AiohttpTransport`` did (same headers, URL, timeouts, pool,
redirects, decoding and exception mapping; ``python -m tests.equivalence`` compares the two) without
httpx's request/response machinery, which cost three times the CPU of the aiohttp call itself
(BENCHMARKS.md). Tests hand in a transport factory (an ``httpx.MockTransport``…) and get an
``HttpxOrigin``, a real ``httpx.AsyncClient`` over it, instead.

What an endpoint may do to the worker is bounded on both paths: the answer is read under a byte cap
(``worker.providers.response_body``), no cookie is kept (a cookie set by one workspace's endpoint must
never travel with another job), and the pool keeps at most ``MAX_ORIGINS`` origins, closing the least
recently used. On the aiohttp path every host name is resolved by ``PublicOnlyResolver``: a connection
goes only to a public address unless BYOK_ALLOWED_HOSTS lists the host (IP literals are checked before,
by ``worker.keys.endpoint.check_destination``; a test transport connects nowhere).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from httpx_aiohttp.transport import map_aiohttp_exceptions
from multidict import CIMultiDict

from worker.keys.endpoint import check_resolved
from worker.providers.response_body import ACCEPT_ENCODING, Answer, read_capped
from worker.settings import PROVIDER_MAX_RESPONSE_BYTES

TransportFactory = Callable[[], httpx.AsyncBaseTransport]

_MAX_CACHED_URLS = 4096
MAX_ORIGINS = 256
"""Provider origins with a live client; one more closes the least recently used (each holds a pool and
its connections: 3,000 origins once held 26 MB)."""
_READ_CHUNK = 64 * 1024


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


class PublicOnlyResolver(AbstractResolver):
    """aiohttp's resolver, refusing (``NonPublicAddress``) a name that resolves to a non-public address.

    The connector connects to exactly the addresses returned here, and asks again for every new
    connection (after its short DNS cache), so a name that changes its answer cannot slip through.
    """

    def __init__(self, allowed_hosts: frozenset[str] | None, resolver: AbstractResolver | None = None) -> None:
        self._allowed_hosts = allowed_hosts
        self._resolver = resolver or aiohttp.DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        resolved = await self._resolver.resolve(host, port, family)
        check_resolved(host.lower().rstrip("."), port, [r["host"] for r in resolved], self._allowed_hosts)
        return resolved

    async def close(self) -> None:
        await self._resolver.close()


class _Origin:
    """Requests in flight, so that an origin evicted from the pool closes only once its last one ends."""

    def __init__(self) -> None:
        self._in_flight = 0
        self._retired = False
        self.closed = False

    async def post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> ProviderResponse:
        self._in_flight += 1
        try:
            return await self._post(url, content=content, headers=headers)
        finally:
            self._in_flight -= 1
            if self._retired and not self._in_flight:
                await self.aclose()

    def retire(self, schedule: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self._retired = True
        if not self._in_flight:
            schedule(self.aclose())

    async def _post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> ProviderResponse:
        raise NotImplementedError

    async def aclose(self) -> None:
        self.closed = True
        await self._close()

    async def _close(self) -> None:
        raise NotImplementedError


class AiohttpOrigin(_Origin):
    """A provider origin's aiohttp session, posting the way ``httpx.AsyncClient`` + ``AiohttpTransport`` did."""

    def __init__(self, *, timeout: httpx.Timeout, limits: httpx.Limits, default_headers: httpx.Headers,
                 ssl_context: ssl.SSLContext, max_response_bytes: int = PROVIDER_MAX_RESPONSE_BYTES,
                 allowed_hosts: frozenset[str] | None = None) -> None:
        super().__init__()
        # What AiohttpTransport.handle_async_request derives from httpx's timeout for every request.
        self._timeout = aiohttp.ClientTimeout(sock_connect=timeout.connect, sock_read=timeout.read,
                                              connect=timeout.pool)
        self._limits = limits
        self._ssl = ssl_context
        self._default_headers = CIMultiDict(default_headers.multi_items())
        self._session: aiohttp.ClientSession | None = None
        self._urls: dict[str, str] = {}
        self._max_response_bytes = max_response_bytes
        self._allowed_hosts = allowed_hosts
        self._resolver: PublicOnlyResolver | None = None

    def _open(self) -> aiohttp.ClientSession:
        # The session AiohttpTransport.get_client builds (the connector needs the running loop).
        max_connections = self._limits.max_connections
        self._resolver = PublicOnlyResolver(self._allowed_hosts)
        connector = aiohttp.TCPConnector(
            keepalive_timeout=self._limits.keepalive_expiry,
            ssl=self._ssl,
            limit=100 if max_connections is None else max_connections,  # aiohttp's default when unset
            resolver=self._resolver,
        )
        # No cookie jar: one origin serves every workspace, and what one job's endpoint sets must not go out
        # with another job.
        self._session = aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.DummyCookieJar())
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

    async def _post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> ProviderResponse:
        session = self._session or self._open()
        merged = self._default_headers.copy()
        merged.update(headers)
        try:
            with map_aiohttp_exceptions():
                async with session.request(
                    "POST", self._url(url), headers=merged, data=content or None, allow_redirects=False,
                    auto_decompress=False, compress=False, timeout=self._timeout,
                ) as response:
                    answer = Answer(response.status, response.headers.getall("content-encoding", ()),
                                    response.content_length)
                    body = await read_capped(answer, response.content.iter_chunked(_READ_CHUNK),
                                             self._max_response_bytes)
                    return ProviderResponse(response.status, response.raw_headers, body)
        except aiohttp.ClientResponseError:
            # A head that is not HTTP (a bad status line, oversized or too many headers): a transport error like
            # any other, without aiohttp's message, which quotes what the endpoint sent.
            raise httpx.RemoteProtocolError("the provider's answer is not valid HTTP") from None

    async def _close(self) -> None:
        session, self._session = self._session, None
        resolver, self._resolver = self._resolver, None
        if session is not None:
            await session.close()
        if resolver is not None:
            await resolver.close()  # a resolver handed in is not the connector's to close


class HttpxOrigin(_Origin):
    """An ``httpx.AsyncClient`` over a test's transport, read and decoded as ``AiohttpOrigin`` reads."""

    def __init__(self, client: httpx.AsyncClient, *, max_response_bytes: int = PROVIDER_MAX_RESPONSE_BYTES) -> None:
        super().__init__()
        self.client = client
        self._max_response_bytes = max_response_bytes

    async def _post(self, url: str, *, content: bytes, headers: Mapping[str, str]) -> ProviderResponse:
        async with self.client.stream("POST", url, content=content, headers=headers) as response:
            if response.is_stream_consumed:
                # Built in memory by the transport (``httpx.Response(200, json=…)``): httpx has decoded it already.
                answer, chunks = Answer(response.status_code, (), None), _once(response.content)
            else:
                length = response.headers.get("content-length", "")
                answer = Answer(response.status_code, response.headers.get_list("content-encoding"),
                                int(length) if length.isdigit() else None)
                chunks = response.aiter_raw()
            body = await read_capped(answer, chunks, self._max_response_bytes)
            return ProviderResponse(response.status_code, tuple(response.headers.raw), body)

    async def _close(self) -> None:
        await self.client.aclose()


async def _once(content: bytes) -> AsyncIterator[bytes]:
    yield content


def no_cookies() -> CookieJar:
    """An httpx cookie jar that keeps nothing (aiohttp's ``DummyCookieJar``)."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


ProviderClient = HttpxOrigin | AiohttpOrigin


class HttpClientPool:
    def __init__(
        self,
        *,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_connections: int,
        transport_factory: TransportFactory | None = None,
        allowed_hosts: frozenset[str] | None = None,
        max_response_bytes: int = PROVIDER_MAX_RESPONSE_BYTES,
        max_origins: int = MAX_ORIGINS,
    ) -> None:
        self._timeout = httpx.Timeout(read_timeout_s, connect=connect_timeout_s, pool=read_timeout_s)
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._transport_factory = transport_factory
        self._allowed_hosts = allowed_hosts
        self._max_response_bytes = max_response_bytes
        self._max_origins = max_origins
        self._clients: OrderedDict[str, ProviderClient] = OrderedDict()
        self._closing: set[asyncio.Task[None]] = set()
        self._default_headers: httpx.Headers | None = None
        self._ssl: ssl.SSLContext | None = None
        if transport_factory is None:
            # Loading the CA bundle stops the event loop for tens of milliseconds: once, at start, for every origin.
            self._ssl = httpx.create_ssl_context(verify=True, cert=None, trust_env=True)

    def __len__(self) -> int:
        return len(self._clients)

    def _headers(self) -> httpx.Headers:
        """The headers an ``httpx.AsyncClient`` sends by default (accept, user-agent…), with the codings we decode."""
        if self._default_headers is None:
            with httpx.Client(transport=httpx.MockTransport(_unused)) as client:
                self._default_headers = client.headers
            self._default_headers["accept-encoding"] = ACCEPT_ENCODING
        return self._default_headers

    def client_for(self, base_url: str) -> ProviderClient:
        parts = urlsplit(base_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        client = self._clients.get(origin)
        if client is not None:
            self._clients.move_to_end(origin)
            return client
        if self._transport_factory is not None:
            client = HttpxOrigin(
                httpx.AsyncClient(
                    transport=self._transport_factory(), timeout=self._timeout, limits=self._limits,
                    follow_redirects=False, cookies=no_cookies(), headers={"accept-encoding": ACCEPT_ENCODING},
                ),
                max_response_bytes=self._max_response_bytes,
            )
        else:
            assert self._ssl is not None
            client = AiohttpOrigin(timeout=self._timeout, limits=self._limits, default_headers=self._headers(),
                                   ssl_context=self._ssl, max_response_bytes=self._max_response_bytes,
                                   allowed_hosts=self._allowed_hosts)
        self._clients[origin] = client
        if len(self._clients) > self._max_origins:
            _, evicted = self._clients.popitem(last=False)
            evicted.retire(self._close_later)
        return client

    def _close_later(self, closing: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(closing)
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), OrderedDict()
        for client in clients:
            await client.aclose()
        await asyncio.gather(*list(self._closing))


def _unused(_request: httpx.Request) -> httpx.Response:
    raise AssertionError("only used for httpx's default headers")


__all__ = [
    "MAX_ORIGINS",
    "AiohttpOrigin",
    "HttpClientPool",
    "HttpxOrigin",
    "ProviderClient",
    "ProviderResponse",
    "PublicOnlyResolver",
    "TransportFactory",
    "no_cookies",
]
