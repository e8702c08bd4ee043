"""``byok worker``: consume completion jobs until SIGTERM."""

from __future__ import annotations

import argparse
import sys

from worker import event_loop
from worker.cli.common import configured_settings
from worker.settings import WorkerSettings


def _run_worker(_args: argparse.Namespace) -> int:
    from worker.broker.connection import BrokerUnavailable
    from worker.jobs.service import Worker
    from worker.jobs.tracing import TracingConfigError
    from worker.keys.auth import VaultAuthError

    settings = configured_settings(WorkerSettings)
    try:
        worker = Worker(settings)
    except TracingConfigError as exc:
        print(f"byok worker: {exc}", file=sys.stderr)
        return 2
    try:
        event_loop.run(worker.run(), settings.event_loop)
    except (BrokerUnavailable, VaultAuthError) as exc:
        print(f"byok worker: {exc}", file=sys.stderr)
        return 1
    return 0


WORKER_SETTINGS = """\
main settings (environment; README.md lists them all):
  BYOK_AMQP_URL          the broker (amqp://guest:guest@127.0.0.1:5672/)
  BYOK_TOPOLOGY_PREFIX   prefix of every exchange and queue (byok)
  BYOK_VAULT_ADDR        Vault or OpenBao (http://127.0.0.1:8200)
  BYOK_VAULT_AUTH        token, approle or kubernetes; with token: BYOK_VAULT_TOKEN (may only decrypt)
  BYOK_ALLOWED_HOSTS     comma-separated hosts the worker may call (set it to reach a local simulator)
  BYOK_PREFETCH          jobs in flight (64)
  BYOK_DECLARE_TOPOLOGY  declare the topology (true); false: only check it exists (`byok topology declare`)
  BYOK_SHUTDOWN_GRACE_S  drain period after SIGTERM (30)
  BYOK_METRICS_LISTEN    /livez, /readyz, /metrics (127.0.0.1:9464)
  BYOK_LOG_LEVEL, BYOK_LOG_FORMAT  info, json
  OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME  traces over OTLP/HTTP (off when no OTEL_* exporter is set)
  BYOK_STORE_URL         the aggregator's store: block budgets and in-flight caps are reserved there
  BYOK_BUDGET_REFRESH_S, BYOK_BUDGET_LEASE_S, BYOK_BUDGET_FAIL_MODE  2, 60, closed (README, Budgets)
exit codes: 0 stopped, 1 broker unreachable for BYOK_RECONNECT_MAX_S or Vault login failed, 2 invalid settings
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands = subparsers
    worker = commands.add_parser(
        "worker", help="consume completion jobs (settings from BYOK_* variables)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Consumes completion jobs from the jobs queue (declaring the broker topology first, or with\n"
                    "BYOK_DECLARE_TOPOLOGY=false checking that `byok topology declare` made it), unseals\n"
                    "each workspace's provider key through Vault transit (decrypt only), calls the provider and\n"
                    "publishes the result and a usage event. Runs until SIGTERM or Ctrl-C, then drains.",
        epilog=WORKER_SETTINGS,
    )
    worker.set_defaults(func=_run_worker)

