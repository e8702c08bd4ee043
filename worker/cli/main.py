"""The ``byok`` command: one subcommand per process or task (README.md, "Commands")."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from worker import __version__
from worker.cli import aggregator, budgets, consumption, dlq, keys, simulate, submit, tokens, topology, worker
from worker.cli.common import run_command
from worker.cli.parser import OneLineParser


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="byok", description="Bring-your-own-key LLM completion worker.")
    parser.add_argument("--version", action="version", version=f"byok {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for verbs in (worker, aggregator, submit, consumption, budgets, keys, dlq, topology, tokens, simulate):
        verbs.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
