"""worker.providers.http_pool against a hostile endpoint: the answer's size, cookies, the addresses it connects
to, and how many origins it keeps. Both paths: aiohttp (production) and httpx over a test transport."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.abc import ResolveResult

from tests.security.hostile_endpoint import FixedResolver, scripted_dns
from tests.unit.providers.test_response_body import MIB, gzip_of_zeros
from worker.keys.endpoint import NonPublicAddress
from worker.providers.http_pool import HttpClientPool, ProviderClient, PublicOnlyResolver
from worker.providers.response_body import ResponseTooLarge

BOMB = gzip_of_zeros(32 * MIB)
HEADERS = {"content-type": "application/json"}


class Server:
    """A local endpoint: ``/bomb`` (gzip), ``/cookie`` (sets one), anything else ``{}``; records the Cookie
    header of every request."""

    def __init__(self) -> None:
        self.cookies: list[str | None] = []
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        await request.read()
        self.cookies.append(request.headers.get("cookie"))
        if request.path == "/bomb":
            return web.Response(body=BOMB, headers={"content-encoding": "gzip"})
        response = web.Response(body=b"{}", content_type="application/json")
        if request.path == "/cookie":
            response.set_cookie("hostile", "from-workspace-a", path="/")
        return response

    async def __aenter__(self) -> Server:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.port = self.runner.addresses[0][1]
        return self

    async def __aexit__(self, *_exc: object) -> None:
        assert self.runner is not None
        await self.runner.cleanup()


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    async with Server() as running:
        yield running


def pool(**options: Any) -> HttpClientPool:
    return HttpClientPool(connect_timeout_s=2, read_timeout_s=5, max_connections=10, **options)


async def post(client: ProviderClient, url: str) -> bytes:
    return (await client.post(url, content=b"{}", headers=HEADERS)).content


class Bomb(httpx.AsyncByteStream):
    """A streamed answer (not read into memory by httpx when built)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for start in range(0, len(BOMB), 16 * 1024):
            yield BOMB[start:start + 16 * 1024]


def bombing(_request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, headers={"content-encoding": "gzip"}, stream=Bomb())


async def until(condition: Callable[[], bool]) -> None:
    """Lets the event loop run until ``condition`` holds (a bounded number of turns, no clock)."""
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


# -- the answer's size -----------------------------------------------------------------------------------


async def test_a_gzip_bomb_over_aiohttp_is_refused_at_the_cap(server: Server) -> None:
    clients = pool(max_response_bytes=MIB)
    try:
        with pytest.raises(ResponseTooLarge, match=f"larger than {MIB} bytes"):
            await post(clients.client_for(f"http://127.0.0.1:{server.port}"), f"http://127.0.0.1:{server.port}/bomb")
        assert await post(clients.client_for(f"http://127.0.0.1:{server.port}"),
                          f"http://127.0.0.1:{server.port}/ok") == b"{}", "the origin still works"
    finally:
        await clients.aclose()


async def test_a_gzip_bomb_over_a_test_transport_is_refused_at_the_cap() -> None:
    clients = pool(max_response_bytes=MIB, transport_factory=lambda: httpx.MockTransport(bombing))
    try:
        with pytest.raises(ResponseTooLarge):
            await post(clients.client_for("https://bomb.example"), "https://bomb.example/v1")
    finally:
        await clients.aclose()


async def test_an_answer_built_in_memory_by_a_test_transport_is_capped_too() -> None:
    big = httpx.MockTransport(lambda _r: httpx.Response(200, json={"text": "z" * 2 * MIB}))
    clients = pool(max_response_bytes=MIB, transport_factory=lambda: big)
    try:
        with pytest.raises(ResponseTooLarge):
            await post(clients.client_for("https://big.example"), "https://big.example/v1")
    finally:
        await clients.aclose()


# -- cookies -----------------------------------------------------------------------------------------------


async def test_a_cookie_set_by_an_endpoint_is_never_sent_back_over_aiohttp(server: Server) -> None:
    clients = pool()
    base = f"http://127.0.0.1:{server.port}"
    try:
        await post(clients.client_for(base), f"{base}/cookie")
        await post(clients.client_for(base), f"{base}/next")
    finally:
        await clients.aclose()
    assert server.cookies == [None, None]


async def test_a_cookie_set_by_an_endpoint_is_never_sent_back_over_a_test_transport() -> None:
    sent: list[str | None] = []

    def endpoint(request: httpx.Request) -> httpx.Response:
        sent.append(request.headers.get("cookie"))
        return httpx.Response(200, json={}, headers={"set-cookie": "hostile=from-workspace-a; Path=/"})

    clients = pool(transport_factory=lambda: httpx.MockTransport(endpoint))
    try:
        for _ in range(2):
            await post(clients.client_for("https://shared.example"), "https://shared.example/v1")
    finally:
        await clients.aclose()
    assert sent == [None, None]


# -- the origin cache --------------------------------------------------------------------------------------


async def test_the_least_recently_used_origin_is_evicted_and_closed() -> None:
    clients = pool(max_origins=2, transport_factory=lambda: httpx.MockTransport(lambda _r: httpx.Response(200)))
    try:
        a, b = clients.client_for("https://a.example/v1"), clients.client_for("https://b.example/v1")
        assert clients.client_for("https://a.example/other") is a  # a is now the most recently used
        c = clients.client_for("https://c.example")
        await until(lambda: b.closed)  # the eviction closes b in a task of its own
        assert len(clients) == 2 and not a.closed and not c.closed
        assert clients.client_for("https://b.example") is not b, "an evicted origin gets a fresh client"
    finally:
        await clients.aclose()
    assert a.closed and c.closed


