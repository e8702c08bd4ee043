"""Who may read what: every /v1 endpoint against missing, wrong, other-workspace and right tokens, over a
real store and a real socket; the tokens file reread when it changes; the security headers; the OpenAPI
document's security scheme; the page without tokens on loopback."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.aggregator.helpers import aggregator_settings
from tests.aggregator.test_consumption import dataset
from tests.broker import running_aggregator
from worker.aggregator.api import AggregatorApi, ApiServer, ApiState
from worker.aggregator.metrics import AggregatorMetrics
from worker.aggregator.openapi import openapi_document
from worker.aggregator.page import CONTENT_SECURITY_POLICY
from worker.aggregator.pricing import PriceTable
from worker.aggregator.store import Store
from worker.aggregator.tokens import TokenRegistry, add_token, revoke_token, token_hash
from worker.settings import Settings

METHODS_WITHOUT_BODY = ("GET", "DELETE", "HEAD")


@dataclass
class Served:
    url: str
    api: AggregatorApi
    tokens_file: Path
    tokens: dict[str, str]


def _api(store: Store, prices: PriceTable, tokens: TokenRegistry | None) -> AggregatorApi:
    return AggregatorApi(store, prices, AggregatorMetrics(), ApiState(lambda: True, lambda: True), tokens)


@pytest.fixture
async def served(store: Store, prices: PriceTable, tmp_path: Path) -> AsyncIterator[Served]:
    await store.ingest(dataset())
    tokens_file = tmp_path / "tokens.json"
    tokens = {scope: add_token(tokens_file, scope)[0] for scope in ("acme", "globex", "*")}
    api = _api(store, prices, TokenRegistry(str(tokens_file)))
    server = ApiServer("127.0.0.1:0", api)
    await server.start()
    try:
        yield Served(server.url, api, tokens_file, tokens)
    finally:
        await server.stop()


async def call(
    url: str, method: str = "GET", token: str | None = None, raw_authorization: str | None = None
) -> tuple[int, Any, dict[str, str]]:
    headers = {"Authorization": raw_authorization or f"Bearer {token}"} if token or raw_authorization else {}
    async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers) as response:
        if response.content_type == "application/json":
            body: Any = await response.json()
        else:
            body = await response.text()
        return response.status, body, dict(response.headers)


def v1_operations(api: AggregatorApi) -> list[tuple[str, str]]:
    """Every (method, path) under /v1 the app routes, whoever added it, with ``acme`` for the workspace."""
    found = set()
    for route in api.app().router.routes():
        path = route.resource.canonical if route.resource else ""
        if path.startswith("/v1/") and route.method != "HEAD":
            found.add((route.method, path))
    assert found, "no /v1 route at all"
    return sorted(found)


async def test_every_v1_endpoint_refuses_a_missing_or_wrong_token(served: Served) -> None:
    operations = v1_operations(served.api)
    for method, path in operations:
        url = served.url + path.replace("{workspace_id}", "acme")
        for authorization in (None, "Bearer byok_wrong", "Bearer ", "Basic YWNtZTphY21l", served.tokens["acme"]):
            if authorization == served.tokens["acme"]:
                authorization = f"bearer-ish {authorization}"  # the right token under another scheme
            status, body, headers = await call(url, method, raw_authorization=authorization)
            assert status == 401, (method, path, authorization)
            assert headers["WWW-Authenticate"].startswith("Bearer"), (method, path)
            assert body["error"] == "unauthorized"
            assert headers["Cache-Control"] == "no-store"
    print(f"\n{len(operations)} /v1 operations x 5 missing or wrong authorizations: all 401 with WWW-Authenticate")


async def test_a_token_of_another_workspace_gets_404_everywhere(served: Served) -> None:
    operations = [(m, p) for m, p in v1_operations(served.api) if "{workspace_id}" in p]
    for method, path in operations:
        status, body, _ = await call(served.url + path.replace("{workspace_id}", "acme"), method,
                                     served.tokens["globex"])
        assert status == 404, (method, path)
        # The same answer as a path that does not exist: nothing says the workspace is there.
        _, unknown, _ = await call(f"{served.url}/v1/no-such-thing", "GET", served.tokens["globex"])
        assert body == unknown
    for token in (served.tokens["acme"], served.tokens["*"]):
        status, body, _ = await call(f"{served.url}/v1/workspaces/acme/consumption", "GET", token)
        assert status == 200
        assert body["totals"]["requests"] > 0
    status, body, _ = await call(f"{served.url}/v1/workspaces/acme/anomalies", "GET", served.tokens["acme"])
    assert status == 200
    print(f"\n{len(operations)} workspace operations: 404 for another workspace's token, 200 for its own and *")


async def test_health_metrics_openapi_and_the_page_need_no_token(served: Served) -> None:
    for path in ("/healthz", "/metrics", "/openapi.json", "/", "/app.js", "/app.css"):
        status, _, headers = await call(served.url + path)
        assert status == 200, path
        assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
        assert headers["X-Content-Type-Options"] == "nosniff"
    _, page, headers = await call(served.url + "/")
    assert 'content="true"' in page  # the page asks for a token before its first request
    assert "<script>" not in page and "<script src=\"/app.js\"" in page
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "unsafe-inline" not in headers["Content-Security-Policy"]


async def test_api_answers_are_never_cached(served: Served) -> None:
    for path in ("/v1/workspaces/acme/consumption", "/v1/workspaces/acme/anomalies", "/v1/token"):
        status, _, headers = await call(served.url + path, "GET", served.tokens["acme"])
        assert status == 200
        assert headers["Cache-Control"] == "no-store"


async def test_the_tokens_file_is_reread_when_it_changes(served: Served) -> None:
    url = f"{served.url}/v1/workspaces/acme/consumption"
    fresh, _ = add_token(served.tokens_file, "acme")  # while the server runs
    assert (await call(url, "GET", fresh))[0] == 200
    revoke_token(served.tokens_file, token_hash(fresh)[:12])
    assert (await call(url, "GET", fresh))[0] == 401
    assert (await call(url, "GET", served.tokens["acme"]))[0] == 200
    # A file gone bad refuses every token (closed), until it is fixed.
    good = served.tokens_file.read_bytes()
    served.tokens_file.write_bytes(b"{not json")
    assert (await call(url, "GET", served.tokens["acme"]))[0] == 401
    served.tokens_file.write_bytes(good)
    os.utime(served.tokens_file)
    assert (await call(url, "GET", served.tokens["acme"]))[0] == 200


async def test_the_token_endpoint_says_the_scope(served: Served) -> None:
    status, body, _ = await call(f"{served.url}/v1/token", "GET", served.tokens["acme"])
    assert status == 200
    assert body["scope"] == "acme" and body["tokens_required"] is True
    assert "/v1/workspaces/{workspace_id}/consumption" in body["endpoints"]
    assert body["prices_as_of"] == "test-1"


async def test_without_tokens_everything_answers(store: Store, prices: PriceTable) -> None:
    server = ApiServer("127.0.0.1:0", _api(store, prices, None))
    await server.start()
    try:
        status, body, _ = await call(f"{server.url}/v1/token")
        assert status == 200 and body["scope"] == "*" and body["tokens_required"] is False
        assert (await call(f"{server.url}/v1/workspaces/acme/consumption"))[0] == 200
        _, page, _ = await call(f"{server.url}/")
        assert 'content="false"' in page
    finally:
        await server.stop()


def test_openapi_declares_the_bearer_scheme() -> None:
    document = openapi_document()
    assert document["components"]["securitySchemes"]["bearerAuth"] == {
        **document["components"]["securitySchemes"]["bearerAuth"], "type": "http", "scheme": "bearer",
    }
    assert document["security"] == [{"bearerAuth": []}]
    for path, operations in document["paths"].items():
        for operation in operations.values():
            if path.startswith("/v1/"):
                assert "security" not in operation, path  # the document's own: a bearer token
                assert "401" in operation["responses"], path
                if "{workspace_id}" in path:
                    assert "404" in operation["responses"], path
            else:
                assert operation["security"] == [], path



async def test_the_running_aggregator_takes_tokens_from_its_file(settings: Settings, tmp_path: Path) -> None:
    """The aggregator process (broker, store, API) with BYOK_API_TOKENS_FILE: a token made while it runs is
    accepted at once, the page is served, other workspaces are 404."""
    tokens_file = tmp_path / "api-tokens.json"
    agg = aggregator_settings(settings, store_url=f"sqlite:///{tmp_path / 'agg.db'}", api_tokens_file=str(tokens_file))
    async with running_aggregator(agg) as running:
        url = f"{running.api_url}/v1/workspaces/acme/consumption"
        assert (await call(url))[0] == 401  # the file does not exist yet: nobody
        token, _ = add_token(tokens_file, "acme")
        status, body, headers = await call(url, "GET", token)
        assert status == 200 and body["workspace_id"] == "acme"
        assert headers["Cache-Control"] == "no-store"
        assert (await call(f"{running.api_url}/v1/workspaces/globex/consumption", "GET", token))[0] == 404
        status, page, _ = await call(f"{running.api_url}/")
        assert status == 200 and 'name="byok-tokens-required" content="true"' in page
        assert (await call(f"{running.api_url}/healthz"))[0] == 200
