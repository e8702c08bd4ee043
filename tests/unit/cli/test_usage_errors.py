"""Every ``byok`` verb reports a usage error (unknown verb, missing argument, bad value) as one line on stderr,
with exit status 2, and nothing on stdout."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from tests.unit.cli.test_help import ALL
from worker.cli.main import main

LEAVES = {verb: parser for verb, parser in ALL.items()
          if not any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)}
"""Verbs that take their own arguments (not ``byok keys``, which takes a sub-verb)."""


def usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as ended:
        main(argv)
    captured = capsys.readouterr()
    assert ended.value.code == 2, (argv, captured.err)
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1 and captured.err.endswith("\n"), (argv, captured.err)
    return captured.err


def valid_args(parser: argparse.ArgumentParser) -> list[str]:
    """Values for the required arguments: the first choice, or a plain word."""
    args: list[str] = []
    for action in parser._actions:
        if not action.option_strings and action.dest != "help" and action.nargs not in ("?", "*"):  # required
            args.append(str(next(iter(action.choices))) if action.choices else "ws1")
        elif action.required:
            args += [action.option_strings[0], str(next(iter(action.choices))) if action.choices else "ws1"]
    return args


def bad_value(parser: argparse.ArgumentParser) -> list[str] | None:
    """An option given a value it refuses (a number that is not one, a choice not offered), if the verb has one."""
    for action in parser._actions:
        if action.option_strings and action.nargs != 0 and getattr(action.type, "__name__", "") in ("int", "float"):
            return [action.option_strings[0], "not-a-number"]
        if action.option_strings and action.choices:
            return [action.option_strings[0], "no-such-choice"]
    return None


def verb_argv(verb: str) -> list[str]:
    return verb.split()[1:]


@pytest.mark.parametrize("verb", sorted(ALL))
def test_an_unknown_option_is_one_line_and_exit_2(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = ALL[verb]
    err = usage_error([*verb_argv(verb), *valid_args(parser), "--no-such-option"], capsys)
    assert err.startswith("byok")
    if not verb.startswith("byok keys"):  # `byok keys` never echoes a stray argument: it may be a key
        assert "--no-such-option" in err


@pytest.mark.parametrize("verb", sorted(v for v, p in LEAVES.items() if valid_args(p)))
def test_a_missing_argument_is_one_line_and_exit_2(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    err = usage_error(verb_argv(verb), capsys)
    assert "required" in err


@pytest.mark.parametrize("verb", sorted(v for v, p in LEAVES.items() if bad_value(p)))
def test_a_bad_value_is_one_line_and_exit_2(verb: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = LEAVES[verb]
    wrong = bad_value(parser)
    assert wrong is not None
    err = usage_error([*verb_argv(verb), *valid_args(parser), *wrong], capsys)
    assert wrong[0] in err


@pytest.mark.parametrize("argv", [["no-such-verb"], [], ["keys"], ["keys", "no-such-verb"], ["dlq", "purge"],
                                  ["topology", "drop"]])
def test_an_unknown_or_missing_verb_is_one_line_and_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    usage_error(argv, capsys)


@pytest.mark.parametrize(("argv", "expected"), [
    (["dlq", "list", "--limit", "-5"], "byok dlq list: argument --limit: expected at least 1, got '-5'"),
    (["dlq", "replay", "--limit", "0"], "byok dlq replay: argument --limit: expected at least 1, got '0'"),
    (["simulate-provider", "--port", "70000"], "argument --port: expected from 0 to 65535, got '70000'"),
    (["simulate-provider", "--latency-ms", "nan"], "argument --latency-ms: expected at least 0, got 'nan'"),
    (["submit", "--file", "-", "--timeout", "0"], "argument --timeout: expected at least 0.001, got '0'"),
    (["keys", "retire", "ws1", "--before-version", "0"], "argument --before-version: expected at least 1"),
])
def test_a_number_out_of_range_is_a_usage_error(
    argv: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert expected in usage_error(argv, capsys)


def test_every_verb_is_covered() -> None:
    assert {"byok worker", "byok topology declare", "byok keys seal", "byok dlq replay", "byok consumption"} <= set(ALL)
    assert {"byok dlq list", "byok submit", "byok simulate-provider"} <= {v for v, p in LEAVES.items() if bad_value(p)}


def test_the_real_command_says_one_line() -> None:
    ran = subprocess.run([sys.executable, "-m", "worker.cli.main", "keys", "seal", "ws", "--provider", "nope"],
                         capture_output=True, text=True, timeout=60, check=False)
    assert ran.returncode == 2 and ran.stdout == ""
    assert ran.stderr.splitlines() == [
        "byok keys seal: argument --provider: invalid choice: 'nope' (choose from 'openai', 'anthropic', "
        "'mistral', 'ollama') (see byok keys seal --help)"]
