"""The ``byok`` argument parser: a usage error (unknown verb, missing argument, bad value) is one line on stderr
and exit status 2, for every verb and sub-verb (subparsers are made of the same class)."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

USAGE_ERROR_EXIT = 2


class OneLineParser(argparse.ArgumentParser):
    """``argparse``'s own ``error`` prints the usage and then the message (several lines); this prints
    ``<prog>: <message>`` alone, on one line, and points at ``--help``."""

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())
        sys.stderr.write(f"{self.prog}: {text} (see {self.prog} --help)\n")
        sys.exit(USAGE_ERROR_EXIT)
