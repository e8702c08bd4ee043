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
    from worker.keys.auth import VaultAuthError

    settings = configured_settings(WorkerSettings)
    try:
        event_loop.run(Worker(settings).run(), settings.event_loop)
    except (BrokerUnavailable, VaultAuthError) as exc:
        print(f"byok worker: {exc}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    commands = subparsers
    worker = commands.add_parser("worker", help="consume completion jobs (settings from BYOK_* variables)")
    worker.set_defaults(func=_run_worker)

