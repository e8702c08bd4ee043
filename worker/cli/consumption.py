"""``byok consumption``: a workspace's token usage and estimated cost, as a table or JSON."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.models import IDENTIFIER_PATTERN, TOKEN_BUCKETS
from worker.aggregator.consumption import QueryError, consumption, parse_group_by, parse_instant
from worker.aggregator.db import StoreError
from worker.aggregator.drivers import drivers
from worker.aggregator.pricing import load_prices
from worker.aggregator.store import Store
from worker.budgets.admin import BudgetAdmin
from worker.cli.common import configured_settings
from worker.cli.drivers_table import render_drivers
from worker.settings import ConsumptionSettings

# Each counter and its column title: "cache_read_tokens" is "cache read".
_COLUMNS = (
    ("requests", "requests"),
    ("unreported_calls", "unreported"),
    *((bucket, bucket.removesuffix("_tokens").replace("_", " ")) for bucket in TOKEN_BUCKETS),
)
UNREPORTED_MARK = "!"
_KEY_TITLES = {
    "day": "day", "hour": "hour (UTC)", "provider": "provider", "model": "model", "automation_id": "automation",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    query = subparsers.add_parser(
        "consumption", help="a workspace's token usage and estimated cost",
        description="Reads a workspace's consumption from the store the aggregator writes: requests, the five token "
                    "counts and the estimated cost, grouped as asked, with totals (or JSON).",
        epilog="settings: BYOK_STORE_URL (the aggregator's store), BYOK_PRICES_FILE, BYOK_UNREPORTED_GRACE_S, "
               "BYOK_RUN_TAG (--drivers). "
               "exit codes: 0 printed, 1 store or price table failure, 2 invalid arguments",
    )
    query.add_argument("workspace", help="workspace id")
    query.add_argument("--since", help="inclusive start: ISO-8601 with offset (2025-06-01T00:00:00Z) or a date")
    query.add_argument("--until", help="exclusive end: ISO-8601 with offset or a date")
    query.add_argument(
        "--group-by", dest="group_by", help="comma-separated: model, automation, provider, day, hour (default: model)"
    )
    query.add_argument(
        "--drivers", action="store_true",
        help="what drives the cost instead: per automation its share, the estimated system-prompt share of input, "
             "repeated system prompts and cache savings; agent runs (tag BYOK_RUN_TAG); the cheapest model of the "
             "same provider for the same tokens",
    )
    query.add_argument("--json", action="store_true", help="print the result as JSON")
    query.set_defaults(func=consumption_command)


async def query_consumption(
    settings: ConsumptionSettings, workspace: str, since: datetime | None, until: datetime | None,
    group_by: Sequence[str],
) -> dict[str, Any]:
    """The consumption dict, read from ``BYOK_STORE_URL`` without migrating or creating anything."""
    prices = load_prices(settings.prices_file)
    store = await Store.open(settings.store_url.get_secret_value(), migrate_schema=False)
    try:
        result = await consumption(store, prices, workspace, since, until, group_by,
                                   unreported_grace_s=settings.unreported_grace_s)
        now = datetime.now(UTC)
        result["budgets"] = [status.as_json(now) for status in await BudgetAdmin(store.writer, prices).list(workspace)]
        return result
    finally:
        await store.close()


async def query_drivers(
    settings: ConsumptionSettings, workspace: str, since: datetime | None, until: datetime | None
) -> dict[str, Any]:
    """The drivers report, as the aggregator's API gives it, read from ``BYOK_STORE_URL`` without migrating."""
    prices = load_prices(settings.prices_file)
    store = await Store.open(settings.store_url.get_secret_value(), migrate_schema=False)
    try:
        return await drivers(store, prices, workspace, since, until, run_tag=settings.run_tag)
    finally:
        await store.close()


