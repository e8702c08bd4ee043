"""``byok budgets set|list|delete``: budgets in the consumption store, changed at run time.

Workers read them within ``BYOK_BUDGET_REFRESH_S``; nothing restarts. ``set`` creates the store's schema if
the aggregator has not yet; ``list`` and ``delete`` only read an existing store.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

import orjson
from pydantic import ValidationError

from worker.aggregator.db import StoreError
from worker.aggregator.pricing import PriceTableError, load_prices
from worker.budgets.admin import BudgetAdmin
from worker.budgets.ledger import BudgetStatus
from worker.budgets.rules import MAX_WEIGHT, Action, Budget, Period, valid_identifier
from worker.cli.common import configured_settings
from worker.settings import ConsumptionSettings, describe_errors

USAGE_EXIT = 2
_EPILOG = ("settings: BYOK_STORE_URL (the aggregator's store), BYOK_PRICES_FILE. "
           "exit codes: 0 done, 1 store failure or no such budget, 2 invalid arguments")


class InputError(ValueError):
    pass


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    budgets = subparsers.add_parser(
        "budgets", help="spend limits and in-flight caps per workspace or automation",
        description="Budgets live in the consumption store (BYOK_STORE_URL); workers enforce block budgets before "
                    "every provider call and pick up changes within BYOK_BUDGET_REFRESH_S.",
        epilog=_EPILOG,
    )
    verbs = budgets.add_subparsers(dest="verb", required=True, metavar="VERB")
    show = verbs.add_parser(
        "list", help="budgets with what is spent and reserved this period", epilog=_EPILOG,
        description="Lists budgets (of one workspace, or all) with what is spent and reserved in the current period, "
                    "the calls in flight and when the period resets.",
    )
    show.add_argument("workspace", nargs="?")
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=list_command)
    put = verbs.add_parser(
        "set", help="create or replace a budget", epilog=_EPILOG,
        description="Creates or replaces the budget of a workspace (or of one automation of it): a limit in USD per "
                    "UTC month or day, block or alert, and/or a cap on provider calls in flight across all workers, "
                    "and/or the workspace's weight in the workers' fair share.",
    )
    put.add_argument("workspace")
    put.add_argument("--automation", help="only this automation of the workspace")
    put.add_argument("--limit-usd", dest="limit_usd", type=float, help="the most the period may cost (USD, > 0)")
    put.add_argument("--period", choices=[p.value for p in Period], default=Period.MONTH.value,
                     help="UTC calendar month (default) or day")
    put.add_argument("--action", choices=[a.value for a in Action], default=Action.BLOCK.value,
                     help="block: refuse calls that do not fit (default); alert: only alert")
    put.add_argument("--max-in-flight", dest="max_in_flight", type=int,
                     help="at most this many provider calls at once, across all workers (>= 1)")
    put.add_argument("--weight", type=int,
                     help=f"turns in each round of the workers' fair share (1 to {MAX_WEIGHT}; default 1); "
                          "the whole workspace's, so not with --automation")
    put.add_argument("--json", action="store_true")
    put.set_defaults(func=set_command)
    drop = verbs.add_parser(
        "delete", help="remove a budget", epilog=_EPILOG,
        description="Removes the budget of a workspace (or, with --automation, of one automation); workers stop "
                    "enforcing it within BYOK_BUDGET_REFRESH_S.",
    )
    drop.add_argument("workspace")
    drop.add_argument("--automation")
    drop.set_defaults(func=delete_command)


def _identifier(value: str | None, what: str) -> None:
    if value is not None and not valid_identifier(value):
        raise InputError(f"{what} must match ^[A-Za-z0-9_-]{{1,64}}$")


def _budget(args: argparse.Namespace) -> Budget:
    _identifier(args.workspace, "workspace")
    _identifier(args.automation, "--automation")
    try:
        return Budget(workspace_id=args.workspace, automation_id=args.automation, limit_usd=args.limit_usd,
                      period=Period(args.period), action=Action(args.action), max_in_flight=args.max_in_flight,
                      weight=args.weight)
    except ValidationError as exc:
        problems = describe_errors(exc).replace("BYOK_", "--").replace("_", "-").lower()
        raise InputError(problems) from None


async def _with_admin(settings: ConsumptionSettings, *, create: bool, work: object) -> object:
    assert callable(work)
    admin = await BudgetAdmin.open(settings.store_url.get_secret_value(), load_prices(settings.prices_file),
                                   migrate_schema=create)
    try:
        return await work(admin)
    finally:
        await admin.close()


def _line(status: BudgetStatus) -> str:
    budget = status.budget
    limit = f"${budget.limit_usd:.6f}" if budget.limit_usd is not None else "no limit"
    cap = f", max in flight {budget.max_in_flight}" if budget.max_in_flight is not None else ""
    weight = f", weight {budget.weight}" if budget.weight is not None else ""
    return (f"{budget.scope}: {budget.action.value} {limit} a {budget.period.value}{cap}{weight}; spent "
            f"${status.spent_usd:.6f}, reserved ${status.reserved_usd:.6f}, in flight {status.in_flight}, "
            f"resets {status.resets_at.isoformat()}")


def _run(verb: str, args: argparse.Namespace, create: bool, work: object) -> tuple[int, object]:
    try:
        settings = configured_settings(ConsumptionSettings)
        return 0, asyncio.run(_with_admin(settings, create=create, work=work))
    except InputError as exc:
        print(f"byok budgets {verb}: {exc}", file=sys.stderr)
        return USAGE_EXIT, None
    except (StoreError, PriceTableError, ValueError, OSError) as exc:
        print(f"byok budgets {verb}: {exc}", file=sys.stderr)
        return 1, None


def set_command(args: argparse.Namespace) -> int:
    try:
        budget = _budget(args)
    except InputError as exc:
        print(f"byok budgets set: {exc}", file=sys.stderr)
        return USAGE_EXIT
    code, status = _run("set", args, True, lambda admin: admin.set(budget))
    if isinstance(status, BudgetStatus):
        _print([status], args.json)
    return code


def list_command(args: argparse.Namespace) -> int:
    try:
        _identifier(args.workspace, "workspace")
    except InputError as exc:
        print(f"byok budgets list: {exc}", file=sys.stderr)
        return USAGE_EXIT
    code, found = _run("list", args, False, lambda admin: admin.list(args.workspace))
    if isinstance(found, list):
        _print(found, args.json)
    return code


def delete_command(args: argparse.Namespace) -> int:
    try:
        _identifier(args.workspace, "workspace")
        _identifier(args.automation, "--automation")
    except InputError as exc:
        print(f"byok budgets delete: {exc}", file=sys.stderr)
        return USAGE_EXIT
    code, deleted = _run("delete", args, False, lambda admin: admin.delete(args.workspace, args.automation))
    if code:
        return code
    scope = f"{args.workspace}/{args.automation}" if args.automation else args.workspace
    if not deleted:
        print(f"byok budgets delete: no budget for {scope}", file=sys.stderr)
        return 1
    print(f"deleted the budget of {scope}")
    return 0


def _print(found: list[BudgetStatus], as_json: bool) -> None:
    now = datetime.now(UTC)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps([s.as_json(now) for s in found], option=orjson.OPT_INDENT_2) + b"\n")
        sys.stdout.flush()
        return
    for status in found:
        print(_line(status))
    if not found:
        print("no budgets")
