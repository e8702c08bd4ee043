"""What every ``byok`` verb shares: one way to load settings, report them invalid and warn about typos."""

from __future__ import annotations

import argparse
import sys
from typing import TypeVar

from pydantic_settings import BaseSettings

from worker.aggregator.settings import AggregatorSettings
from worker.logging_setup import configure_logging
from worker.settings import InvalidSettings, ProcessSettings, WorkerSettings, load_settings, unknown_settings

EVERY_SETTING = (WorkerSettings, AggregatorSettings)
"""Between them, every ``BYOK_*`` setting of every command."""

INVALID_SETTINGS_EXIT = 2

S = TypeVar("S", bound=BaseSettings)


def configured_settings(kind: type[S]) -> S:
    """The verb's settings (only what it uses); a process's logging is configured from them."""
    settings = load_settings(kind)
    if isinstance(settings, ProcessSettings):
        configure_logging(settings.log_level, settings.log_format)
    return settings


def warn_unknown_settings() -> None:
    for name in unknown_settings(EVERY_SETTING):
        print(f"byok: warning: {name} is not a byok setting and is ignored (misspelled?)", file=sys.stderr)


def run_command(args: argparse.Namespace) -> int:
    """Runs the parsed verb; invalid settings end it with one line on stderr and exit status 2."""
    warn_unknown_settings()
    try:
        code: int = args.func(args)
    except InvalidSettings as exc:
        print(f"byok {args.command}: {exc}", file=sys.stderr)
        return INVALID_SETTINGS_EXIT
    return code
