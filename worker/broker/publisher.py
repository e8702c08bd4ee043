"""Confirmed, persistent JSON publishing: the one publish path of the worker, the aggregator and ``byok submit``."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import aiormq
from aio_pika.abc import AbstractChannel, DeliveryMode

from worker.broker.names import CONTENT_TYPE


class Publisher:
    """Confirmed, persistent JSON publishing on one channel (opened with ``publisher_confirms=True``).

    Publishes go straight to the channel's aiormq layer with the properties aio-pika's ``Message`` would
    build (the same frames on the wire, ``mandatory`` as aio-pika's default): an ``aio_pika.Message`` per
    publish costs nine times as much CPU as the properties themselves (BENCHMARKS.md).
    """

    def __init__(self, channel: AbstractChannel) -> None:
        self._channel = channel

    @property
    def closed(self) -> bool:
        return bool(self._channel.is_closed)

    async def publish(
        self, exchange: str, routing_key: str, body: bytes, *, message_id: str | None = None,
        headers: dict[str, Any] | None = None, correlation_id: str | None = None, reply_to: str | None = None,
        mandatory: bool = True,
    ) -> None:
        """Returns once the broker confirmed the message; raises if it refused it or the channel is closed."""
        properties = aiormq.spec.Basic.Properties(
            content_type=CONTENT_TYPE,
            content_encoding="utf-8",
            delivery_mode=DeliveryMode.PERSISTENT.value,
            priority=0,
            message_id=message_id,
            correlation_id=correlation_id,
            reply_to=reply_to,
            headers=headers or {},
            timestamp=datetime.now(UTC),
        )
        if self._channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{self._channel!r} closed")
        channel = await self._channel.get_underlay_channel()
        await channel.basic_publish(body, exchange=exchange, routing_key=routing_key, properties=properties,
                                    mandatory=mandatory)
