"""The OpenAPI 3.1 document of the aggregator's HTTP API (served at ``/openapi.json``)."""

from __future__ import annotations

from typing import Any

from schemas.models import IDENTIFIER_PATTERN, TOKEN_BUCKETS
from worker.aggregator.alerts import Alert, AlertKind
from worker.aggregator.consumption import DEFAULT_GROUP_BY, GROUPS
from worker.aggregator.drivers import TOP_RUNS
from worker.budgets.rules import MAX_WEIGHT

_COUNTERS = ("requests", *TOKEN_BUCKETS, "unreported_requests", "unreported_calls")


def _counter_properties() -> dict[str, Any]:
    props: dict[str, Any] = {name: {"type": "integer", "minimum": 0} for name in _COUNTERS}
    props["requests"]["description"] = "usage events: billed provider calls (not jobs)"
    props["unreported_requests"]["description"] = "calls whose provider response carried no usage"
    props["unreported_calls"]["description"] = (
        "provider calls that started (a confirmed call record) more than BYOK_UNREPORTED_GRACE_S ago and never "
        "reported usage (the worker died or lost the broker mid-call): the provider may have billed them; "
        "their tokens are unknown and in no count or cost. Not included in requests."
    )
    props["cost_usd"] = {
        "type": ["number", "null"],
        "description": "estimated USD of the priced usage; null when none of it has a price",
    }
    props["unpriced"] = {"type": "boolean", "description": "some usage has no price in the price table"}
    return props


def _instant(name: str, meaning: str) -> dict[str, Any]:
    return {
        "name": name, "in": "query", "required": False,
        "description": f"{meaning}: a date-time with an explicit offset (Z or +00:00), or a date (midnight UTC)",
        # parse_instant takes both; a date-time without an offset is refused (400).
        "schema": {"type": "string", "anyOf": [{"format": "date-time"}, {"format": "date"}]},
    }


def _error_response(text: str) -> dict[str, Any]:
    return {"description": text, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _json_response(text: str, schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"description": text, "content": {"application/json": {"schema": ref}}}


_WORKSPACE = {
    "name": "workspace_id", "in": "path", "required": True,
    "schema": {"type": "string", "pattern": IDENTIFIER_PATTERN},
}


def _schemas() -> dict[str, Any]:
    counters = _counter_properties()
    alert_schema = Alert.model_json_schema(by_alias=True, ref_template="#/components/schemas/{model}")
    defs = alert_schema.pop("$defs", {})
    return {
        **defs,
        "Totals": {"type": "object", "properties": counters, "required": [*_COUNTERS, "cost_usd", "unpriced"]},
        "ConsumptionRow": {
            "type": "object",
            "description": "the group keys asked for (provider and model together), then the counters",
            "properties": {
                "day": {"type": "string", "format": "date"},
                "hour": {"type": "string", "format": "date-time", "description": "start of the UTC hour"},
                "provider": {"type": "string"},
                "model": {"type": "string"},
                "automation_id": {"type": ["string", "null"]},
                **counters,
            },
            "required": [*_COUNTERS, "cost_usd", "unpriced"],
        },
        "Consumption": {
            "type": "object",
            "properties": {
                "workspace_id": {"type": "string"},
                "since": {"type": ["string", "null"], "format": "date-time"},
                "until": {"type": ["string", "null"], "format": "date-time"},
                "group_by": {"type": "array", "items": {"enum": list(GROUPS)}},
                "totals": {"$ref": "#/components/schemas/Totals"},
                "rows": {"type": "array", "items": {"$ref": "#/components/schemas/ConsumptionRow"}},
                "unpriced_models": {
                    "type": "array",
                    "items": {"type": "object", "properties": {"provider": {"type": "string"},
                                                               "model": {"type": "string"}}},
                },
                "estimate": {"const": True, "description": "costs are estimates from the price table"},
                "currency": {"const": "USD"},
                "price_table": {"type": "string", "description": "version of the price table used"},
                "prices_as_of": {"type": "string", "description": "the price table's date (its version)"},
                "budgets": {"type": "array", "items": {"$ref": "#/components/schemas/BudgetStatus"},
                            "description": "the workspace's budgets, with what is spent and reserved this period"},
            },
            "required": ["workspace_id", "totals", "rows", "estimate"],
        },
        **_drivers_schemas(),
        "BudgetInput": {
            "type": "object", "additionalProperties": False,
            "description": "a limit, an in-flight cap, a fair-share weight (workspace-wide only), or several",
            "properties": {
                "automation_id": {"type": ["string", "null"], "pattern": IDENTIFIER_PATTERN,
                                  "description": "only this automation; absent or null: the whole workspace"},
                "limit_usd": {"type": ["number", "null"], "exclusiveMinimum": 0},
                "period": {"enum": ["month", "day"], "default": "month", "description": "UTC calendar period"},
                "action": {"enum": ["block", "alert"], "default": "block"},
                "max_in_flight": {"type": ["integer", "null"], "minimum": 1,
                                  "description": "provider calls at once across all workers"},
                "weight": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_WEIGHT,
                           "description": "turns in each round of the workers' fair share; absent or null: 1"},
            },
        },
        "BudgetStatus": {
            "type": "object",
            "properties": {
                "workspace_id": {"type": "string"},
                "automation_id": {"type": ["string", "null"]},
                "limit_usd": {"type": ["number", "null"]},
                "period": {"enum": ["month", "day"]},
                "action": {"enum": ["block", "alert"]},
                "max_in_flight": {"type": ["integer", "null"]},
                "weight": {"type": ["integer", "null"]},
                "period_start": {"type": "string", "format": "date-time"},
                "resets_at": {"type": "string", "format": "date-time"},
                "spent_usd": {"type": "number", "description": "estimated cost of the period's calls"},
                "reserved_usd": {"type": "number", "description": "worst-case cost of the calls in flight"},
                "in_flight": {"type": "integer", "minimum": 0},
            },
            "required": ["workspace_id", "automation_id", "limit_usd", "period", "action", "max_in_flight",
                         "weight", "period_start", "resets_at", "spent_usd", "reserved_usd", "in_flight"],
        },
        "Budgets": {
            "type": "object",
            "properties": {
                "workspace_id": {"type": "string"},
                "budgets": {"type": "array", "items": {"$ref": "#/components/schemas/BudgetStatus"}},
            },
            "required": ["workspace_id", "budgets"],
        },
        "Alert": alert_schema,
        "Anomalies": {
            "type": "object",
            "properties": {
                "workspace_id": {"type": "string"},
                "anomalies": {"type": "array", "items": {"$ref": "#/components/schemas/Alert"}},
            },
            "required": ["workspace_id", "anomalies"],
        },
        "Health": {
            "type": "object",
            "properties": {
                "status": {"enum": ["ok", "degraded"]},
                "broker_connected": {"type": "boolean"},
                "consuming": {"type": "boolean"},
                "store": {"enum": ["ok", "unavailable"]},
            },
        },
        "TokenScope": {
            "type": "object",
            "properties": {
                "scope": {"type": "string", "description": "the workspace the token may read, or * for all"},
                "tokens_required": {"type": "boolean", "description": "false: no tokens configured (loopback)"},
                "prices_as_of": {"type": "string", "description": "the price table's date (its version)"},
                "endpoints": {"type": "array", "items": {"type": "string"},
                              "description": "the /v1 paths this aggregator serves"},
            },
            "required": ["scope", "tokens_required", "prices_as_of", "endpoints"],
        },
        "Error": {
            "type": "object",
            "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
            "required": ["error", "message"],
        },
    }


