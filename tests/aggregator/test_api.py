"""The HTTP API over a real store and a real listening socket (the broker is covered end to end elsewhere)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.aggregator.helpers import PG_BASE_URL, at, usage
from tests.aggregator.test_consumption import dataset
from tests.services import free_port
from worker.aggregator.alerts import AlertKind, make_alert
from worker.aggregator.api import AggregatorApi, ApiServer, ApiState
from worker.aggregator.consumption import consumption
from worker.aggregator.db import Database, parse_store_url
from worker.aggregator.metrics import AggregatorMetrics
from worker.aggregator.openapi import openapi_document
from worker.aggregator.pricing import PriceTable
from worker.aggregator.store import Store
from worker.budgets.admin import BudgetAdmin


class Flags:
    connected = True
    consuming = True


@pytest.fixture
async def api(store: Store, prices: PriceTable) -> AsyncIterator[tuple[str, Flags]]:
    await store.ingest(dataset())
    flags = Flags()
    server = ApiServer("127.0.0.1:0", AggregatorApi(
        store, prices, AggregatorMetrics(), ApiState(lambda: flags.connected, lambda: flags.consuming)
    ))
    await server.start()
    assert server.port > 0
    try:
        yield server.url, flags
    finally:
        await server.stop()


async def get(url: str, params: dict[str, str] | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url, params=params) as response:
        body = await response.json() if response.content_type == "application/json" else await response.text()
        return response.status, body


async def test_consumption_over_http_equals_the_function(
    api: tuple[str, Flags], store: Store, prices: PriceTable
) -> None:
    base, _ = api
    status, body = await get(f"{base}/v1/workspaces/acme/consumption",
                             {"since": "2025-03-01T10:30:00Z", "until": "2025-03-02T12:00:00Z",
                              "group_by": "day,automation"})
    assert status == 200
    expected = await consumption(store, prices, "acme", at("2025-03-01 10:30"), at("2025-03-02 12:00"),
                                 ("day", "automation"))
    assert body == expected
    assert body["totals"]["requests"] == 3


@pytest.mark.parametrize(
    ("path", "params", "fragment"),
    [
        ("acme/consumption", {"since": "2025-03-01T10:00:00"}, "offset"),
        ("acme/consumption", {"group_by": "model,colour"}, "colour"),
        ("acme/consumption", {"since": "2025-03-02", "until": "2025-03-01"}, "before"),
        ("bad.workspace/consumption", {}, "workspace_id"),
        ("acme/anomalies", {"limit": "0"}, "limit"),
        ("acme/anomalies", {"kind": "gossip"}, "kind"),
    ],
)
async def test_bad_parameters_are_400(api: tuple[str, Flags], path: str, params: dict[str, str], fragment: str) -> None:
    status, body = await get(f"{api[0]}/v1/workspaces/{path}", params)
    assert status == 400
    assert body["error"] == "bad_request"
    assert fragment in body["message"]


async def test_anomalies_lists_stored_alerts_newest_first(api: tuple[str, Flags], store: Store) -> None:
    window = (at("2025-03-01 10:00"), at("2025-03-01 11:00"))
    older = make_alert(AlertKind.SPIKE, "acme", "*:tokens", window, "older", {"value": 1})
    newer = make_alert(AlertKind.BUDGET, "acme", "80pct", window, "newer", {"spent_usd": 8})
    elsewhere = make_alert(AlertKind.BUDGET, "other", "80pct", window, "not acme's", {})
    await store.add_alerts([older])
    await store.add_alerts([newer, elsewhere])
    status, body = await get(f"{api[0]}/v1/workspaces/acme/anomalies")
    assert status == 200
    assert [a["message"] for a in body["anomalies"]] == ["newer", "older"]
    assert body["anomalies"][0]["details"] == {"spent_usd": 8}
    assert body["anomalies"][0]["schema"] == "byok.alert.v1"
    status, body = await get(f"{api[0]}/v1/workspaces/acme/anomalies", {"kind": "spike"})
    assert [a["alert_id"] for a in body["anomalies"]] == [older.alert_id]


async def test_health_reports_each_part(api: tuple[str, Flags]) -> None:
    base, flags = api
    status, body = await get(f"{base}/healthz")
    assert (status, body["status"], body["store"]) == (200, "ok", "ok")
    flags.consuming = False
    status, body = await get(f"{base}/healthz")
    assert (status, body["status"], body["consuming"]) == (503, "degraded", False)


async def test_metrics_are_prometheus_text(api: tuple[str, Flags]) -> None:
    status, text = await get(f"{api[0]}/metrics")
    assert status == 200
    assert "# TYPE byok_aggregator_messages_total counter" in text


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "$ref"] + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


async def test_openapi_documents_every_route_and_resolves_every_ref(api: tuple[str, Flags], store: Store) -> None:
    status, doc = await get(f"{api[0]}/openapi.json")
    assert status == 200
    assert doc == openapi_document()
    assert doc["openapi"].startswith("3.1")
    prices = PriceTable.__new__(PriceTable)
    app = AggregatorApi(store, prices, AggregatorMetrics(), ApiState(lambda: True, lambda: True),
                        budgets=BudgetAdmin(store.writer, prices)).app()
    routes = {resource.canonical for resource in app.router.resources()}
    assert routes == set(doc["paths"])
    schemas = doc["components"]["schemas"]
    for ref in _refs(doc):
        assert ref.startswith("#/components/schemas/") and ref.rsplit("/", 1)[1] in schemas, ref


async def test_a_store_connection_killed_by_the_server_is_reopened(prices: PriceTable, pg_url: str) -> None:
    name = f"byok-test-{secrets.token_hex(4)}"
    store = await Store.open(f"{pg_url}&application_name={name}")
    await store.ingest([usage("2025-03-01 10:00")])
    try:
        assert (await consumption(store, prices, "acme"))["totals"]["requests"] == 1
        with psycopg.connect(PG_BASE_URL, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s", (name,)
            ).fetchall()
        assert len(killed) == 2  # the writer's and the reader's connections
        assert (await consumption(store, prices, "acme"))["totals"]["requests"] == 1
        await store.ingest([usage("2025-03-01 10:00")])
        assert (await consumption(store, prices, "acme"))["totals"]["requests"] == 2
    finally:
        await store.close()


async def test_an_unreachable_store_is_503(prices: PriceTable, tmp_path: Any) -> None:
    url = parse_store_url(f"postgresql://127.0.0.1:{free_port()}/test?connect_timeout=2")
    store = Store(url, Database(url, create=False, name="w"), Database(url, create=False, name="r"))
    server = ApiServer("127.0.0.1:0", AggregatorApi(store, prices, AggregatorMetrics(),
                                                    ApiState(lambda: True, lambda: True)))
    await server.start()
    try:
        status, body = await get(f"{server.url}/v1/workspaces/acme/consumption")
        assert (status, body["error"]) == (503, "store_unavailable")
        status, body = await get(f"{server.url}/healthz")
        assert (status, body["store"]) == (503, "unavailable")
    finally:
        await server.stop()
        await store.close()


def _parameter(doc: dict[str, Any], path: str, name: str) -> dict[str, Any]:
    found = [p for p in doc["paths"][path]["get"]["parameters"] if p["name"] == name]
    assert len(found) == 1, name
    parameter: dict[str, Any] = found[0]
    return parameter


_EXAMPLE_OF_FORMAT = {"date-time": "2025-03-01T10:30:00+00:00", "date": "2025-03-01"}


@pytest.mark.parametrize(
    "path", [f"/v1/workspaces/{{workspace_id}}/{what}" for what in ("consumption", "drivers", "anomalies")]
)
async def test_openapi_query_parameters_are_typed_as_the_api_takes_them(api: tuple[str, Flags], path: str) -> None:
    doc = openapi_document()
    url = api[0] + path.replace("{workspace_id}", "acme")
    for name in ("since", "until"):
        schema = _parameter(doc, path, name)["schema"]
        formats = [choice["format"] for choice in schema["anyOf"]]
        assert formats == ["date-time", "date"]
        for example in (_EXAMPLE_OF_FORMAT[f] for f in formats):
            assert (await get(url, {name: example}))[0] == 200, (name, example)
        assert (await get(url, {name: "2025-03-01T10:30:00"}))[0] == 400, "a date-time needs its offset"
    if path.endswith("/consumption"):
        group_by = _parameter(doc, path, "group_by")
        assert (group_by["style"], group_by["explode"], group_by["schema"]["type"]) == ("form", False, "array")
        allowed = group_by["schema"]["items"]["enum"]
        for value in [*allowed, ",".join(allowed)]:  # explode false: one comma-separated value
            assert (await get(url, {"group_by": value}))[0] == 200, value
        assert (await get(url, {"group_by": "colour"}))[0] == 400
