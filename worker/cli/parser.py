"""The ``byok`` argument parser: a usage error (unknown verb, missing argument, bad value) is one line on stderr
and exit status 2, for every verb and sub-verb (subparsers are made of the same class)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any, NoReturn

USAGE_ERROR_EXIT = 2


class OneLineParser(argparse.ArgumentParser):
    """``argparse``'s own ``error`` prints the usage and then the message (several lines); this prints
    ``<prog>: <message>`` alone, on one line, and points at ``--help``."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        sys.stderr.write(f"{self.prog}: {text} (see {self.prog} --help)\n")
        sys.exit(USAGE_ERROR_EXIT)


def bounded(kind: Callable[[str], float], low: float, high: float | None = None) -> Callable[[str], Any]:
    """An argument ``type``: a number of ``kind`` (int or float) within [low, high]; anything else is a usage
    error naming the bounds (a negative ``--limit`` or a port above 65535 is refused before anything runs)."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if value < low or (high is not None and value > high) or value != value:  # NaN is never in range
            bounds = f"from {low:g} to {high:g}" if high is not None else f"at least {low:g}"
            raise argparse.ArgumentTypeError(f"expected {bounds}, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse
