"""One pooled HTTP client per provider endpoint origin.

httpx's own pool stalls with hundreds of slow requests in flight (encode/httpx#3215), so requests go
through the aiohttp transport; tests hand in an ``httpx.MockTransport`` instead.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

import httpx
from httpx_aiohttp import AiohttpTransport

TransportFactory = Callable[[], httpx.AsyncBaseTransport]


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
        self._clients: dict[str, httpx.AsyncClient] = {}

    def client_for(self, base_url: str) -> httpx.AsyncClient:
        parts = urlsplit(base_url)
        origin = f"{parts.scheme}://{parts.netloc}"
        client = self._clients.get(origin)
        if client is None:
            transport = (
                self._transport_factory() if self._transport_factory else AiohttpTransport(limits=self._limits)
            )
            client = httpx.AsyncClient(
                transport=transport, timeout=self._timeout, limits=self._limits, follow_redirects=False
            )
            self._clients[origin] = client
        return client

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.aclose()
