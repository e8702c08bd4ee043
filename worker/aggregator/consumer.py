"""Batches from a queue: parse, store in one transaction, THEN ack. Where the aggregator settles messages.

- A message that does not parse is rejected without requeue at once (the reason is logged, the body
  never is): it could never be stored. Rejected is not dropped: the queues dead-letter to
  ``<prefix>.aggregator.dlx`` (queue ``<prefix>.aggregator.dead``), where an operator can read it.
- A batch the store refuses as data (``StoreDataError``) is retried one message at a time, and only the
  messages refused alone are rejected (dead-lettered likewise).
- Any other failure (database down, broker trouble) keeps the whole batch unacked and retries it with
  backoff; at shutdown it is left unacked for redelivery. Duplicates are harmless: ``event_id`` dedupes.
- Once stored, the batch is acked with one multiple-ack (one channel per consumer, so the delivery
  tags are only this queue's).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

import structlog
from aio_pika.abc import AbstractIncomingMessage, AbstractQueue
from pydantic import ValidationError

from worker.aggregator.db import StoreDataError
from worker.aggregator.metrics import AggregatorMetrics
from worker.redaction import redact_text

T = TypeVar("T")

log = structlog.get_logger("byok.aggregator")

Parser = Callable[[bytes], T | None]
Handler = Callable[[Sequence[T]], Awaitable[None]]

RETRY_FIRST_S = 0.2
RETRY_MAX_S = 10.0


class InvalidMessage(ValueError):
    """The message can never be processed; the text is a short reason safe to log."""


def describe(exc: ValidationError) -> str:
    """A validation error without the input values (a body could hold anything)."""
    problems = [
        f"{'.'.join(str(p) for p in error['loc']) or '<body>'}: {error['type']}"
        for error in exc.errors(include_input=False, include_url=False)
    ]
    return redact_text(f"{len(problems)} validation error(s): " + "; ".join(problems[:5]))


class _Stopping(Exception):
    """Shutdown while a batch was waiting to be retried: leave it unacked."""


class BatchConsumer(Generic[T]):
    def __init__(
        self, name: str, queue: AbstractQueue, parse: Parser[T], handle: Handler[T], metrics: AggregatorMetrics,
        *, batch_size: int, wait_s: float,
    ) -> None:
        self.name = name
        self._queue = queue
        self._parse = parse
        self._handle = handle
        self._metrics = metrics
        self._batch_size = batch_size
        self._wait_s = wait_s
        self._inbox: deque[AbstractIncomingMessage] = deque()
        self._arrived = asyncio.Event()
        self._stopping = asyncio.Event()
        self._consumer_tag: str | None = None
        self.batches = 0

    @property
    def consuming(self) -> bool:
        return self._consumer_tag is not None

    async def start(self) -> None:
        self._consumer_tag = await self._queue.consume(self._deliver, no_ack=False)

    async def _deliver(self, message: AbstractIncomingMessage) -> None:
        self._inbox.append(message)
        self._arrived.set()

    async def stop(self) -> None:
        """Stops taking messages; the batch in hand finishes, unstarted ones stay unacked."""
        self._stopping.set()
        self._arrived.set()
        if self._consumer_tag is not None:
            tag, self._consumer_tag = self._consumer_tag, None
            with contextlib.suppress(Exception):  # the channel may be gone already
                await self._queue.cancel(tag)

    async def run(self) -> None:
        while not self._stopping.is_set():
            batch = await self._collect()
            if batch:
                await self._process(batch)

    async def _wait_arrival(self, within_s: float | None) -> bool:
        self._arrived.clear()
        if self._inbox or self._stopping.is_set():
            return True
        try:
            await asyncio.wait_for(self._arrived.wait(), within_s)
        except TimeoutError:
            return False
        return True

    async def _collect(self) -> list[AbstractIncomingMessage]:
        while not self._inbox:
            await self._wait_arrival(None)
            if self._stopping.is_set():
                return []
        deadline = time.monotonic() + self._wait_s
        batch: list[AbstractIncomingMessage] = []
        while len(batch) < self._batch_size:
            while self._inbox and len(batch) < self._batch_size:
                batch.append(self._inbox.popleft())
            remaining = deadline - time.monotonic()
            if len(batch) >= self._batch_size or remaining <= 0 or self._stopping.is_set():
                break
            await self._wait_arrival(remaining)
        return batch

    async def _process(self, batch: list[AbstractIncomingMessage]) -> None:
        started = time.perf_counter()
        accepted: list[tuple[AbstractIncomingMessage, T]] = []
        settled: set[int] = set()
        for message in batch:
            try:
                item = self._parse(message.body)
            except InvalidMessage as exc:
                await self._reject(message, str(exc))
                settled.add(id(message))
                continue
            if item is not None:
                accepted.append((message, item))
        try:
            settled |= await self._store(accepted)
        except _Stopping:
            return
        self._metrics.messages.labels(queue=self.name, outcome="accepted").inc(len(batch) - len(settled))
        await self._ack([m for m in batch if id(m) not in settled])
        self.batches += 1
        self._metrics.batch_size.labels(queue=self.name).observe(len(batch))
        self._metrics.batch_seconds.labels(queue=self.name).observe(time.perf_counter() - started)
        self._metrics.last_batch.labels(queue=self.name).set_to_current_time()

    async def _store(self, accepted: list[tuple[AbstractIncomingMessage, T]]) -> set[int]:
        """Hands the items to the handler until it succeeds; returns the ids of messages rejected here."""
        if not accepted:
            return set()
        try:
            await self._retrying([item for _, item in accepted])
            return set()
        except StoreDataError as exc:
            self._metrics.store_errors.labels(queue=self.name, kind="data").inc()
            log.warning("batch refused by the store, isolating", queue=self.name, size=len(accepted), error=str(exc))
        rejected: set[int] = set()
        for message, item in accepted:
            try:
                await self._retrying([item])
            except StoreDataError as exc:
                await self._reject(message, f"refused by the store: {exc}")
                rejected.add(id(message))
        return rejected

    async def _retrying(self, items: list[T]) -> None:
        """Runs the handler, retrying anything but a data error with backoff until success or shutdown."""
        delay = RETRY_FIRST_S
        while True:
            try:
                await self._handle(items)
                return
            except StoreDataError:
                raise
            except Exception as exc:  # transient or unknown: keep the messages, retry
                self._metrics.store_errors.labels(queue=self.name, kind="transient").inc()
                log.error("batch not stored, will retry", queue=self.name, size=len(items),
                          error=redact_text(f"{type(exc).__name__}: {exc}"), retry_in_s=delay)
            if self._stopping.is_set():
                raise _Stopping
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            delay = min(delay * 2, RETRY_MAX_S)

    async def _reject(self, message: AbstractIncomingMessage, reason: str) -> None:
        self._metrics.messages.labels(queue=self.name, outcome="rejected").inc()
        log.warning("message rejected", queue=self.name, reason=redact_text(reason),
                    routing_key=message.routing_key, message_id=message.message_id)
        with contextlib.suppress(Exception):  # a closed channel redelivers it anyway
            await message.reject(requeue=False)

    async def _ack(self, messages: list[AbstractIncomingMessage]) -> None:
        if not messages:
            return
        try:
            await messages[-1].ack(multiple=True)
        except Exception as exc:  # stored already; a redelivery is deduplicated
            log.warning("ack failed; the batch will be redelivered and deduplicated", queue=self.name,
                        error=f"{type(exc).__name__}: {exc}")
