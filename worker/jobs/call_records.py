"""The call hook that records every provider call that may be billed, before it is made.

Before the request goes out, a ``byok.provider_call.v1`` record (``state: started``, no prompt, no key) is
published to the usage exchange with routing key ``<workspace>.<provider>.call`` and confirmed by the
broker; only then is the provider called. The usage event that follows (same id: ``call_id`` is its
``event_id``) completes it. A call that ends with an answer the provider does not bill (an error status)
or that was never sent is closed by a ``state: not_billed`` record, and so is a call cut while its started
record waited for the broker's confirm (the call was never made, but the record may reach the aggregator:
received before the confirm was lost, or kept for the next connection). Anything else (the worker killed
mid-call, the usage event lost with the connection) leaves the call open, and the aggregator reports it in
``unreported_calls`` once ``BYOK_UNREPORTED_GRACE_S`` has passed.

Both go through the worker's ``Outbox``: a record whose confirm is lost with the connection is sent again on
the next one, and the call waits for that confirm rather than going out unrecorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import orjson
import structlog

from schemas.models import CallState, ErrorCode, ProviderCallRecord
from worker.broker.names import call_routing_key
from worker.broker.outbox import LostConnection, Outbox
from worker.failures import JobFailure
from worker.jobs.call_hooks import ProviderCall

log = structlog.get_logger("byok.worker")

NEVER_SENT = frozenset({ErrorCode.INVALID_JOB, ErrorCode.KEY_UNAVAILABLE})
"""Failures raised before the request left the worker (the adapter refused it, the address is not called)."""


def not_billed(error: BaseException) -> bool:
    """Whether a call that failed with ``error`` certainly cost nothing: the provider answered with an error
    status, or the request was never sent. A timeout, a dropped connection, an unreadable 200 or a cancelled
    call may have been billed, so they stay open (reported as unreported calls)."""
    if not isinstance(error, JobFailure):
        return False
    status = error.provider_status
    if status is not None:
        return not 200 <= status < 300
    return error.code in NEVER_SENT


class CallRecorder:
    """``JobRunner(call_hooks=[CallRecorder(outbox, exchange)])``: one instance serves every call."""

    def __init__(self, outbox: Outbox, usage_exchange: str) -> None:
        self._outbox = outbox
        self._exchange = usage_exchange

    @contextlib.asynccontextmanager
    async def __call__(self, call: ProviderCall) -> AsyncIterator[None]:
        job = call.job
        record = ProviderCallRecord(
            call_id=call.call_id, job_id=job.job_id, workspace_id=job.workspace_id,
            automation_id=job.automation_id, provider=job.model.provider, model=job.model.name,
            started_at=datetime.now(UTC),
        )
        routing_key = call_routing_key(job.workspace_id, job.model.provider.value)
        try:
            await self._outbox.publish(self._exchange, routing_key, _dump(record), message_id=call.call_id,
                                       until_confirmed=True)
        except (asyncio.CancelledError, LostConnection):  # cut while waiting (a deadline, the shutdown grace)
            await self._close(record, routing_key)
            raise
        try:
            yield
        except BaseException as error:
            if not_billed(error):
                await self._close(record, routing_key)
            raise

    async def _close(self, record: ProviderCallRecord, routing_key: str) -> None:
        closed = record.model_copy(update={"state": CallState.NOT_BILLED, "ended_at": datetime.now(UTC)})
        try:
            # Its own message id: the outbox keys by it, and the started record may still be kept there.
            await self._outbox.publish(self._exchange, routing_key, _dump(closed),
                                       message_id=f"{record.call_id}:not_billed")
        except Exception as exc:  # kept for the next connection, or refused: the call's own failure matters
            log.warning("call_record.close_unconfirmed", error=type(exc).__name__)


def _dump(record: ProviderCallRecord) -> bytes:
    return orjson.dumps(record.model_dump(mode="json", by_alias=True, exclude_none=True))


__all__ = ["CallRecorder", "not_billed"]
