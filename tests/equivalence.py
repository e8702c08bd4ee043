"""Proof that the worker's fast paths behave like the code they replaced: ``python -m tests.equivalence``,
and in ``make test`` through tests/integration/test_fast_paths.py.

1. Provider calls: ``worker.providers.http_pool.AiohttpOrigin`` against ``httpx.AsyncClient`` over
   ``httpx_aiohttp.AiohttpTransport`` (the old path), on a local server: what the server sees (method,
   path, every header, body, cookies sent back) and what the caller gets (status, headers, body, or the
   exception type) for plain, compressed, broken, redirecting, slow, dropped and refused answers, for an
   IP-address origin and a host-name origin.
2. Publishing: ``worker.broker.publisher.Publisher`` against aio-pika's ``Message`` + ``Exchange.publish`` (the old
   path), on the local broker: every property of the received messages.

Exits 1 and prints both sides of any difference.
"""

from __future__ import annotations

import asyncio
import gzip
import sys
import zlib
from datetime import UTC, datetime
from typing import Any

import aio_pika
import aiohttp
import httpx
from aio_pika.abc import AbstractIncomingMessage, DeliveryMode
from aiohttp import web
from httpx_aiohttp import AiohttpTransport

from tests.waiting import wait_until
from worker.broker.names import CONTENT_TYPE
from worker.broker.publisher import Publisher
from worker.providers.http_pool import HttpClientPool, no_cookies

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
KINDS = ("ok", "setcookie", "ok", "gzip", "badgzip", "deflate", "repeated", "redirect", "slow", "close")


async def _handler(request: web.Request) -> web.StreamResponse:
    await request.read()
    kind = request.query.get("k", "ok")
    if kind == "setcookie":
        response = web.Response(body=b"{}")
        response.set_cookie("__cf_bm", "abc123", path="/")
        return response
    if kind == "gzip":
        return web.Response(body=gzip.compress(b'{"a": 1}'), headers={"Content-Encoding": "gzip"})
    if kind == "badgzip":
        return web.Response(body=b"not gzip", headers={"Content-Encoding": "gzip"})
    if kind == "deflate":
        return web.Response(body=zlib.compress(b'{"d": 2}'), headers={"Content-Encoding": "deflate"})
    if kind == "repeated":
        response = web.Response(status=429, body=b'{"error": "x"}')
        response.headers.add("Retry-After", "3")
        response.headers.add("X-Dup", "1")
        response.headers.add("x-dup", "2")
        return response
    if kind == "redirect":
        raise web.HTTPFound("/elsewhere")
    if kind == "slow":
        await asyncio.sleep(2)  # kept: the slow answer both clients must time out on (0.5 s read timeout)
    if kind == "close" and request.transport is not None:
        request.transport.close()
    return web.Response(body=b'{"ok": true}', content_type="application/json")


