"""The outbox: a message whose confirm was lost with the connection is published again on the next one."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import aiormq
import pytest

from worker.broker.outbox import LostConnection, Outbox
from worker.broker.publisher import Publisher


@dataclass
class FakeChannelPublisher:
    """A publisher on one channel: confirms, or loses its channel before the confirm, or is refused."""

    mode: str = "confirm"  # confirm | drop | refuse
    sent: list[tuple[str, str, bytes, str | None]] = field(default_factory=list)
    closed: bool = False

    async def publish(self, exchange: str, routing_key: str, body: bytes, *, message_id: str | None = None,
                      **_: Any) -> None:
        self.sent.append((exchange, routing_key, body, message_id))
        await asyncio.sleep(0)  # the confirm comes back later, as from a broker
        if self.mode == "drop":
            self.closed = True
            raise aiormq.exceptions.ChannelInvalidStateError("connection lost")
        if self.mode == "refuse":
            raise aiormq.exceptions.DeliveryError(None, None)  # a nack, on a channel that stays open


def attached(outbox: Outbox, fake: FakeChannelPublisher) -> FakeChannelPublisher:
    outbox.attach(cast(Publisher, fake))
    return fake


async def test_a_confirmed_message_is_not_kept() -> None:
    outbox = Outbox()
    first = attached(outbox, FakeChannelPublisher())
    await outbox.publish("byok.usage", "ws.openai", b"e1", message_id="e1")
    assert len(outbox) == 0
    assert await outbox.republish() == 0
    assert first.sent == [("byok.usage", "ws.openai", b"e1", "e1")]


async def test_a_message_whose_connection_dropped_is_published_again_on_the_next_one() -> None:
    outbox = Outbox()
    attached(outbox, FakeChannelPublisher(mode="drop"))
    with pytest.raises(LostConnection):
        await outbox.publish("byok.usage", "ws.openai", b"e1", message_id="e1")
    assert len(outbox) == 1
    outbox.attach(None)  # between connections
    with pytest.raises(LostConnection):
        await outbox.publish("byok.usage", "ws.openai", b"e2", message_id="e2")
    second = attached(outbox, FakeChannelPublisher())
    assert await outbox.republish() == 2
    assert sorted(m[3] or "" for m in second.sent) == ["e1", "e2"]
    assert len(outbox) == 0 and outbox.republished == 2
    assert await outbox.republish() == 0, "a confirmed message is sent once, not on every connection"


async def test_until_confirmed_waits_for_the_republished_copy() -> None:
    outbox = Outbox()
    attached(outbox, FakeChannelPublisher(mode="drop"))
    waiting = asyncio.create_task(
        outbox.publish("byok.usage", "ws.openai.call", b"c1", message_id="c1", until_confirmed=True))
    await asyncio.sleep(0)  # let it try (and lose) the first connection
    await asyncio.sleep(0)
    assert not waiting.done(), "a call record must be confirmed before the call: it waits"
    second = attached(outbox, FakeChannelPublisher())
    assert await outbox.republish() == 1
    await asyncio.wait_for(waiting, 1)
    assert [m[3] for m in second.sent] == ["c1"]


async def test_a_refusal_by_a_live_broker_is_raised_and_not_kept() -> None:
    outbox = Outbox()
    attached(outbox, FakeChannelPublisher(mode="refuse"))
    with pytest.raises(aiormq.exceptions.DeliveryError):
        await outbox.publish("byok.usage", "ws.openai", b"e1", message_id="e1", until_confirmed=True)
    assert len(outbox) == 0


async def test_a_connection_lost_during_the_republish_keeps_what_was_not_confirmed() -> None:
    outbox = Outbox()
    attached(outbox, FakeChannelPublisher(mode="drop"))
    for n in range(3):
        with pytest.raises(LostConnection):
            await outbox.publish("byok.usage", "ws.openai", f"e{n}".encode(), message_id=f"e{n}")
    attached(outbox, FakeChannelPublisher(mode="drop"))
    with pytest.raises(LostConnection):
        await outbox.republish()
    assert len(outbox) == 3 and outbox.republished == 0
    third = attached(outbox, FakeChannelPublisher())
    assert await outbox.republish() == 3
    assert len(third.sent) == 3


async def test_the_same_message_published_twice_is_kept_once() -> None:
    """A redelivered job settled again from memory publishes the same usage event (same id) again."""
    outbox = Outbox()
    attached(outbox, FakeChannelPublisher(mode="drop"))
    for _ in range(2):
        with pytest.raises(LostConnection):
            await outbox.publish("byok.usage", "ws.openai", b"e1", message_id="e1")
    assert len(outbox) == 1
    second = attached(outbox, FakeChannelPublisher())
    assert await outbox.republish() == 1
    assert len(second.sent) == 1
