"""Every ``byok`` verb's --help says what it does, and the long-running ones name the settings they read."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

from worker.aggregator.settings import AggregatorSettings
from worker.cli.main import build_parser
from worker.settings import Settings

SETTINGS = {f"BYOK_{name.upper()}" for name in (*Settings.model_fields, *AggregatorSettings.model_fields)}


def verbs(parser: argparse.ArgumentParser, path: str = "byok") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"{path} {name}", sub
                yield from verbs(sub, f"{path} {name}")


ALL = dict(verbs(build_parser()))


def test_every_verb_is_walked() -> None:
    assert {"byok worker", "byok aggregator", "byok keys seal", "byok dlq show", "byok simulate-provider"} <= set(ALL)


@pytest.mark.parametrize("verb", sorted(ALL))
def test_every_verb_says_what_it_does_and_what_it_reads(verb: str) -> None:
    parser = ALL[verb]
    assert parser.description and len(parser.description) > 40, f"{verb} --help has no description"
    assert parser.epilog, f"{verb} --help names no settings or exit codes"
    named = set(re.findall(r"BYOK_[A-Z_]+[A-Z]", parser.epilog))
    assert named <= SETTINGS, f"{verb} --help names settings that do not exist: {named - SETTINGS}"


@pytest.mark.parametrize(("verb", "main_settings"), [
    ("byok worker", {"BYOK_AMQP_URL", "BYOK_VAULT_ADDR", "BYOK_VAULT_TOKEN", "BYOK_ALLOWED_HOSTS", "BYOK_PREFETCH",
                     "BYOK_TOPOLOGY_PREFIX", "BYOK_METRICS_LISTEN"}),
    ("byok aggregator", {"BYOK_AMQP_URL", "BYOK_STORE_URL", "BYOK_API_LISTEN", "BYOK_PRICES_FILE",
                         "BYOK_TOPOLOGY_PREFIX"}),
])
def test_the_processes_name_their_main_settings(verb: str, main_settings: set[str]) -> None:
    help_text = ALL[verb].format_help()
    assert main_settings <= set(re.findall(r"BYOK_[A-Z_]+[A-Z]", help_text)), help_text