_USD = {"type": ["number", "null"], "description": "estimated USD from the price table; null when unpriced"}
_SHARE = {"type": ["number", "null"], "minimum": 0, "maximum": 1}


def _percentiles(kind: dict[str, Any], meaning: str) -> dict[str, Any]:
    return {"type": "object", "description": f"{meaning}: nearest-rank p50 and p95, and the maximum",
            "properties": {"p50": kind, "p95": kind, "max": kind}, "required": ["p50", "p95", "max"]}


def _drivers_schemas() -> dict[str, Any]:
    runs = {
        "type": ["object", "null"],
        "description": "the automation's agent runs (calls grouped by the value of the BYOK_RUN_TAG tag, default "
                       "agent_run); null when none of its calls carries that tag",
        "properties": {
            "count": {"type": "integer", "minimum": 1},
            "calls_per_run": _percentiles({"type": "integer"}, "calls per run"),
            "cost_per_run_usd": _percentiles(_USD, "estimated USD per run"),
            "top": {"type": "array", "description": f"the costliest runs, at most {TOP_RUNS}, costliest first",
                    "items": {"type": "object", "required": ["run", "calls", "cost_usd"],
                              "properties": {"run": {"type": "string"}, "calls": {"type": "integer"},
                                             "cost_usd": _USD}}},
        },
        "required": ["count", "calls_per_run", "cost_per_run_usd", "top"],
    }
    automation = {
        "type": "object",
        "properties": {
            "automation_id": {"type": ["string", "null"], "description": "null for jobs without one"},
            "requests": {"type": "integer", "minimum": 0, "description": "billed provider calls (usage events)"},
            "cost_usd": _USD,
            "cost_share": {**_SHARE, "description": "share of the workspace's estimated cost"},
            "input_tokens": {"type": "integer", "minimum": 0, "description": "input + cache read + cache write"},
            "system_prompt_share": {
                **_SHARE, "description": "an estimate: each call's input tokens split by the characters of its "
                "system prompt over all its input characters (calls without a recorded shape left out)",
            },
            "system_prompts": {
                "type": "object", "required": ["distinct", "top_fingerprint", "top_calls"],
                "properties": {
                    "distinct": {"type": "integer", "minimum": 0, "description": "distinct system prompts"},
                    "top_fingerprint": {"type": ["string", "null"],
                                        "description": "the most used one: 16 hex digits of its SHA-256"},
                    "top_calls": {"type": "integer", "minimum": 0, "description": "calls with the most used one"},
                },
            },
            "cache": {
                "type": "object", "required": ["read_share", "saved_usd", "open_saving_usd"],
                "properties": {
                    "read_share": {**_SHARE, "description": "cache read tokens over input_tokens"},
                    "saved_usd": {"type": "number", "description": "an estimate, net: the same tokens with no "
                                  "caching minus what they cost (cache-write premiums included)"},
                    "open_saving_usd": {"type": "number", "description": "an estimate: what caching the repeated "
                                        "system prompt would still save at the current prices"},
                },
            },
            "runs": runs,
        },
        "required": ["automation_id", "requests", "cost_usd", "cost_share", "input_tokens", "system_prompt_share",
                     "system_prompts", "cache", "runs"],
    }
    model = {
        "type": "object",
        "properties": {
            "provider": {"type": "string"}, "model": {"type": "string"},
            "requests": {"type": "integer", "minimum": 0}, "cost_usd": _USD,
            "cheapest": {
                "type": ["object", "null"],
                "description": "an estimate, a price comparison only: the same tokens on the cheapest priced model "
                               "of the same provider in the price table; null when the provider has none",
                "properties": {"model": {"type": "string"}, "cost_usd": {"type": "number"}},
                "required": ["model", "cost_usd"],
            },
        },
        "required": ["provider", "model", "requests", "cost_usd", "cheapest"],
    }
    return {
        "DriversAutomation": automation,
        "DriversModel": model,
        "Drivers": {
            "type": "object",
            "description": "what drives the workspace's cost; every amount is an estimate from the price table, "
                           "and each billed call counts once in every grouping (tags never double count)",
            "properties": {
                "workspace_id": {"type": "string"},
                "since": {"type": ["string", "null"], "format": "date-time"},
                "until": {"type": ["string", "null"], "format": "date-time"},
                "prices_as_of": {"type": "string", "description": "version of the price table used"},
                "total_cost_usd": _USD,
                "automations": {"type": "array", "description": "highest cost first",
                                "items": {"$ref": "#/components/schemas/DriversAutomation"}},
                "models": {"type": "array", "description": "highest cost first",
                           "items": {"$ref": "#/components/schemas/DriversModel"}},
            },
            "required": ["workspace_id", "since", "until", "prices_as_of", "total_cost_usd", "automations", "models"],
        },
    }


