"""Messages that must reach the broker even when the connection drops between publish and confirm.

A usage event (or a provider-call record) stands for a call the provider billed: once the call is made,
nothing else can produce it again (a redelivered job calls the provider anew, under a new id). So such a
message is kept here from its first publish until the broker confirms it; a publish that dies with its
channel leaves it here, and ``republish`` sends it again on the next connection. The broker may have
received the first copy after all: the aggregator counts each id once.

The outbox spans connections: the process attaches each new connection's ``Publisher`` to it. What it
holds is bounded by the work in flight (each message belongs to a job the worker is running or settling).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import aiormq
import structlog

from worker.broker.publisher import Publisher

log = structlog.get_logger("byok.broker")


class LostConnection(aiormq.exceptions.ChannelInvalidStateError):
    """The connection went away before the broker confirmed: the message stays kept for ``republish``."""


@dataclass(slots=True)
class Kept:
    exchange: str
    routing_key: str
    body: bytes
    message_id: str
    headers: dict[str, Any] | None = None
    confirmed: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class Outbox:
    def __init__(self) -> None:
        self._kept: dict[tuple[str, str, str], Kept] = {}
        self._publisher: Publisher | None = None
        self.republished = 0
        """Messages published again on a new connection, since the process started."""

    def __len__(self) -> int:
        return len(self._kept)

    def attach(self, publisher: Publisher | None) -> None:
        """The publisher of the current connection (None while there is none)."""
        self._publisher = publisher

    async def publish(self, exchange: str, routing_key: str, body: bytes, *, message_id: str,
                      headers: dict[str, Any] | None = None, until_confirmed: bool = False) -> None:
        """Publishes and returns once confirmed. If the connection is lost first, the message stays kept for
        ``republish``, and this raises, or with ``until_confirmed`` waits for that later confirm instead.
        A refusal by a live broker (not a lost connection) is raised and the message is not kept."""
        key = (exchange, routing_key, message_id)
        kept = self._kept.get(key)
        if kept is None:
            kept = self._kept[key] = Kept(exchange, routing_key, body, message_id, headers)
        try:
            lost = await self._attempt(kept)
        except Exception as exc:
            self._forget(key, kept, exc)
            raise
        if lost is None:
            self._forget(key, kept)
            return
        if not until_confirmed:
            raise lost
        await asyncio.shield(kept.confirmed)

    async def republish(self) -> int:
        """On a new connection: publishes again every message kept, concurrently; returns how many were
        confirmed now. Raises (keeping the rest) if this connection is lost too."""
        kept = list(self._kept.items())
        if not kept:
            return 0
        outcomes = await asyncio.gather(*(self._attempt(item) for _, item in kept), return_exceptions=True)
        confirmed = 0
        lost: BaseException | None = None
        for (key, item), outcome in zip(kept, outcomes, strict=True):
            if outcome is None:
                self._forget(key, item)
                confirmed += 1
            elif isinstance(outcome, LostConnection):
                lost = outcome
            else:  # refused by a live broker: sending it again would not help
                log.error("outbox.refused", routing_key=item.routing_key, error=type(outcome).__name__)
                self._forget(key, item, outcome)
        self.republished += confirmed
        if confirmed:
            log.info("outbox.republished", messages=confirmed, kept=len(self._kept))
        if lost is not None:
            raise lost
        return confirmed

    async def _attempt(self, kept: Kept) -> LostConnection | None:
        """None once confirmed; the loss when the connection went away first; raises a refusal."""
        publisher = self._publisher
        if publisher is None or publisher.closed:
            return LostConnection("no broker connection")
        try:
            await publisher.publish(kept.exchange, kept.routing_key, kept.body, message_id=kept.message_id,
                                    headers=kept.headers)
        except Exception as exc:
            if publisher.closed:
                return LostConnection(f"the connection was lost before the confirm ({type(exc).__name__})")
            raise
        return None

    def _forget(self, key: tuple[str, str, str], kept: Kept, error: BaseException | None = None) -> None:
        if self._kept.get(key) is kept:
            del self._kept[key]
        if not kept.confirmed.done():
            if error is None:
                kept.confirmed.set_result(None)
            else:
                kept.confirmed.set_exception(error)
                kept.confirmed.exception()  # retrieved: nobody may be waiting on it


__all__ = ["LostConnection", "Outbox"]
