"""Poison messages end in the dead-letter queue; `byok dlq` reads them without loss and replays them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import httpx
import orjson
import pytest

from schemas.models import Provider
from tests.broker import BrokerTap, byok, job_body, publish_jobs, running
from tests.conftest import Sealer
from tests.waiting import wait_until
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-test-DeadLetters0123456789abcdef"


class ExplodingTransport(httpx.AsyncBaseTransport):
    """A provider connection whose library fails in a way nobody planned for: the handler crashes."""

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        raise RuntimeError("unexpected failure inside the HTTP stack")


@pytest.mark.timeout(90)
async def test_a_message_that_keeps_crashing_its_handler_ends_in_the_dead_letter_queue(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
             "sealed_key": seal("ws-poison", KEY, Provider.OPENAI, base_url)}
    async with running(Worker(settings, provider_transport=ExplodingTransport)) as worker:
        await publish_jobs(settings, [job_body("poison-1", "ws-poison", model)])
        await tap.wait_for(lambda: len(tap.dead) == 1, timeout_s=60)
    dead = tap.dead[0]
    assert dead.headers.get("x-first-death-reason") == "delivery_limit"
    assert orjson.loads(dead.body)["job_id"] == "poison-1", "the original body is kept"
    assert tap.results == []
    crashes = sum(s.value for m in worker.metrics.jobs.collect() for s in m.samples if s.name.endswith("_total"))
    assert crashes == 0, "a crash is not an outcome"


@pytest.mark.timeout(90)
async def test_dlq_list_show_and_replay(settings: Settings, simulator: ProviderSimulator, seal: Sealer) -> None:
    base_url = simulator.base_url(Provider.OPENAI)
    sealed = seal("ws-dlq", KEY, Provider.OPENAI, base_url)
    broken = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url + "/wrong", "sealed_key": sealed}
    fixed = {**broken, "base_url": base_url}
    other = {**fixed, "name": "sim-quota"}
    # No tap here: the dead letters stay in their queue for `byok dlq`.
    async with running(Worker(settings)):
        await publish_jobs(settings, [
            job_body("dlq-1", "ws-dlq", broken), job_body("dlq-2", "ws-dlq", broken),
            job_body("dlq-3", "ws-dlq", other), b"not json",
        ])
        await dlq_flow(settings, simulator)


async def dlq_list(settings: Settings, *args: str) -> list[dict[str, object]]:
    result = await asyncio.to_thread(byok, settings, "dlq", "list", "--json", *args)
    listed: list[dict[str, object]] = orjson.loads(result.stdout)
    return listed


async def dlq_list_when(
    settings: Settings, accept: Callable[[list[dict[str, object]]], bool], what: str
) -> list[dict[str, object]]:
    async def accepted() -> list[dict[str, object]] | None:
        listed = await dlq_list(settings)
        return listed if accept(listed) else None

    return await wait_until(accepted, what=f"{what} in `byok dlq list`")


async def dlq_flow(settings: Settings, simulator: ProviderSimulator) -> None:
    listed = await dlq_list_when(settings, lambda listed: len(listed) == 4, "four dead letters")
    assert sorted(str(v["error"]) for v in listed) == ["invalid_job", "key_unavailable", "key_unavailable",
                                                        "quota_exhausted"], listed
    again = await dlq_list(settings)
    assert len(again) == 4, "listing removes nothing"
    only = await dlq_list(settings, "--reason", "key_unavailable")
    assert sorted(v["job_id"] for v in only) == ["dlq-1", "dlq-2"]
    table = (await asyncio.to_thread(byok, settings, "dlq", "list")).stdout.decode()
    assert "4 dead letter(s)" in table

    message_id = only[0]["message_id"]
    shown = orjson.loads((await asyncio.to_thread(byok, settings, "dlq", "show", str(message_id))).stdout)
    assert shown["headers"]["x-byok-error"] == "key_unavailable"
    assert orjson.loads(shown["body"])["job_id"] == only[0]["job_id"], "the original body is shown"

    # A replay of the broken jobs fails again (nothing was fixed): they come back to the dead-letter queue.
    # The fix here is on the publisher's side, so replay only the quota one after "raising the limit".
    replayed = orjson.loads(
        (await asyncio.to_thread(byok, settings, "dlq", "replay", "--json", "--reason", "quota_exhausted")).stdout)
    assert [v["job_id"] for v in replayed] == ["dlq-3"]
    # The replayed job failed again and is back, the others never left.
    await dlq_list_when(settings, lambda listed: sorted(str(v["job_id"]) for v in listed) == [
        "None", "dlq-1", "dlq-2", "dlq-3"], "the replayed job back next to the three others")
    assert len(simulator.ledger.calls) == 2, "dlq-3 was called once, then once more after the replay"
    # dlq-1/dlq-2 point at base_url + "/wrong", a path with no route: only the all-requests record would show them.
    assert [r.path for r in simulator.ledger.requests()] == ["/openai/v1/chat/completions"] * 2, (
        "the key_unavailable jobs reached the simulator")