async def provider_calls(host: str) -> list[str]:
    seen: list[tuple[str, str, list[tuple[str, str]]]] = []

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        seen.append((request.method, str(request.rel_url), sorted((k.lower(), v) for k, v in request.headers.items())))
        return await handler(request)  # type: ignore[no-any-return]

    app = web.Application(middlewares=[record])
    app.router.add_route("*", "/{tail:.*}", _handler)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    base = f"http://{host}:{port}"
    timeout = httpx.Timeout(0.5, connect=1, pool=0.5)
    limits = httpx.Limits(max_connections=10, max_keepalive_connections=10)
    # Neither keeps cookies (a cookie one workspace's endpoint sets must not go out with another job): the old
    # path's aiohttp session as AiohttpTransport builds it, without its cookie jar.
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(keepalive_timeout=limits.keepalive_expiry,
                                                                   limit=10),
                                    cookie_jar=aiohttp.DummyCookieJar())
    old = httpx.AsyncClient(transport=AiohttpTransport(limits=limits, client=session), timeout=timeout,
                            limits=limits, follow_redirects=False, cookies=no_cookies())
    pool = HttpClientPool(connect_timeout_s=1, read_timeout_s=0.5, max_connections=10,
                          allowed_hosts=frozenset({host}))
    headers = {"authorization": "Bearer sk-equivalence", "content-type": "application/json"}
    differences = []
    try:
        for kind in KINDS:
            outcomes = []
            for client in (old, pool.client_for(base)):
                seen.clear()
                try:
                    response = await client.post(f"{base}/v1/chat?k={kind}", content=b'{"x":1}', headers=headers)
                    outcome: tuple[Any, ...] = (response.status_code, response.is_success,
                                                sorted(dict(response.headers).items()), response.content)
                except Exception as exc:
                    outcome = (type(exc).__name__, isinstance(exc, httpx.TimeoutException),
                               isinstance(exc, httpx.TransportError))
                outcomes.append((_without_date(outcome), list(seen)))
            if outcomes[0] != outcomes[1]:
                differences.append(f"provider call {kind} via {host}:\n  old {outcomes[0]}\n  new {outcomes[1]}")
        refused = []
        for client in (old, pool.client_for("http://127.0.0.1:1")):
            try:
                await client.post("http://127.0.0.1:1/x", content=b"{}", headers=headers)
            except Exception as exc:
                refused.append(type(exc).__name__)
        if refused[0] != refused[1]:
            differences.append(f"refused connection: old {refused[0]}, new {refused[1]}")
    finally:
        await old.aclose()
        await pool.aclose()
        await runner.cleanup()
    return differences


def _without_date(outcome: tuple[Any, ...]) -> tuple[Any, ...]:
    if len(outcome) == 4:
        return (outcome[0], outcome[1], [(k, v) for k, v in outcome[2] if k != "date"], outcome[3])
    return outcome


class _OldPublisher:
    """``worker.jobs.consumer.Publisher.publish`` as it was at commit f61f57e."""

    def __init__(self, channel: aio_pika.abc.AbstractChannel) -> None:
        self._channel = channel

    async def publish(self, exchange: str, routing_key: str, body: bytes, *, message_id: str | None = None,
                      headers: dict[str, Any] | None = None, correlation_id: str | None = None) -> None:
        message = aio_pika.Message(body, content_type=CONTENT_TYPE, content_encoding="utf-8",
                                   delivery_mode=DeliveryMode.PERSISTENT, message_id=message_id,
                                   correlation_id=correlation_id, headers=headers, timestamp=datetime.now(UTC))
        target = (self._channel.default_exchange if exchange == ""
                  else await self._channel.get_exchange(exchange, ensure=False))
        await target.publish(message, routing_key=routing_key)


async def publishing() -> list[str]:
    connection = await aio_pika.connect(AMQP_URL)
    got: list[AbstractIncomingMessage] = []
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.consume(got.append, no_ack=True)  # type: ignore[arg-type]
        cases: list[dict[str, Any]] = [
            {"message_id": "m1", "correlation_id": "c1"},
            {"message_id": "m2", "headers": {"x-byok-error": "invalid_job", "n": 3}},
            {},
        ]
        for publisher in (_OldPublisher(channel), Publisher(channel)):
            for case in cases:
                await publisher.publish("", queue.name, b'{"a": 1}', **case)
            await publisher.publish("amq.direct", "nowhere", b"{}", message_id="unroutable")  # mandatory: returned
        await wait_until(lambda: len(got) >= 2 * len(cases), timeout=2.5, what="both publishers' messages")
    infos = [_info(message) for message in got]
    half = len(cases)
    return [f"publish case {i}:\n  old {old}\n  new {new}"
            for i, (old, new) in enumerate(zip(infos[:half], infos[half:], strict=True)) if old != new]


def _info(message: AbstractIncomingMessage) -> dict[str, Any]:
    info = message.info()
    for varying in ("timestamp", "delivery_tag", "consumer_tag"):
        info.pop(varying, None)
    if info.get("message_id") not in ("m1", "m2"):
        info["message_id"] = "<generated>"
    return dict(info)


async def main() -> int:
    differences = [*await provider_calls("127.0.0.1"), *await provider_calls("localhost"), *await publishing()]
    for difference in differences:
        print(difference)
    print("equivalent" if not differences else f"{len(differences)} difference(s)")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
