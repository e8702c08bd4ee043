"""Budgets through the aggregator: ``/v1/workspaces/{ws}/budgets``, spent and reserved in the consumption, and
budget alerts raised from the stored budgets (block and alert alike)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp

from tests.aggregator.helpers import usage
from tests.aggregator.test_service import accepted, broker, get_json, publish_usage, quiet_rules
from tests.broker import running_aggregator
from tests.budgets.helpers import write_prices
from tests.waiting import wait_until
from worker.broker.names import Topology
from worker.settings import Settings


async def _send(method: str, url: str, **kwargs: object) -> tuple[int, dict[str, object]]:
    async with aiohttp.ClientSession() as session, session.request(method, url, **kwargs) as response:  # type: ignore[arg-type]
        return response.status, await response.json()


async def test_budgets_api_consumption_and_alerts(settings: Settings, store_url: str, tmp_path: Path) -> None:
    prices_file = write_prices(tmp_path / "prices.json")
    agg = quiet_rules(settings, prices_file=prices_file, store_url=store_url)
    async with running_aggregator(agg) as running, broker(settings) as channel:
        url = f"{running.api_url}/v1/workspaces/acme/budgets"
        status, body = await _send("PUT", url, json={"limit_usd": 0.001, "period": "day", "weight": 2})
        assert status == 200 and body["budgets"][0]["limit_usd"] == 0.001  # type: ignore[index]
        assert body["budgets"][0]["weight"] == 2  # type: ignore[index]
        status, body = await _send("PUT", url, json={"automation_id": "a1", "max_in_flight": 2, "action": "alert"})
        assert status == 200 and len(body["budgets"]) == 2  # type: ignore[arg-type]
        for bad, problem in (({"limit_usd": 0}, "greater than 0"), ({"max_in_flight": 0}, "greater than or equal"),
                             ({}, "a limit"), ({"period": "week"}, "period"), ({"color": 1}, "unknown field"),
                             ({"automation_id": "a2", "weight": 2}, "whole workspace"), ({"weight": 0}, "weight")):
            status, body = await _send("PUT", url, json=bad)
            assert status == 400 and problem in str(body["message"]), (bad, body)
        status, body = await _send("DELETE", url, params={"automation_id": "nope"})
        assert status == 404

        # 100 output tokens at $10 a million: $0.001 each; two calls cross 80 % and 100 % of the day's $0.001.
        now = datetime.now(UTC)
        await publish_usage(channel, Topology(settings.topology_prefix),
                            [usage(now, workspace="acme", output_tokens=60), usage(now, workspace="acme",
                                                                                    output_tokens=45)])
        anomalies_url = f"{running.api_url}/v1/workspaces/acme/anomalies"
        found = await wait_until(accepted(lambda: get_json(anomalies_url, {"kind": "budget"}),
                                          lambda b: len(b["anomalies"]) >= 2), what="two budget alerts")
        keys = sorted(a["dedupe_key"] for a in found["anomalies"])
        assert [k.split(":")[2:5] for k in keys] == [["acme", "day", "100pct"], ["acme", "day", "80pct"]], keys
        consumption = await get_json(f"{running.api_url}/v1/workspaces/acme/consumption")
        (day_budget,) = [b for b in consumption["budgets"] if b["automation_id"] is None]
        assert abs(day_budget["spent_usd"] - 0.00105) < 1e-12 and day_budget["reserved_usd"] == 0
        tomorrow = datetime(now.year, now.month, now.day, tzinfo=UTC) + timedelta(days=1)
        assert day_budget["resets_at"] == tomorrow.isoformat()

        status, body = await _send("DELETE", url, params={"automation_id": "a1"})
        assert status == 200 and [b["automation_id"] for b in body["budgets"]] == [None]  # type: ignore[union-attr]
