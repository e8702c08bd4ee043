"""``byok simulate-provider``: the local server that speaks the four provider protocols."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from worker.logging_setup import configure_logging


def _simulate(args: argparse.Namespace) -> int:
    from worker.testing.simulator import serve_forever

    configure_logging("info", "console")
    print(f"provider simulator on http://{args.host}:{args.port}", file=sys.stderr)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(args.host, args.port, args.latency_ms / 1000.0))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands = subparsers
    sim = commands.add_parser("simulate-provider", help="serve the provider simulator (OpenAI, Anthropic, …)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8099)
    sim.add_argument("--latency-ms", type=float, default=0.0, help="added to every answer")
    sim.set_defaults(func=_simulate)

