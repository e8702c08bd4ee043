"""Publishes stored alerts to ``<prefix>.alerts`` (persistent, publisher confirms), at least once.

The alerts table is the outbox: an alert is leased, published, confirmed, then marked published.
A crash between confirm and mark publishes it again after the lease; subscribers key on ``alert_id``.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiormq
import structlog

from worker.aggregator.metrics import AggregatorMetrics
from worker.aggregator.store import Store
from worker.broker.publisher import Publisher

log = structlog.get_logger("byok.aggregator")

CLAIM_LIMIT = 100


class AlertPublisher:
    def __init__(
        self, store: Store, exchange_name: str, metrics: AggregatorMetrics, *, publisher: Publisher | None = None,
        lease_s: float = 30.0, interval_s: float = 5.0,
    ) -> None:
        self._store = store
        self.publisher = publisher
        """The current connection's; replaced on every reconnect, None while there is none."""
        self._exchange_name = exchange_name
        self._metrics = metrics
        self._lease_s = lease_s
        self._interval_s = interval_s
        self._wake = asyncio.Event()

    def kick(self) -> None:
        """Publish soon: new alerts were stored."""
        self._wake.set()

    async def run(self) -> None:
        """Publishes pending alerts whenever kicked, and every ``interval_s`` (alerts left by a crash)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._interval_s)
            self._wake.clear()
            try:
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the outbox keeps them; the next round retries
                log.warning("alerts not published yet", error=f"{type(exc).__name__}: {exc}")

    async def flush(self) -> int:
        """Publishes everything pending now; returns how many were published."""
        published = 0
        while alerts := await self._store.claim_unpublished(CLAIM_LIMIT, self._lease_s):
            done: list[str] = []
            try:
                for alert in alerts:
                    await self._publish(alert.routing_key, alert.to_json(), alert.alert_id)
                    done.append(alert.alert_id)
            finally:
                if done:
                    await self._store.mark_published(done)
                rest = [a.alert_id for a in alerts if a.alert_id not in set(done)]
                if rest:
                    await self._store.release_claims(rest)
            for alert in alerts:
                log.info("alert published", workspace_id=alert.workspace_id, kind=alert.kind.value,
                         alert_id=alert.alert_id, dedupe_key=alert.dedupe_key)
            self._metrics.alerts_published.inc(len(done))
            published += len(done)
            if len(alerts) < CLAIM_LIMIT:
                break
        self._metrics.alerts_unpublished.set(await self._store.unpublished_alerts())
        return published

    async def _publish(self, routing_key: str, body: bytes, message_id: str) -> None:
        if self.publisher is None:
            raise aiormq.exceptions.ChannelInvalidStateError("not connected to the broker")
        # Not mandatory: an alert nobody subscribed to yet is not an error (it stays listed by the API).
        await self.publisher.publish(self._exchange_name, routing_key, body, message_id=message_id, mandatory=False)
