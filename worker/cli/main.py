"""The ``byok`` command: one subcommand per process or task (README.md, "Commands")."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from worker import __version__
from worker.cli import aggregator, consumption, dlq, keys, simulate, submit, worker


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="byok", description="Bring-your-own-key LLM completion worker.")
    parser.add_argument("--version", action="version", version=f"byok {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for verbs in (worker, aggregator, submit, consumption, keys, dlq, simulate):
        verbs.register(commands)
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
