"""``CallRecorder`` on an outbox whose connection drops: a call cut while its started record waits for the
broker's confirm is never made, and its record is closed as not billed on the next connection."""

from __future__ import annotations

import asyncio
from typing import cast

import orjson

from schemas.models import CompletionJob, Provider
from tests.unit.broker.test_outbox import FakeChannelPublisher, attached
from worker.broker.outbox import Outbox
from worker.jobs.call_hooks import ProviderCall
from worker.jobs.call_records import CallRecorder
from worker.keys.endpoint import Endpoint

JOB = CompletionJob.model_validate({
    "job_id": "j1", "workspace_id": "ws",
    "model": {"provider": "openai", "name": "gpt-4o-mini", "sealed_key": "vault:v1:c2VhbGVk"},
    "input": {"messages": [{"role": "user", "content": "hi"}]},
})


async def test_a_call_cut_while_its_record_awaits_the_confirm_is_closed_as_not_billed() -> None:
    outbox = Outbox()
    attached(outbox, FakeChannelPublisher(mode="drop"))
    recorder = CallRecorder(outbox, "byok.usage")
    call = ProviderCall(JOB, "call-1", Endpoint.resolve(Provider.OPENAI, None))
    made: list[str] = []

    async def run_call() -> None:
        async with recorder(call):
            made.append(call.call_id)

    running = asyncio.create_task(run_call())
    for _ in range(3):
        await asyncio.sleep(0)  # the started record is published and loses its connection: the call waits
    assert not running.done() and made == []
    running.cancel()  # a deadline or the shutdown grace cuts it
    await asyncio.gather(running, return_exceptions=True)
    assert made == [], "the provider was never called"

    second = attached(outbox, FakeChannelPublisher())
    assert await outbox.republish() == 2
    records = {cast(str, m[3]): orjson.loads(m[2]) for m in second.sent}
    assert records["call-1"]["state"] == "started"
    assert records["call-1:not_billed"]["state"] == "not_billed"
    assert records["call-1:not_billed"]["call_id"] == "call-1"


async def test_a_call_whose_record_is_confirmed_is_made_and_left_to_its_usage_event() -> None:
    outbox = Outbox()
    first = attached(outbox, FakeChannelPublisher())
    call = ProviderCall(JOB, "call-2", Endpoint.resolve(Provider.OPENAI, None))
    async with CallRecorder(outbox, "byok.usage")(call):
        pass
    assert [m[3] for m in first.sent] == ["call-2"] and len(outbox) == 0
