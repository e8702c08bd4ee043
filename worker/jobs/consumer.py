"""Where every job message is settled: publish what the outcome needs, with confirms, then ack.

The single rule: a message is acked only after everything it produced is confirmed by the broker.
A cancelled handler (shutdown) leaves its message unacked, so the broker redelivers it elsewhere;
a handler that crashes rejects with requeue, so the quorum queue's delivery limit ends a poison
message in the dead-letter queue instead of a loop.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
from collections import OrderedDict
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import structlog
from aio_pika.abc import AbstractIncomingMessage
from aio_pika.message import IncomingMessage
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import ChannelInvalidStateError

from worker.broker.names import (
    DELAY_STEPS_MS,
    HEADER_ATTEMPTS,
    HEADER_ERROR,
    HEADER_FIRST_SEEN,
    HEADER_NOT_BEFORE,
    HEADER_REASON,
    Topology,
    result_routing_key,
    usage_routing_key,
)
from worker.broker.publisher import Publisher
from worker.jobs.metrics import WorkerMetrics
from worker.jobs.pipeline import Completed, DeadLetter, Delivery, JobRunner, Outcome, RetryLater, Unroutable

log = structlog.get_logger("byok.worker")


def _dump(model: Any) -> bytes:
    return orjson.dumps(model.model_dump(mode="json", by_alias=True))


def _header_time(headers: Mapping[str, Any], name: str) -> datetime | None:
    raw = headers.get(name)
    if not isinstance(raw, str | bytes):
        return None
    try:
        found = datetime.fromisoformat(raw.decode() if isinstance(raw, bytes) else raw)
    except ValueError:
        return None
    return found if found.tzinfo is not None else None


def delivery_of(message: AbstractIncomingMessage) -> Delivery:
    headers = message.headers or {}
    attempts = headers.get(HEADER_ATTEMPTS)
    return Delivery(
        body=message.body,
        attempts_before=attempts if isinstance(attempts, int) and attempts >= 0 else 0,
        first_seen=_header_time(headers, HEADER_FIRST_SEEN),
        not_before=_header_time(headers, HEADER_NOT_BEFORE),
    )


def delayed_headers(headers: Mapping[str, Any], retry: RetryLater, now: datetime) -> tuple[int, dict[str, Any]]:
    """The delay queue (its wait in ms) and the headers a job goes there with.

    A wait longer than the longest queue (a provider's ``retry-after`` of ten minutes, say) carries the
    time it ends, and the job goes round the longest queue again until then.
    """
    step = delay_step_ms(retry.delay_s)
    kept = {key: value for key, value in headers.items()
            if not key.startswith("x-death") and key != HEADER_NOT_BEFORE}
    kept[HEADER_ATTEMPTS] = retry.attempts
    kept[HEADER_FIRST_SEEN] = retry.first_seen.isoformat()
    if retry.delay_s * 1000 > step:
        kept[HEADER_NOT_BEFORE] = (now + timedelta(seconds=retry.delay_s)).isoformat()
    return step, kept


def message_key(message: AbstractIncomingMessage) -> str:
    return message.message_id or hashlib.sha256(message.body).hexdigest()


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

    The last outcomes are remembered (bounded, by message id). When the broker redelivers a message whose
    job already ran here (the connection dropped before its ack arrived), the outcome is settled again: the
    result is republished, the usage event keeps its ``event_id`` (counted once) and the provider is not
    called twice.
    """

    def __init__(self, runner: JobRunner, publisher: Publisher, names: Topology, metrics: WorkerMetrics,
                 *, remember: int = 4096) -> None:
        self._runner = runner
        self.publisher = publisher
        self._names = names
        self._metrics = metrics
        self._recent: OrderedDict[str, Completed] = OrderedDict()
        self._recent_max = remember
        self._running: dict[str, asyncio.Future[None]] = {}
        self.in_flight: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    async def on_delivery(self, delivered: DeliveredMessage) -> None:
        """aiormq's consumer callback: the job runs in a task of its own, tracked in ``in_flight``.

        It returns at once, so aiormq's delivery task (cancelled when the channel closes) never holds a
        job, and no further task or shield is needed per message as with aio-pika's ``Queue.consume``.
        """
        self.on_message(IncomingMessage(delivered, no_ack=False))

    def on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.create_task(self._handle(message))
        self.in_flight.add(task)
        self.idle.clear()
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.in_flight.discard(task)
        if not self.in_flight:
            self.idle.set()

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        self._metrics.in_flight.inc()
        key = message_key(message)
        earlier = self._running.get(key)
        if earlier is not None:
            # A redelivery that overtook the first run of the same message (the connection dropped).
            await asyncio.wait([earlier])
        running: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._running[key] = running
        outcome: Outcome | None = self._recent.get(key) if message.redelivered else None
        try:
            if outcome is None:
                outcome = await self._runner.run(delivery_of(message))
                self._remember(key, outcome)
            await self._settle(message, outcome)
        except asyncio.CancelledError:
            log.info("job.cancelled", message_id=message.message_id, note="left unacked for redelivery")
            raise
        except Exception as exc:
            if _channel_closed(message):
                log.warning("job.settle_interrupted", message_id=message.message_id, error=type(exc).__name__,
                            note="broker connection lost; settled again on redelivery")
            else:
                log.error("job.crashed", message_id=message.message_id, error=type(exc).__name__, exc_info=True)
                await self._requeue(message)
        finally:
            running.set_result(None)
            if self._running.get(key) is running:
                del self._running[key]
            self._metrics.in_flight.dec()

    def _remember(self, key: str, outcome: Outcome) -> None:
        if isinstance(outcome, Completed):
            self._recent[key] = outcome
            while len(self._recent) > self._recent_max:
                self._recent.popitem(last=False)

    async def _settle(self, message: AbstractIncomingMessage, outcome: Outcome) -> None:
        if isinstance(outcome, Completed):
            await self._publish_completed(message, outcome)
        elif isinstance(outcome, RetryLater):
            await self._publish_delayed(message, outcome)
        elif isinstance(outcome, Unroutable):
            log.warning("job.unroutable", message_id=message.message_id, error_code=outcome.dead_letter.code.value,
                        reason=outcome.dead_letter.reason)
            self._metrics.finished("failed", outcome.dead_letter.code.value)
            await self._dead_letter(message, outcome.dead_letter)
        await message.ack()

    async def _publish_completed(self, message: AbstractIncomingMessage, outcome: Completed) -> None:
        result = outcome.result
        body = _dump(result)
        publishes = [
            self.publisher.publish(
                self._names.results_exchange,
                result_routing_key(result.workspace_id, result.automation_id, result.status.value),
                body,
                message_id=result.job_id,
                correlation_id=message.correlation_id,
            )
        ]
        if message.reply_to:
            publishes.append(
                self.publisher.publish(
                    "", message.reply_to, body, message_id=result.job_id, correlation_id=message.correlation_id
                )
            )
        if outcome.usage is not None:
            usage = outcome.usage
            publishes.append(
                self.publisher.publish(
                    self._names.usage_exchange,
                    usage_routing_key(usage.workspace_id, usage.provider.value),
                    _dump(usage),
                    message_id=usage.event_id,
                )
            )
        if outcome.dead_letter is not None:
            publishes.append(self._dead_letter(message, outcome.dead_letter))
        await asyncio.gather(*publishes)
        self._log_outcome(outcome)

    def _log_outcome(self, outcome: Completed) -> None:
        result = outcome.result
        error_code = result.error.code.value if result.error else None
        self._metrics.finished(result.status.value, error_code)
        usage = result.usage
        log.info(
            "job.finished",
            job_id=result.job_id,
            workspace_id=result.workspace_id,
            automation_id=result.automation_id,
            provider=result.provider.value if result.provider else None,
            model=result.model,
            status=result.status.value,
            error_code=error_code,
            attempts=result.attempts,
            latency_ms=result.latency_ms,
            input_tokens=usage.input_tokens if usage else None,
            cache_read_tokens=usage.cache_read_tokens if usage else None,
            cache_write_tokens=usage.cache_write_tokens if usage else None,
            output_tokens=usage.output_tokens if usage else None,
            reasoning_tokens=usage.reasoning_tokens if usage else None,
            usage_reported=outcome.usage.usage_reported if outcome.usage else None,
        )

    async def _dead_letter(self, message: AbstractIncomingMessage, dead_letter: DeadLetter) -> None:
        headers = dict(message.headers or {})
        headers[HEADER_ERROR] = dead_letter.code.value
        headers[HEADER_REASON] = dead_letter.reason
        await self.publisher.publish(
            self._names.dead_letter_exchange, "", message.body, message_id=message.message_id,
            headers=headers, correlation_id=message.correlation_id, reply_to=message.reply_to,
        )
        self._metrics.dead_lettered(dead_letter.code.value)

    async def _publish_delayed(self, message: AbstractIncomingMessage, retry: RetryLater) -> None:
        step, headers = delayed_headers(message.headers or {}, retry, datetime.now(UTC))
        await self.publisher.publish(
            self._names.delay_exchange, str(step), message.body, message_id=message.message_id,
            headers=headers, correlation_id=message.correlation_id, reply_to=message.reply_to,
        )
        self._metrics.delayed.inc()
        log.info("job.delayed", message_id=message.message_id, delay_ms=step, attempts=retry.attempts,
                 reason=retry.reason)

    async def _requeue(self, message: AbstractIncomingMessage) -> None:
        if _channel_closed(message):
            return  # the delivery died with its channel; the broker redelivers it
        try:
            await message.reject(requeue=True)
        except Exception:
            log.warning("job.requeue_failed", message_id=message.message_id)
