"""``byok aggregator``: usage events into the consumption store, anomalies, alerts and the HTTP API."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys

from worker.aggregator.db import StoreError
from worker.aggregator.settings import AggregatorSettings
from worker.broker.connection import BrokerUnavailable
from worker.cli.common import configured_settings


def run_aggregator_command(_args: argparse.Namespace) -> int:
    from worker.aggregator.service import run_aggregator

    settings = configured_settings(AggregatorSettings)
    try:
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(run_aggregator(settings))
    except (BrokerUnavailable, StoreError, ValueError, OSError) as exc:  # broker, price table, store
        print(f"byok aggregator: {exc}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    aggregator = subparsers.add_parser(
        "aggregator", help="consume usage events into the consumption store, detect anomalies, serve the API"
    )
    aggregator.set_defaults(func=run_aggregator_command)