_UNAUTHORIZED = {
    "description": "no bearer token, or one the tokens file does not list",
    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}},
    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
}
_NOT_FOUND = _error_response(
    "a workspace the token may not read: the same answer as a path that does not exist"
)
_PUBLIC: list[dict[str, list[str]]] = []  # an operation that needs no token


def _asset(operation_id: str, summary: str, media_type: str) -> dict[str, Any]:
    return {"get": {
        "operationId": operation_id, "summary": summary, "security": _PUBLIC,
        "responses": {"200": {"description": summary, "content": {media_type: {"schema": {"type": "string"}}}}},
    }}


def _secured(paths: dict[str, Any]) -> dict[str, Any]:
    """Every ``/v1/...`` operation answers 401 without a valid token, and 404 for another workspace."""
    for path, operations in paths.items():
        if not path.startswith("/v1/"):
            continue
        for operation in operations.values():
            operation["responses"].setdefault("401", _UNAUTHORIZED)
            if "{workspace_id}" in path:
                operation["responses"].setdefault("404", _NOT_FOUND)
    return paths


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "byok aggregator API",
            "version": "1",
            "description": "Consumption (token counts and estimated cost), cost drivers, anomalies and budgets per "
            "workspace. Every /v1 operation needs a bearer token; a token scoped to one workspace gets 404 for others.",
        },
        "security": [{"bearerAuth": []}],
        "paths": _secured({
            "/": {
                "get": {
                    "operationId": "page",
                    "summary": "The consumption page (HTML; it asks for a token and reads the /v1 endpoints)",
                    "security": _PUBLIC,
                    "responses": {"200": {"description": "the page",
                                          "content": {"text/html": {"schema": {"type": "string"}}}}},
                }
            },
            "/app.js": _asset("pageScript", "The page's script", "text/javascript"),
            "/app.css": _asset("pageStyle", "The page's style sheet", "text/css"),
            "/v1/token": {
                "get": {
                    "operationId": "getTokenScope",
                    "summary": "What the request's token may read",
                    "responses": {"200": _json_response("the token's scope", "TokenScope")},
                }
            },
            "/v1/workspaces/{workspace_id}/consumption": {
                "get": {
                    "operationId": "getConsumption",
                    "summary": "Usage and estimated cost of a workspace, grouped",
                    "parameters": [
                        _WORKSPACE,
                        _instant("since", "inclusive start"),
                        _instant("until", "exclusive end"),
                        {
                            # style form, explode false: one comma-separated value (group_by=model,day); the
                            # API takes the parameter repeated as well.
                            "name": "group_by", "in": "query", "required": False, "style": "form", "explode": False,
                            "description": "comma-separated, any of " + ", ".join(GROUPS)
                            + " (default: model; model rows also carry the provider)",
                            "schema": {"type": "array", "items": {"enum": list(GROUPS)},
                                       "default": list(DEFAULT_GROUP_BY)},
                        },
                    ],
                    "responses": {
                        "200": _json_response("the consumption", "Consumption"),
                        "400": _error_response("a bad parameter"),
                        "503": _error_response("the store is unavailable"),
                    },
                }
            },
            "/v1/workspaces/{workspace_id}/drivers": {
                "get": {
                    "operationId": "getDrivers",
                    "summary": "What drives a workspace's cost: per automation, agent run and model (estimates)",
                    "parameters": [
                        _WORKSPACE,
                        _instant("since", "inclusive start"),
                        _instant("until", "exclusive end"),
                    ],
                    "responses": {
                        "200": _json_response("the drivers", "Drivers"),
                        "400": _error_response("a bad parameter"),
                        "503": _error_response("the store is unavailable"),
                    },
                }
            },
            "/v1/workspaces/{workspace_id}/anomalies": {
                "get": {
                    "operationId": "listAnomalies",
                    "summary": "Alerts raised for a workspace, newest first",
                    "parameters": [
                        _WORKSPACE,
                        _instant("since", "raised at or after"),
                        _instant("until", "raised before"),
                        {"name": "kind", "in": "query", "required": False,
                         "schema": {"enum": [k.value for k in AlertKind]}},
                        {"name": "limit", "in": "query", "required": False,
                         "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
                    ],
                    "responses": {
                        "200": _json_response("the alerts", "Anomalies"),
                        "400": _error_response("a bad parameter"),
                        "503": _error_response("the store is unavailable"),
                    },
                }
            },
            "/v1/workspaces/{workspace_id}/budgets": {
                "get": {
                    "operationId": "listBudgets",
                    "summary": "A workspace's budgets with what is spent and reserved this period",
                    "parameters": [_WORKSPACE],
                    "responses": {"200": _json_response("the budgets", "Budgets"),
                                  "400": _error_response("a bad parameter"),
                                  "503": _error_response("the store is unavailable")},
                },
                "put": {
                    "operationId": "setBudget",
                    "summary": "Create or replace one budget (workers apply it within BYOK_BUDGET_REFRESH_S)",
                    "parameters": [_WORKSPACE],
                    "requestBody": {"required": True, "content": {"application/json": {
                        "schema": {"$ref": "#/components/schemas/BudgetInput"}}}},
                    "responses": {"200": _json_response("the budgets after the change", "Budgets"),
                                  "400": _error_response("an invalid budget"),
                                  "503": _error_response("the store is unavailable")},
                },
                "delete": {
                    "operationId": "deleteBudget",
                    "summary": "Remove one budget",
                    "parameters": [_WORKSPACE, {"name": "automation_id", "in": "query", "required": False,
                                                "schema": {"type": "string", "pattern": IDENTIFIER_PATTERN}}],
                    "responses": {"200": _json_response("the budgets after the change", "Budgets"),
                                  "404": _error_response("no such budget"),
                                  "503": _error_response("the store is unavailable")},
                },
            },
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "security": _PUBLIC,
                    "summary": "Broker connection, consumers and store",
                    "responses": {"200": _json_response("healthy", "Health"),
                                  "503": _json_response("degraded", "Health")},
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "security": _PUBLIC,
                    "summary": "Prometheus metrics",
                    "responses": {"200": {"description": "Prometheus text format",
                                          "content": {"text/plain": {"schema": {"type": "string"}}}}},
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "security": _PUBLIC,
                    "summary": "This document",
                    "responses": {"200": {"description": "OpenAPI 3.1",
                                          "content": {"application/json": {"schema": {"type": "object"}}}}},
                }
            },
        }),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http", "scheme": "bearer",
                    "description": "a token from byok tokens create, scoped to one workspace or to * "
                    "(BYOK_API_TOKENS_FILE); without a tokens file the API listens on loopback only and asks none",
                }
            },
        },
    }
