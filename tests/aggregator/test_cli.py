"""``byok consumption`` and ``byok aggregator`` through the ``byok`` parser."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson
import pytest

from tests.aggregator.helpers import at
from tests.aggregator.test_consumption import TOTALS, dataset
from tests.services import free_port
from tests.waiting import wait_until
from worker.aggregator.consumption import consumption
from worker.aggregator.drivers import drivers
from worker.aggregator.pricing import load_prices
from worker.aggregator.store import Store
from worker.cli.main import build_parser


def parser() -> argparse.ArgumentParser:
    return build_parser()


@pytest.fixture
async def store_env(tmp_path: Path, prices_file: str, monkeypatch: pytest.MonkeyPatch) -> str:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    store = await Store.open(url)
    await store.ingest(dataset())
    await store.close()
    monkeypatch.setenv("BYOK_STORE_URL", url)
    monkeypatch.setenv("BYOK_PRICES_FILE", prices_file)
    return url


async def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    code: int = await asyncio.to_thread(args.func, args)
    return code


async def test_consumption_json_is_the_query_dict(
    store_env: str, prices_file: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(["consumption", "acme", "--group-by", "day,model", "--since", "2025-03-01", "--json"]) == 0
    printed = orjson.loads(capsys.readouterr().out)
    store = await Store.open(store_env)
    try:
        expected = await consumption(store, load_prices(prices_file), "acme", since=at("2025-03-01 00:00"),
                                     group_by=("day", "model"))
    finally:
        await store.close()
    assert printed == {**expected, "budgets": []}, "the query dict, and the workspace's budgets (none here)"
    assert printed["totals"] == TOTALS


async def test_consumption_table_has_rows_totals_and_the_estimate_note(
    store_env: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(["consumption", "acme"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("workspace acme")
    header = lines[2].split()
    assert header[:4] == ["provider", "model", "requests", "unreported"]
    rows = {line.split()[1]: line for line in lines[4:7]}
    assert set(rows) == {"claude-x", "mistral-mystery", "gpt-4o-mini"}
    assert rows["mistral-mystery"].endswith("unpriced")
    assert rows["gpt-4o-mini"].split()[2] == "4!"  # requests, one of them without usage
    assert rows["claude-x"].split()[2] == "1"
    total = next(line for line in lines if line.startswith("total"))
    assert total.split()[1:4] == ["6!", "0", "7,600"]  # requests, unreported calls, input
    assert any(line.startswith("! 1 of the requests came back without usage") for line in lines)
    assert total.endswith("0.022300*")
    assert any(line.startswith("Costs are estimates") for line in lines)
    assert any("mistral/mistral-mystery" in line for line in lines)


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["consumption", "acme", "--since", "2025-03-01T00:00:00"], 2, "offset"),
        (["consumption", "acme", "--group-by", "colour"], 2, "colour"),
        (["consumption", "bad.ws"], 2, "workspace"),
    ],
)
async def test_bad_arguments_exit_2(
    store_env: str, argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run(argv) == code
    assert message in capsys.readouterr().err


async def test_a_missing_store_exits_1_and_creates_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("BYOK_STORE_URL", f"sqlite:///{tmp_path / 'none.db'}")
    assert await run(["consumption", "acme"]) == 1
    assert "no consumption store" in capsys.readouterr().err
    assert not (tmp_path / "none.db").exists()


async def test_the_aggregator_command_serves_and_stops_on_sigterm(
    amqp_url: str, topology_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    env = {**os.environ, "BYOK_AMQP_URL": amqp_url, "BYOK_TOPOLOGY_PREFIX": topology_prefix,
           "BYOK_STORE_URL": f"sqlite:///{tmp_path / 'agg.db'}", "BYOK_API_LISTEN": f"127.0.0.1:{port}",
           "BYOK_LOG_FORMAT": "console"}
    process = subprocess.Popen([sys.executable, "-m", "worker.cli", "aggregator"], env=env,
                               cwd=Path(__file__).parents[2], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as session:

            async def healthy() -> bool:
                assert process.poll() is None, process.stdout.read().decode() if process.stdout else ""
                try:
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                        return response.status == 200
                except aiohttp.ClientConnectionError:
                    return False

            await wait_until(healthy, what="the aggregator's /healthz answering 200")
        process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(process.wait, 15) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


async def test_the_aggregator_exits_1_when_the_broker_stays_unreachable(tmp_path: Path) -> None:
    env = {**os.environ, "BYOK_AMQP_URL": f"amqp://guest:guest@127.0.0.1:{free_port()}/",
           "BYOK_RECONNECT_MAX_S": "1", "BYOK_STORE_URL": f"sqlite:///{tmp_path / 'agg.db'}",
           "BYOK_API_LISTEN": "127.0.0.1:0", "BYOK_LOG_FORMAT": "console"}
    ran = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "worker.cli", "aggregator"], env=env,
                                  cwd=Path(__file__).parents[2], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 1, ran.stderr[-2000:]
    assert "byok aggregator: the broker has been unreachable for" in ran.stderr
    assert "broker.unreachable" in ran.stderr


async def test_drivers_json_is_the_report_and_the_table_labels_its_estimates(
    store_env: str, prices_file: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BYOK_RUN_TAG", "session")
    assert await run(["consumption", "acme", "--drivers", "--json", "--until", "2025-03-03"]) == 0
    printed = orjson.loads(capsys.readouterr().out)
    store = await Store.open(store_env)
    try:
        expected = await drivers(store, load_prices(prices_file), "acme", until=at("2025-03-03 00:00"),
                                 run_tag="session")
    finally:
        await store.close()
    assert printed == expected
    assert sum(a["requests"] for a in printed["automations"]) == TOTALS["requests"]
    assert await run(["consumption", "acme", "--drivers"]) == 0
    table = capsys.readouterr().out
    assert "(estimate)" in table and "Columns marked ~ are estimates" in table
    assert "No calls carry the run tag 'session'." in table


async def test_drivers_refuse_a_group_by(store_env: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert await run(["consumption", "acme", "--drivers", "--group-by", "model"]) == 2
    assert "--group-by does not apply to --drivers" in capsys.readouterr().err
