"""``GET/PUT/DELETE /v1/workspaces/{ws}/budgets``: the budgets of ``byok budgets``, through the API.

PUT takes ``{automation_id?, limit_usd?, period?, action?, max_in_flight?, weight?}`` (one budget, created or
replaced);
DELETE takes ``?automation_id=`` (none: the workspace-wide budget). Every answer lists the workspace's budgets
with what is spent and reserved this period.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from schemas.models import IDENTIFIER_PATTERN
from worker.aggregator.consumption import QueryError
from worker.budgets.admin import BudgetAdmin
from worker.budgets.rules import Budget

_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)
_FIELDS = {"automation_id", "limit_usd", "period", "action", "max_in_flight", "weight"}


async def budgets_of(admin: BudgetAdmin, workspace_id: str) -> list[dict[str, Any]]:
    now = datetime.now(UTC)
    return [status.as_json(now) for status in await admin.list(workspace_id)]


def _workspace(request: web.Request) -> str:
    workspace = request.match_info["workspace_id"]
    if not _IDENTIFIER.fullmatch(workspace):
        raise QueryError(f"workspace_id must match {IDENTIFIER_PATTERN}")
    return workspace


def _problems(exc: ValidationError) -> str:
    errors = exc.errors(include_input=False, include_url=False, include_context=False)
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'budget'}: {e['msg'].removeprefix('Value error, ')}"
                     for e in errors)


class BudgetRoutes:
    def __init__(self, admin: BudgetAdmin) -> None:
        self._admin = admin

    async def _answer(self, workspace: str, status: int = 200) -> web.Response:
        body = {"workspace_id": workspace, "budgets": await budgets_of(self._admin, workspace)}
        return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")

    async def get(self, request: web.Request) -> web.Response:
        return await self._answer(_workspace(request))

    async def put(self, request: web.Request) -> web.Response:
        workspace = _workspace(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            raise QueryError("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise QueryError("the body must be a JSON object")
        unknown = sorted(set(body) - _FIELDS)
        if unknown:
            raise QueryError(f"unknown field(s): {', '.join(unknown)}")
        try:
            budget = Budget.model_validate({**body, "workspace_id": workspace})
        except ValidationError as exc:
            raise QueryError(_problems(exc)) from None
        await self._admin.set(budget)
        return await self._answer(workspace)

    async def delete(self, request: web.Request) -> web.Response:
        workspace = _workspace(request)
        automation = request.rel_url.query.get("automation_id")
        if automation is not None and not _IDENTIFIER.fullmatch(automation):
            raise QueryError(f"automation_id must match {IDENTIFIER_PATTERN}")
        if not await self._admin.delete(workspace, automation):
            body = {"error": "not_found", "message": "no such budget"}
            return web.Response(body=orjson.dumps(body), status=404, content_type="application/json")
        return await self._answer(workspace)