async def test_an_evicted_origin_closes_only_once_its_request_has_ended() -> None:
    entered, answer = asyncio.Event(), asyncio.Event()

    async def slow(_request: httpx.Request) -> httpx.Response:
        entered.set()
        await answer.wait()
        return httpx.Response(200, json={"ok": True})

    clients = pool(max_origins=1, transport_factory=lambda: httpx.MockTransport(slow))
    try:
        busy = clients.client_for("https://busy.example")
        request = asyncio.create_task(post(busy, "https://busy.example/v1"))
        await entered.wait()
        clients.client_for("https://other.example")
        assert len(clients) == 1
        assert not busy.closed, "closing it now would fail a job in flight"
        answer.set()
        assert await request == b'{"ok":true}'
        assert busy.closed
    finally:
        await clients.aclose()


async def test_thousands_of_origins_keep_no_more_than_the_bound() -> None:
    clients = pool(max_origins=16)
    try:
        evicted = [clients.client_for(f"https://o{i}.example") for i in range(3000)][:-16]
        await until(lambda: all(origin.closed for origin in evicted))
        assert len(clients) == 16
    finally:
        await clients.aclose()


# -- addresses -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("address", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "100.64.0.1", "0.0.0.0",  # noqa: S104
                                     "192.168.1.1", "224.0.0.1", "168.63.129.16"])
async def test_a_name_resolving_to_a_non_public_address_is_refused_before_connecting(
    server: Server, monkeypatch: pytest.MonkeyPatch, address: str
) -> None:
    scripted_dns(monkeypatch, {"internal.hostile.test": [address]})
    clients = pool()
    base = f"http://internal.hostile.test:{server.port}"
    try:
        with pytest.raises(NonPublicAddress, match="BYOK_ALLOWED_HOSTS"):
            await post(clients.client_for(base), f"{base}/v1")
    finally:
        await clients.aclose()
    assert server.cookies == [], "nothing reached the server"


@pytest.mark.parametrize("listed", ["internal.hostile.test", "internal.hostile.test:{port}"])
async def test_a_listed_name_connects_to_the_address_it_resolved_to(
    server: Server, monkeypatch: pytest.MonkeyPatch, listed: str
) -> None:
    scripted_dns(monkeypatch, {"internal.hostile.test": ["127.0.0.1"]})
    clients = pool(allowed_hosts=frozenset({listed.format(port=server.port)}))
    base = f"http://internal.hostile.test:{server.port}"
    try:
        assert await post(clients.client_for(base), f"{base}/v1") == b"{}"
    finally:
        await clients.aclose()
    assert len(server.cookies) == 1


async def test_a_listing_for_another_port_does_not_cover_this_one(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    scripted_dns(monkeypatch, {"internal.hostile.test": ["127.0.0.1"]})
    clients = pool(allowed_hosts=frozenset({f"internal.hostile.test:{server.port + 1}"}))
    base = f"http://internal.hostile.test:{server.port}"
    try:
        with pytest.raises(NonPublicAddress):
            await post(clients.client_for(base), f"{base}/v1")
    finally:
        await clients.aclose()


async def test_every_resolution_is_checked_so_a_name_that_rebinds_is_caught() -> None:
    # The DNS answers a public address first, then loopback.
    resolver = PublicOnlyResolver(None, FixedResolver({"rebind.hostile.test": ["93.184.216.34", "127.0.0.1"]}))
    assert [r["host"] for r in await resolver.resolve("rebind.hostile.test", 80)] == ["93.184.216.34"]
    with pytest.raises(NonPublicAddress):
        await resolver.resolve("rebind.hostile.test", 80)


async def test_one_non_public_address_among_public_ones_refuses_the_name() -> None:
    class Mixed(FixedResolver):
        async def resolve(self, host: str, port: int = 0,
                          family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
            public, private = await super().resolve(host, port), await super().resolve("private", port)
            return [*public, *private]

    resolver = PublicOnlyResolver(None, Mixed({"mixed.hostile.test": ["93.184.216.34"], "private": ["10.0.0.1"]}))
    with pytest.raises(NonPublicAddress):
        await resolver.resolve("mixed.hostile.test", 443)


# -- answers that are not HTTP -----------------------------------------------------------------------------

NOT_HTTP = {
    "bad status line": b"NOT HTTP secret-ish-text\r\n\r\n",
    "oversized header": b"HTTP/1.1 200 OK\r\nX-Big: " + b"secret-ish-text" * 7000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    "too many headers": b"HTTP/1.1 200 OK\r\n" + b"X-A: secret-ish-text\r\n" * 50_000 + b"Content-Length: 2\r\n\r\n{}",
}


@pytest.mark.parametrize("answer", NOT_HTTP.values(), ids=NOT_HTTP.keys())
async def test_an_answer_that_is_not_http_is_a_transport_error_quoting_nothing(answer: bytes) -> None:
    async def endpoint(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(answer)
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(endpoint, "127.0.0.1", 0)
    base = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    clients = pool()
    try:
        with pytest.raises(httpx.TransportError) as failed:
            await post(clients.client_for(base), f"{base}/v1")
    finally:
        await clients.aclose()
        server.close()
    assert "secret-ish-text" not in str(failed.value)
