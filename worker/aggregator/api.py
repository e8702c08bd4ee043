"""The aggregator's HTTP API (aiohttp): consumption, cost drivers, anomalies, health, metrics, its OpenAPI document."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
import structlog
from aiohttp import web

from schemas.models import IDENTIFIER_PATTERN
from worker.aggregator.alerts import AlertKind
from worker.aggregator.auth import auth_middleware, not_found, request_scope
from worker.aggregator.budget_routes import BudgetRoutes, budgets_of
from worker.aggregator.consumption import (
    DEFAULT_UNREPORTED_GRACE_S,
    QueryError,
    consumption,
    parse_group_by,
    parse_instant,
)
from worker.aggregator.db import StoreError
from worker.aggregator.drivers import DEFAULT_RUN_TAG, drivers
from worker.aggregator.metrics import AggregatorMetrics
from worker.aggregator.openapi import openapi_document
from worker.aggregator.page import add_page_routes, security_headers
from worker.aggregator.pricing import PriceTable
from worker.aggregator.store import Store
from worker.aggregator.tokens import TokenRegistry
from worker.budgets.admin import BudgetAdmin
from worker.settings import split_listen

log = structlog.get_logger("byok.aggregator")

_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
MAX_ANOMALIES = 1000
DEFAULT_ANOMALIES = 100

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class ApiState:
    broker_connected: Callable[[], bool]
    consuming: Callable[[], bool]


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _workspace(request: web.Request) -> str:
    workspace = request.match_info["workspace_id"]
    if not _IDENTIFIER.fullmatch(workspace):
        raise QueryError(f"workspace_id must match {IDENTIFIER_PATTERN}")
    return workspace


def _limit(text: str | None) -> int:
    if text is None:
        return DEFAULT_ANOMALIES
    if not text.isdigit() or not 1 <= int(text) <= MAX_ANOMALIES:
        raise QueryError(f"limit must be an integer from 1 to {MAX_ANOMALIES}")
    return int(text)


def _kind(text: str | None) -> str | None:
    if text is None:
        return None
    if text not in {k.value for k in AlertKind}:
        raise QueryError(f"kind must be one of {', '.join(k.value for k in AlertKind)}")
    return text


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPNotFound:
        return not_found()  # the same answer as a workspace the token may not read
    except QueryError as exc:
        return _json({"error": "bad_request", "message": str(exc)}, 400)
    except StoreError as exc:
        log.error("store error serving the API", path=request.path, error=str(exc))
        return _json({"error": "store_unavailable", "message": "the consumption store is unavailable"}, 503)


class AggregatorApi:
    """The routes. With ``tokens`` every ``/v1/...`` request needs a bearer token of that registry (``auth``)."""

    def __init__(
        self, store: Store, prices: PriceTable, metrics: AggregatorMetrics, state: ApiState,
        tokens: TokenRegistry | None = None, *, unreported_grace_s: float = DEFAULT_UNREPORTED_GRACE_S,
        run_tag: str = DEFAULT_RUN_TAG, budgets: BudgetAdmin | None = None,
    ) -> None:
        self._unreported_grace_s = unreported_grace_s
        self._run_tag = run_tag
        self._budgets = budgets
        self._store = store
        self._prices = prices
        self._metrics = metrics
        self._state = state
        self._tokens = tokens

    def app(self) -> web.Application:
        app = web.Application(middlewares=[security_headers, _errors, auth_middleware(self._tokens)])
        add_page_routes(app, tokens_required=self._tokens is not None)
        app.router.add_get("/v1/token", self.token)
        app.router.add_get("/v1/workspaces/{workspace_id}/consumption", self.consumption)
        app.router.add_get("/v1/workspaces/{workspace_id}/drivers", self.drivers)
        app.router.add_get("/v1/workspaces/{workspace_id}/anomalies", self.anomalies)
        if self._budgets is not None:
            budgets = BudgetRoutes(self._budgets)
            app.router.add_get("/v1/workspaces/{workspace_id}/budgets", budgets.get)
            app.router.add_put("/v1/workspaces/{workspace_id}/budgets", budgets.put)
            app.router.add_delete("/v1/workspaces/{workspace_id}/budgets", budgets.delete)
        app.router.add_get("/healthz", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/openapi.json", self.openapi)
        return app

    async def consumption(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        group_values = query.getall("group_by", None)
        result = await consumption(
            self._store, self._prices, _workspace(request),
            since=parse_instant(query.get("since"), "since"),
            until=parse_instant(query.get("until"), "until"),
            group_by=parse_group_by(group_values),
            unreported_grace_s=self._unreported_grace_s,
        )
        if self._budgets is not None:
            result["budgets"] = await budgets_of(self._budgets, result["workspace_id"])
        return _json(result)

    async def drivers(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        result = await drivers(
            self._store, self._prices, _workspace(request),
            since=parse_instant(query.get("since"), "since"),
            until=parse_instant(query.get("until"), "until"),
            run_tag=self._run_tag,
        )
        return _json(result)

    async def token(self, request: web.Request) -> web.Response:
        """What the request's token may read, and which ``/v1`` endpoints this aggregator has (the page
        shows a section only when its endpoint exists): the page's first question."""
        endpoints = sorted({
            resource.canonical for resource in request.app.router.resources()
            if resource.canonical.startswith("/v1/")
        })
        return _json({"scope": request_scope(request, self._tokens), "tokens_required": self._tokens is not None,
                      "prices_as_of": self._prices.version, "endpoints": endpoints})

    async def anomalies(self, request: web.Request) -> web.Response:
        query = request.rel_url.query
        workspace = _workspace(request)
        alerts = await self._store.alerts(
            workspace,
            since=parse_instant(query.get("since"), "since"),
            until=parse_instant(query.get("until"), "until"),
            kind=_kind(query.get("kind")),
            limit=_limit(query.get("limit")),
        )
        return _json({"workspace_id": workspace, "anomalies": [a.as_dict() for a in alerts]})

    async def health(self, _request: web.Request) -> web.Response:
        store_ok = True
        try:
            await self._store.ping()
        except StoreError:
            store_ok = False
        body = {
            "status": "ok",
            "broker_connected": self._state.broker_connected(),
            "consuming": self._state.consuming(),
            "store": "ok" if store_ok else "unavailable",
        }
        healthy = store_ok and body["broker_connected"] and body["consuming"]
        body["status"] = "ok" if healthy else "degraded"
        return _json(body, 200 if healthy else 503)

    async def metrics(self, _request: web.Request) -> web.Response:
        return web.Response(body=self._metrics.render(), content_type="text/plain", charset="utf-8")

    async def openapi(self, _request: web.Request) -> web.Response:
        return _json(openapi_document())


class ApiServer:
    """Serves the API on ``listen`` (``host:port``; port 0 picks a free one, then ``port`` tells it)."""

    def __init__(self, listen: str, api: AggregatorApi) -> None:
        self._listen = listen
        self._api = api
        self._runner: web.AppRunner | None = None
        self.host = ""
        self.port = 0

    async def start(self) -> None:
        self._runner = web.AppRunner(self._api.app(), access_log=None)
        await self._runner.setup()
        self.host, port = split_listen(self._listen)
        site = web.TCPSite(self._runner, self.host, port)
        await site.start()
        server = site._server  # aiohttp exposes the bound port nowhere else
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