def consumption_command(args: argparse.Namespace) -> int:
    try:
        if not re.fullmatch(IDENTIFIER_PATTERN, args.workspace):
            raise QueryError(f"workspace must match {IDENTIFIER_PATTERN}")
        since, until = parse_instant(args.since, "--since"), parse_instant(args.until, "--until")
        if args.drivers and args.group_by is not None:
            raise QueryError("--group-by does not apply to --drivers (it groups by automation, run and model)")
        group_by = parse_group_by(args.group_by)
        settings = configured_settings(ConsumptionSettings)
        if args.drivers:
            result = asyncio.run(query_drivers(settings, args.workspace, since, until))
        else:
            result = asyncio.run(query_consumption(settings, args.workspace, since, until, group_by))
    except QueryError as exc:
        print(f"byok consumption: {exc}", file=sys.stderr)
        return 2
    except (StoreError, ValueError, OSError) as exc:
        print(f"byok consumption: {exc}", file=sys.stderr)
        return 1
    if args.json:
        sys.stdout.buffer.write(orjson.dumps(result, option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
    elif args.drivers:
        print(render_drivers(result, settings.run_tag))
    else:
        print(render_table(result))
    return 0


def _cost(values: dict[str, Any]) -> str:
    cost = values["cost_usd"]
    if cost is None:
        return "unpriced"
    return f"{cost:,.6f}" + ("*" if values["unpriced"] else "")


def _counter(values: dict[str, Any], name: str) -> str:
    cell = f"{values[name]:,}"
    return cell + UNREPORTED_MARK if name == "requests" and values["unreported_requests"] else cell


def render_table(result: dict[str, Any]) -> str:
    """A plain-text table: one line per row, then the totals, then what the costs mean."""
    rows: list[dict[str, Any]] = result["rows"]
    keys = [key for key in _KEY_TITLES if any(key in row for row in rows)]
    header = [_KEY_TITLES[k] for k in keys] + [title for _, title in _COLUMNS] + ["cost (USD)"]
    lines = [
        [("-" if row.get(k) is None else str(row[k])) for k in keys]
        + [_counter(row, name) for name, _ in _COLUMNS] + [_cost(row)]
        for row in rows
    ]
    totals = result["totals"]
    total_line = (["total"] + [""] * (len(keys) - 1) if keys else []) + [
        _counter(totals, name) for name, _ in _COLUMNS
    ] + [_cost(totals)]
    if not keys:
        header, total_line = ["", *header], ["total", *total_line]
    table = [header, *lines, total_line]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    text_columns = len(keys) or 1

    def fmt(line: list[str]) -> str:
        cells = [
            cell.ljust(width) if i < text_columns else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [f"workspace {result['workspace_id']}  since {result['since'] or '-'}  until {result['until'] or '-'}",
           "", fmt(header), rule, *(fmt(line) for line in lines), rule, fmt(total_line), ""]
    out.append(f"Costs are estimates from price table {result['price_table']} (list prices, USD).")
    if result["unpriced_models"]:
        names = ", ".join(f"{m['provider']}/{m['model']}" for m in result["unpriced_models"])
        out.append(f"No price for: {names} (their usage is counted, not costed; * = partly unpriced).")
    if totals["unreported_calls"]:
        out.append(f"{totals['unreported_calls']:,} provider calls started and never reported usage (the worker "
                   "stopped or lost the broker mid-call): the provider may have billed them; their tokens are "
                   "unknown and missing from the counts and the cost estimate.")
    for budget in result.get("budgets", []):
        scope = budget["workspace_id"] + (f"/{budget['automation_id']}" if budget["automation_id"] else "")
        limit = f"${budget['limit_usd']:,.6f}" if budget["limit_usd"] is not None else "no limit"
        cap = f", max in flight {budget['max_in_flight']}" if budget["max_in_flight"] is not None else ""
        cap += f", weight {budget['weight']}" if budget.get("weight") is not None else ""
        out.append(f"Budget {scope} ({budget['action']}, {budget['period']}): {limit}{cap}; spent "
                   f"${budget['spent_usd']:,.6f}, reserved ${budget['reserved_usd']:,.6f}, "
                   f"resets {budget['resets_at']}.")
    if totals["unreported_requests"]:
        out.append(f"{UNREPORTED_MARK} {totals['unreported_requests']:,} of the requests came back without usage from "
                   "the provider: their tokens are unknown (not counted as 0) and missing from the cost estimate.")
    return "\n".join(out)
