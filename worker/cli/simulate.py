"""``byok simulate-provider``: the local server that speaks the four provider protocols."""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from worker.cli.parser import bounded
from worker.logging_setup import configure_logging


def _simulate(args: argparse.Namespace) -> int:
    configure_logging("info", "console")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.host, args.port, args.latency_ms / 1000.0))
    return 0


async def _serve(host: str, port: int, latency_s: float) -> None:
    from schemas.models import Provider
    from worker.testing.simulator import LEDGER_PATH, ProviderSimulator

    simulator = ProviderSimulator(latency_s=latency_s)
    await simulator.start(host, port)
    try:
        # The base URLs a job's model.base_url (and `byok keys seal --base-url`) takes, once the port is bound.
        print(f"provider simulator on {simulator.root_url} (Ctrl-C stops it); base URLs:")
        for provider in Provider:
            print(f"  {provider.value:<10} {simulator.base_url(provider)}")
        print(f"ledger: {simulator.root_url}{LEDGER_PATH}", flush=True)
        await asyncio.Event().wait()
    finally:
        await simulator.stop()


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands = subparsers
    sim = commands.add_parser(
        "simulate-provider", help="serve the provider simulator (OpenAI, Anthropic, …)",
        description="A local server speaking the four provider protocols (OpenAI, Anthropic, Mistral, Ollama) for "
                    "development, demos and benchmarks. It prints the base URL of each protocol; model names "
                    "starting with sim- inject failures; GET /_sim/ledger lists the calls it answered.",
        epilog="reads no BYOK_* settings. A worker calling it needs its host in BYOK_ALLOWED_HOSTS.",
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=bounded(int, 0, 65535), default=8099, help="0 for any free port (default 8099)")
    sim.add_argument("--latency-ms", type=bounded(float, 0), default=0.0, help="added to every answer")
    sim.set_defaults(func=_simulate)

