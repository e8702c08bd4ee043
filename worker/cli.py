"""The ``byok`` command: one subcommand per process or task (DESIGN.md, "Processes and interfaces")."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from worker import __version__, dlq, event_loop
from worker.aggregator import commands as aggregator_commands
from worker.keys_cli import register as register_keys
from worker.logging_setup import configure_logging
from worker.settings import Settings, load_settings
from worker.submit import SubmitError, load_job, pretty, submit


def _settings() -> Settings:
    settings = load_settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _run_worker(_args: argparse.Namespace) -> int:
    from worker.service import BrokerUnavailable, Worker
    from worker.vault_auth import VaultAuthError

    settings = _settings()
    try:
        event_loop.run(Worker(settings).run(), settings.event_loop)
    except (BrokerUnavailable, VaultAuthError) as exc:
        print(f"byok worker: {exc}", file=sys.stderr)
        return 1
    return 0


def _submit(args: argparse.Namespace) -> int:
    try:
        job, body = load_job(args.file)
    except (SubmitError, OSError) as exc:
        print(f"byok submit: {exc}", file=sys.stderr)
        return 2
    result = asyncio.run(submit(_settings(), job, body, wait_s=args.timeout if args.wait else None))
    if not args.wait:
        print(f"published {job.job_id}")
        return 0
    if result is None:
        print(f"byok submit: no result for {job.job_id} within {args.timeout}s", file=sys.stderr)
        return 1
    print(pretty(result))
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from worker.simulator import serve_forever

    configure_logging("info", "console")
    print(f"provider simulator on http://{args.host}:{args.port}", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(args.host, args.port, args.latency_ms / 1000.0))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byok", description="Bring-your-own-key LLM completion worker.")
    parser.add_argument("--version", action="version", version=f"byok {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    worker = commands.add_parser("worker", help="consume completion jobs (settings from BYOK_* variables)")
    worker.set_defaults(func=_run_worker)

    job = commands.add_parser("submit", help="publish a completion job")
    job.add_argument("--file", required=True, help="job JSON file, or - for stdin")
    job.add_argument("--wait", action="store_true", help="wait for the result and print it")
    job.add_argument("--timeout", type=float, default=120.0, help="seconds to wait with --wait (default 120)")
    job.set_defaults(func=_submit)

    sim = commands.add_parser("simulate-provider", help="serve the provider simulator (OpenAI, Anthropic, …)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8099)
    sim.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer")
    sim.set_defaults(func=_simulate)

    register_keys(commands)
    dlq.register(commands)
    aggregator_commands.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except ValidationError as exc:
        # Field names and messages only: pydantic's input echo could be a secret setting's value.
        problems = "; ".join(f"BYOK_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors())
        print(f"byok {args.command}: invalid settings: {problems}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
