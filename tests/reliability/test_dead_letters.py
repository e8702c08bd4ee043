"""Poison messages end in the dead-letter queue; `byok dlq` reads them without loss and replays them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aio_pika
import httpx
import orjson
import pytest
from aio_pika.abc import AbstractChannel

from schemas.models import Provider
from tests.broker import BrokerTap, byok, job_body, publish_jobs, running
from tests.conftest import Sealer
from tests.waiting import wait_until
from worker.broker.names import HEADER_ERROR, HEADER_REASON, Topology
from worker.broker.topology import declare_topology, topology_spec
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
    # Dead-lettered by the worker on the last delivery the queue allows, saying why (the broker's own
    # dead-lettering past the limit would carry only its x-death record).
    assert dead.headers[HEADER_ERROR] == "delivery_limit"
    assert dead.headers[HEADER_REASON] == (
        f"the worker failed on each of the {settings.delivery_limit + 1} deliveries the queue allows "
        "(last: RuntimeError); not attempted again")
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


@pytest.mark.timeout(60)
async def test_a_job_the_broker_dead_letters_at_its_delivery_limit_is_read_and_kept_as_delivery_limit(
    settings: Settings,
) -> None:
    """No worker lived to say why (each was killed mid-job, its delivery returned unacked): the broker dead-letters
    the job past the limit with only its x-death record. ``byok dlq`` reads it as ``delivery_limit`` with a
    reason from that record, and the copy it puts back carries ``x-byok-error`` and ``x-byok-reason``."""
    names = Topology(settings.topology_prefix)
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        await declare_topology(channel, topology_spec(names, delivery_limit=settings.delivery_limit))
        await publish_jobs(settings, [job_body("killed-1", "ws-killed", {"provider": "ollama", "name": "m"})])
        jobs = await channel.get_queue(names.jobs_queue)
        for _ in range(settings.delivery_limit + 1):  # the first delivery and each redelivery, never settled
            delivery = await wait_until(lambda: jobs.get(no_ack=False, fail=False), what="the job delivered again")
            await delivery.nack(requeue=True)
        dead = await channel.get_queue(names.dead_letter_queue)
        await wait_until(lambda: _depth(channel, names.dead_letter_queue), what="the job in the dead-letter queue")
        assert await jobs.get(no_ack=True, fail=False) is None

        listed = await dlq_list(settings)
        expected = (f"delivered from {names.jobs_queue} as often as its delivery limit allows, never with an "
                    "outcome (a worker was killed or lost the broker each time); dead-lettered by the broker")
        assert [(v["job_id"], v["error"], v["reason"]) for v in listed] == [("killed-1", "delivery_limit", expected)]
        kept = await dead.get(no_ack=True)
    assert kept.headers is not None
    assert (kept.headers[HEADER_ERROR], kept.headers[HEADER_REASON]) == ("delivery_limit", expected)
    assert orjson.loads(kept.body)["job_id"] == "killed-1", "the original body is kept"


async def _depth(channel: AbstractChannel, queue: str) -> int:
    declared = await channel.declare_queue(queue, passive=True)
    return declared.declaration_result.message_count or 0
