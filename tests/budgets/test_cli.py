"""``byok budgets``: each usage or input error is one line on stderr with exit status 2; set, list, delete."""

from __future__ import annotations

import orjson
import pytest

from tests.broker import byok
from worker.settings import Settings

BAD = [
    (["set", "acme", "--limit-usd", "0"], "--limit-usd: input should be greater than 0"),
    (["set", "acme", "--limit-usd", "-3"], "--limit-usd: input should be greater than 0"),
    (["set", "acme", "--limit-usd", "nan"], "--limit-usd"),
    (["set", "acme", "--max-in-flight", "0"], "--max-in-flight: input should be greater than or equal to 1"),
    (["set", "acme"], "a limit"),
    (["set", "acme", "--limit-usd", "1", "--period", "week"], "invalid choice: 'week'"),
    (["set", "acme", "--limit-usd", "1", "--action", "stop"], "invalid choice: 'stop'"),
    (["set", "acme", "--limit-usd", "ten"], "invalid float value"),
    (["set", "ac me", "--limit-usd", "1"], "workspace must match"),
    (["set", "acme", "--automation", "a\n1", "--limit-usd", "1"], "--automation must match"),
    (["list", "a/b"], "workspace must match"),
    (["delete"], "the following arguments are required: workspace"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize(("args", "problem"), BAD, ids=[" ".join(a) for a, _ in BAD])
def test_an_invalid_command_is_one_line_and_exit_2(settings: Settings, args: list[str], problem: str) -> None:
    done = byok(settings, "budgets", *args, check=False)
    lines = done.stderr.decode().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and problem in lines[0], (done.returncode, lines)


def test_set_list_delete(settings: Settings) -> None:
    byok(settings, "budgets", "set", "acme", "--limit-usd", "12.5", "--period", "day")
    byok(settings, "budgets", "set", "acme", "--automation", "a1", "--max-in-flight", "3", "--action", "alert")
    byok(settings, "budgets", "set", "other", "--limit-usd", "1")
    listed = orjson.loads(byok(settings, "budgets", "list", "acme", "--json").stdout)
    assert [(b["automation_id"], b["limit_usd"], b["period"], b["action"], b["max_in_flight"]) for b in listed] == [
        (None, 12.5, "day", "block", None), ("a1", None, "month", "alert", 3)]
    assert all(b["spent_usd"] == 0 and b["reserved_usd"] == 0 for b in listed)
    assert len(orjson.loads(byok(settings, "budgets", "list", "--json").stdout)) == 3
    byok(settings, "budgets", "set", "acme", "--limit-usd", "20")  # replaces: month, block by default
    text = byok(settings, "budgets", "list", "acme").stdout.decode()
    assert "acme: block $20.000000 a month" in text
    assert byok(settings, "budgets", "delete", "acme", "--automation", "a1").stdout.decode().startswith("deleted")
    missing = byok(settings, "budgets", "delete", "acme", "--automation", "a1", check=False)
    assert missing.returncode == 1 and missing.stderr.decode().strip() == "byok budgets delete: no budget for acme/a1"


def test_a_weight_is_listed_and_only_the_whole_workspace_has_one(settings: Settings) -> None:
    byok(settings, "budgets", "set", "acme", "--weight", "4")
    listed = orjson.loads(byok(settings, "budgets", "list", "acme", "--json").stdout)
    assert [(b["limit_usd"], b["max_in_flight"], b["weight"]) for b in listed] == [(None, None, 4)]
    assert "acme: block no limit a month, weight 4;" in byok(settings, "budgets", "list", "acme").stdout.decode()
    for args, problem in ((["--weight", "0"], "--weight: input should be greater than or equal to 1"),
                          (["--weight", "101"], "--weight: input should be less than or equal to 100"),
                          (["--automation", "a1", "--weight", "2"], "a weight is the whole workspace's")):
        done = byok(settings, "budgets", "set", "acme", *args, check=False)
        assert done.returncode == 2 and problem in done.stderr.decode(), done.stderr
