"""Where every job message is settled: publish what the outcome needs, with confirms, then ack.

The single rule: a message is acked only after everything it produced is confirmed by the broker.
A cancelled handler (shutdown) leaves its message unacked, so the broker redelivers it elsewhere;
a handler that crashes rejects with requeue, so the quorum queue's delivery limit ends a poison
message in the dead-letter queue instead of a loop. On the last delivery the queue allows, the worker
dead-letters a crashing job itself instead, with ``x-byok-error: delivery_limit`` and a reason naming the
failure: the broker's own dead-lettering would carry neither (only its ``x-death`` record).
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from aio_pika.abc import AbstractIncomingMessage
from aiormq.exceptions import ChannelInvalidStateError, DeliveryError, PublishError

from schemas.models import MAX_JOB_BYTES
from worker.broker.names import (
    DELAY_STEPS_MS,
    DELIVERY_LIMIT_ERROR,
    HEADER_ATTEMPTS,
    HEADER_DELIVERY_COUNT,
    HEADER_ERROR,
    HEADER_FIRST_SEEN,
    HEADER_NOT_BEFORE,
    HEADER_REASON,
    HEADER_TRUNCATED,
    MAX_MESSAGE_BYTES,
    MOVED_DROPPED_HEADERS,
    Topology,
)
from worker.broker.outbox import Outbox
from worker.broker.publisher import Publisher
from worker.jobs.job_headers import came_back_delayed, carried, carried_trace, delivery_of, reply_target
from worker.jobs.metrics import WorkerMetrics
from worker.jobs.pipeline import Completed, DeadLetter, JobRunner, Outcome, RetryLater, Unroutable
from worker.jobs.settled import Settled, SettledMemo, settle
from worker.jobs.tracing import Tracing

log = structlog.get_logger("byok.worker")


def delayed_headers(headers: Mapping[str, Any], retry: RetryLater, now: datetime) -> tuple[int, dict[str, Any]]:
    """The delay queue (its wait in ms) and the headers a job goes there with: the carried ones and the worker's.

    A wait longer than the longest queue (a provider's ``retry-after`` of ten minutes, say) carries the
    time it ends, and the job goes round the longest queue again until then.
    """
    step = delay_step_ms(retry.delay_s)
    kept = carried(headers)
    kept[HEADER_ATTEMPTS] = retry.attempts
    kept[HEADER_FIRST_SEEN] = retry.first_seen.isoformat()
    if retry.delay_s * 1000 > step:
        kept[HEADER_NOT_BEFORE] = (now + timedelta(seconds=retry.delay_s)).isoformat()
    return step, kept


def message_key(message: AbstractIncomingMessage) -> str:
    """The memo's key: the body's digest with the message id, which a publisher chooses freely (a redelivered
    message that reuses another job's id must not be settled with that job's result)."""
    digest = hashlib.sha256(message.body).hexdigest()
    return f"{message.message_id}:{digest}" if message.message_id else digest


def _channel_closed(message: AbstractIncomingMessage) -> bool:
    try:
        channel = message.channel
    except ChannelInvalidStateError:  # aio-pika's answer for a message whose channel is closed
        return True
    return bool(getattr(channel, "is_closed", False))


def delay_step_ms(delay_s: float) -> int:
    """The shortest fixed delay queue that waits at least ``delay_s`` (the longest one at most)."""
    index = bisect.bisect_left(DELAY_STEPS_MS, int(delay_s * 1000))
    return DELAY_STEPS_MS[min(index, len(DELAY_STEPS_MS) - 1)]


class JobConsumer:
    """Runs each delivery in a task of its own, so a lost channel does not abort a provider call midway.

    The last outcomes are remembered as the bodies they publish (bounded in count and total bytes, by message
    id). When the broker redelivers a message whose job already ran here (the connection dropped before its
    ack arrived), the outcome is settled again: the result is republished, the usage event keeps its
    ``event_id`` (counted once) and the provider is not called twice.
    Nothing it publishes is larger than ``max_message_bytes`` (default ``MAX_MESSAGE_BYTES``).
    ``delivery_limit`` is the jobs queue's ``x-delivery-limit``: a job whose handler crashes on the last
    delivery it allows is dead-lettered here with ``x-byok-error: delivery_limit`` (None: left to the broker).
    """

    def __init__(self, runner: JobRunner, publisher: Publisher, names: Topology, metrics: WorkerMetrics,
                 *, remember: int = 4096, remember_bytes: int = 64 * 1024 * 1024,
                 max_message_bytes: int | None = None, retry_window_s: float = 900.0,
                 outbox: Outbox | None = None, delivery_limit: int | None = None,
                 tracing: Tracing | None = None) -> None:
        self._runner = runner
        self._tracing = tracing
        self.publisher = publisher
        self._outbox = outbox
        self._names = names
        self._metrics = metrics
        self.recent = SettledMemo(max_entries=remember, max_bytes=remember_bytes)
        self._max_bytes = max_message_bytes or MAX_MESSAGE_BYTES
        self._retry_window_s = retry_window_s
        self._delivery_limit = delivery_limit
        self.on_publish_refused: Callable[[], None] | None = None
        """Called when the broker refuses (basic.nack) a publish: the service starts over on a new connection."""
        self._running: dict[str, asyncio.Future[None]] = {}
        self.in_flight: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    def on_message(self, message: AbstractIncomingMessage) -> asyncio.Task[None]:
        tracing = self._tracing
        task = asyncio.create_task(self._handle(message) if tracing is None else self._traced(tracing, message))
        self.in_flight.add(task)
        self.idle.clear()
        task.add_done_callback(self._done)
        return task

    def may_move(self, message: AbstractIncomingMessage) -> bool:
        """Whether a job may be moved to the overflow queue unrun: not a redelivery (it may have run here, and
        its memo is found only under redelivery), not back from a delay queue (its attempts would be lost)."""
        return not message.redelivered and not came_back_delayed(message.headers or {}, self._names)

    async def move_to_overflow(self, message: AbstractIncomingMessage) -> None:
        """Publish the job to the overflow queue as it came (but for ``MOVED_DROPPED_HEADERS``), confirmed,
        then ack it here. Cut between the two, the job is in both queues: a duplicate, never a loss."""
        headers = {k: v for k, v in (message.headers or {}).items() if k not in MOVED_DROPPED_HEADERS}
        await self.publisher.publish("", self._names.overflow_queue, message.body, message_id=message.message_id,
                                     headers=headers, correlation_id=message.correlation_id,
                                     reply_to=message.reply_to)
        await message.ack()
        self._metrics.moved.inc()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if not self.in_flight:
            self.idle.set()

    async def _traced(self, tracing: Tracing, message: AbstractIncomingMessage) -> None:
        """``_handle`` inside the job's span (tracing on): continued from the job's ``traceparent``."""
        with tracing.consuming(message.headers or {}, self._names.jobs_queue, message.message_id,
                                     len(message.body)):
            await self._handle(message)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        self._metrics.in_flight.inc()
        key = message_key(message)
        earlier = self._running.get(key)
        if earlier is not None:
            # A redelivery that overtook the first run of the same message (the connection dropped).
            await asyncio.wait([earlier])
        running: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[key] = running
        # A moved job's copy may meet the outcome of its original too (the original's ack was lost, it came
        # back redelivered and ran here first).
        seen = message.redelivered or message.routing_key == self._names.overflow_queue
        outcome: Outcome | Settled | None = self.recent.get(key) if seen else None
        try:
            if outcome is None:
                delivery = delivery_of(message, self._names, retry_window_s=self._retry_window_s,
                                       now=datetime.now(UTC))
                outcome = self._remember(key, await self._runner.run(delivery))
            await self._settle(message, outcome)
        except asyncio.CancelledError:
            log.info("job.cancelled", message_id=message.message_id, note="left unacked for redelivery")
            raise
        except DeliveryError as exc:
            if isinstance(exc, PublishError):  # returned as unroutable: not the channel's fault
                await self._crashed(message, exc)
            else:
                self._refused(message)
        except Exception as exc:
            if _channel_closed(message):
                log.warning("job.settle_interrupted", message_id=message.message_id, error=type(exc).__name__,
                            note="broker connection lost; settled again on redelivery")
            else:
                await self._crashed(message, exc)
        finally:
            running.set_result(None)
            if self._running.get(key) is running:
                del self._running[key]
            self._metrics.in_flight.dec()

    async def _crashed(self, message: AbstractIncomingMessage, exc: Exception) -> None:
        log.error("job.crashed", message_id=message.message_id, error=type(exc).__name__, exc_info=True)
        await self._requeue(message, exc)

    def _refused(self, message: AbstractIncomingMessage) -> None:
        """The broker refused a publish (basic.nack): not the job's fault. A channel that published to a
        quorum queue while its leader moved has been seen to refuse everything after, so the message stays
        unacked and the worker starts over on a new connection (the outcome is remembered: no second call)."""
        log.warning("job.publish_refused", message_id=message.message_id,
                    note="starting over on a new connection; settled again on redelivery")
        if self.on_publish_refused is not None:
            self.on_publish_refused()

    def _remember(self, key: str, outcome: Outcome) -> Outcome | Settled:
        if not isinstance(outcome, Completed):
            return outcome
        settled = settle(outcome, self._names, self._max_bytes)
        self.recent.remember(key, settled)
        return settled

    async def _settle(self, message: AbstractIncomingMessage, outcome: Outcome | Settled) -> None:
        if isinstance(outcome, Settled):
            await self._publish_completed(message, outcome)
        elif isinstance(outcome, RetryLater):
            await self._publish_delayed(message, outcome)
        elif isinstance(outcome, Unroutable):
            log.warning("job.unroutable", message_id=message.message_id, error_code=outcome.dead_letter.code.value,
                        reason=outcome.dead_letter.reason)
            if self._tracing is not None:
                self._tracing.job_outcome({"status": "failed"}, outcome.dead_letter.code.value)
            self._metrics.finished("failed", outcome.dead_letter.code.value)
            await self._dead_letter(message, outcome.dead_letter)
        await message.ack()

    def _send(self, exchange: str, routing_key: str, body: bytes, message_id: str, correlation_id: str | None,
              trace: dict[str, Any], *, kept: bool = False) -> Awaitable[None]:
        """A result, reply or usage event, carrying the job's trace context on: the job's own ``traceparent`` /
        ``tracestate`` as they came, or (tracing on) the context of a PRODUCER span around the publish.
        ``kept``: through the outbox, when there is one."""
        if self._tracing is None:
            return self._publish(exchange, routing_key, body, message_id, correlation_id, trace or None, kept)
        return self._send_traced(self._tracing, exchange, routing_key, body, message_id, correlation_id, kept)

    async def _send_traced(self, tracing: Tracing, exchange: str, routing_key: str, body: bytes, message_id: str,
                           correlation_id: str | None, kept: bool) -> None:
        with tracing.sending(exchange, routing_key, message_id) as headers:
            await self._publish(exchange, routing_key, body, message_id, correlation_id, headers, kept)

    def _publish(self, exchange: str, routing_key: str, body: bytes, message_id: str, correlation_id: str | None,
                 headers: dict[str, Any] | None, kept: bool) -> Awaitable[None]:
        if kept and self._outbox is not None:
            return self._outbox.publish(exchange, routing_key, body, message_id=message_id, headers=headers)
        return self.publisher.publish(exchange, routing_key, body, message_id=message_id,
                                      correlation_id=correlation_id, headers=headers)

    async def _publish_completed(self, message: AbstractIncomingMessage, settled: Settled) -> None:
        result = settled.result
        trace = carried_trace(message.headers) if self._tracing is None else {}
        publishes = [
            self._send(result.exchange, result.routing_key, result.body, result.message_id, message.correlation_id,
                       trace)
        ]
        reply_to = reply_target(message.reply_to, self._names)
        if reply_to:
            publishes.append(
                self._send("", reply_to, result.body, result.message_id, message.correlation_id, trace)
            )
        elif message.reply_to:
            log.warning("job.reply_to_refused", message_id=message.message_id,
                        reason="reply_to names a queue of the topology; the result goes to the results exchange only")
        if settled.usage is not None:
            usage = settled.usage
            # Through the outbox when there is one: kept until confirmed, across a lost connection (the job may run
            # again elsewhere under a new id, but this billed call has no other usage event).
            publishes.append(self._send(usage.exchange, usage.routing_key, usage.body, usage.message_id, None, trace,
                                        kept=True))
        if settled.dead_letter is not None:
            publishes.append(self._dead_letter(message, settled.dead_letter))
        if self._tracing is not None:
            self._tracing.job_outcome(settled.log_fields, settled.error_code)
        await asyncio.gather(*publishes)
        self._metrics.finished(settled.status, settled.error_code)
        log.info("job.finished", **settled.log_fields)

    async def _dead_letter(self, message: AbstractIncomingMessage, dead_letter: DeadLetter) -> None:
        await self._dead_letter_as(message, dead_letter.code.value, dead_letter.reason)

    async def _dead_letter_as(self, message: AbstractIncomingMessage, code: str, reason: str) -> None:
        headers = carried(message.headers or {})
        headers[HEADER_ERROR] = code
        headers[HEADER_REASON] = reason
        body = message.body
        limit = min(MAX_JOB_BYTES, self._max_bytes)
        if len(body) > limit:
            # Larger than any valid job (never replayable as it is): its beginning, and its size in a header.
            headers[HEADER_TRUNCATED] = len(body)
            body = body[:limit]
        await self.publisher.publish(
            self._names.dead_letter_exchange, "", body, message_id=message.message_id,
            headers=headers, correlation_id=message.correlation_id, reply_to=message.reply_to,
        )
        self._metrics.dead_lettered(code)

    async def _publish_delayed(self, message: AbstractIncomingMessage, retry: RetryLater) -> None:
        step, headers = delayed_headers(message.headers or {}, retry, datetime.now(UTC))
        if self._tracing is not None:
            self._tracing.carry_current(headers)
        await self.publisher.publish(
            self._names.delay_exchange, str(step), message.body, message_id=message.message_id,
            headers=headers, correlation_id=message.correlation_id, reply_to=message.reply_to,
        )
        self._metrics.delayed.inc()
        log.info("job.delayed", message_id=message.message_id, delay_ms=step, attempts=retry.attempts,
                 reason=retry.reason)

    async def _requeue(self, message: AbstractIncomingMessage, crash: Exception) -> None:
        if _channel_closed(message):
            return  # the delivery died with its channel; the broker redelivers it
        earlier = (message.headers or {}).get(HEADER_DELIVERY_COUNT)
        earlier = earlier if isinstance(earlier, int) and not isinstance(earlier, bool) else 0
        if self._delivery_limit is not None and earlier >= self._delivery_limit:
            # Requeued now, the broker would drop it past its limit without saying why: say it here.
            reason = (f"the worker failed on each of the {earlier + 1} deliveries the queue allows "
                      f"(last: {type(crash).__name__}); not attempted again")
            try:
                await self._dead_letter_as(message, DELIVERY_LIMIT_ERROR, reason)
                await message.ack()
                return
            except Exception:
                log.warning("job.dead_letter_failed", message_id=message.message_id, note="left to the broker")
        try:
            await message.reject(requeue=True)
        except Exception:
            log.warning("job.requeue_failed", message_id=message.message_id)
