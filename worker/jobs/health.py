"""The worker's HTTP port: liveness, readiness (broker connected and consuming) and metrics."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from worker.jobs.metrics import WorkerMetrics
from worker.settings import split_listen


@dataclass
class HealthState:
    connected: Callable[[], bool]
    consuming: Callable[[], bool]


class HealthServer:
    def __init__(self, listen: str, state: HealthState, metrics: WorkerMetrics) -> None:
        self._listen = listen
        self._state = state
        self._metrics = metrics
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/livez", self._live)
        app.router.add_get("/readyz", self._ready)
        app.router.add_get("/metrics", self._render_metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, port = split_listen(self._listen)
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def _live(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def _ready(self, _request: web.Request) -> web.Response:
        connected, consuming = self._state.connected(), self._state.consuming()
        body = {"broker_connected": connected, "consuming": consuming}
        return web.json_response(body, status=200 if connected and consuming else 503)

    async def _render_metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), content_type="text/plain", charset="utf-8")

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
