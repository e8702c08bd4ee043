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


AGGREGATOR_SETTINGS = """\
main settings (environment; README.md lists them all):
  BYOK_AMQP_URL          the broker (amqp://guest:guest@127.0.0.1:5672/)
  BYOK_TOPOLOGY_PREFIX   prefix of every exchange and queue (byok)
  BYOK_STORE_URL         sqlite:///relative, sqlite:////absolute or postgresql://… (sqlite:///./byok.db)
  BYOK_API_LISTEN        the HTTP API and consumption page (127.0.0.1:8088)
  BYOK_API_TOKENS_FILE   bearer tokens' hashes and scopes (byok tokens create); unset: loopback only
  BYOK_PRICES_FILE       a price table replacing the shipped one
  BYOK_RUN_TAG           the job tag naming an agent run in the drivers report (agent_run)
  BYOK_MONTHLY_BUDGET_USD, BYOK_BUDGETS, BYOK_BUDGETS_FILE  budgets for budget alerts
  BYOK_LOG_LEVEL, BYOK_LOG_FORMAT  info, json
exit codes: 0 stopped, 1 store, price table or broker failure, 2 invalid settings
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    aggregator = subparsers.add_parser(
        "aggregator", help="consume usage events into the consumption store, detect anomalies, serve the API",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Consumes usage events (each event_id counted once) and failed results into the consumption\n"
                    "store, prices them, detects anomalies and budget overruns, publishes alerts, and serves the\n"
                    "HTTP API (/v1/workspaces/{ws}/consumption, /anomalies, /openapi.json, /healthz, /metrics) and\n"
                    "the consumption page at /.\n"
                    "Needs no Vault settings. Runs until Ctrl-C or SIGTERM.",
        epilog=AGGREGATOR_SETTINGS,
    )
    aggregator.set_defaults(func=run_aggregator_command)

