"""A final outcome as the bytes it publishes, capped below the broker's message size, and the bounded memo
of them that settles a redelivered job again without a second provider call.

The memo keeps bytes, not models: the result and usage bodies it republishes, bounded in count and in total
bytes (oldest evicted first), so one large answer cannot keep a hundred megabytes alive.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from schemas.models import CompletionResult, ErrorCode, ResultError, Status, UsageEvent
from worker.broker.names import Topology, result_routing_key, usage_routing_key
from worker.jobs.pipeline import Completed, DeadLetter

RAW_USAGE_DROPPED = "byok_dropped_bytes"
"""The key ``raw_usage`` carries instead of a provider's usage object too large to publish."""


def dump(model: Any) -> bytes:
    return orjson.dumps(model.model_dump(mode="json", by_alias=True))


@dataclass(frozen=True, slots=True)
class Publication:
    exchange: str
    routing_key: str
    body: bytes
    message_id: str


@dataclass(frozen=True, slots=True)
class Settled:
    """What a ``Completed`` outcome publishes (result, usage event, dead letter) and logs."""

    result: Publication
    usage: Publication | None
    dead_letter: DeadLetter | None
    status: str
    error_code: str | None
    log_fields: dict[str, Any]

    @property
    def size(self) -> int:
        return len(self.result.body) + (len(self.usage.body) if self.usage else 0)


def _oversized(result: CompletionResult, size: int, cap: int) -> tuple[bytes, CompletionResult, DeadLetter]:
    """A failed ``provider_error`` result in place of one the broker would refuse (output, then metadata, out)."""
    reason = f"the result is larger than the {cap} bytes a message may carry ({size} bytes)"
    error = ResultError(code=ErrorCode.PROVIDER_ERROR, retryable=False, message=reason)
    failed = result.model_copy(update={"status": Status.FAILED, "output": None, "error": error})
    body = dump(failed)
    if len(body) > cap:
        failed = failed.model_copy(update={"metadata": None})
        body = dump(failed)
    return body, failed, DeadLetter(error.code, reason)


def _usage_body(usage: UsageEvent, cap: int) -> bytes:
    body = dump(usage)
    if len(body) > cap:
        # Billed: the event is published whatever its size; only the provider's raw object gives way.
        body = dump(usage.model_copy(update={"raw_usage": {RAW_USAGE_DROPPED: len(body)}}))
    return body


def settle(outcome: Completed, names: Topology, cap: int) -> Settled:
    """The publications of ``outcome``, none larger than ``cap`` bytes."""
    result, dead_letter = outcome.result, outcome.dead_letter
    body = dump(result)
    if len(body) > cap:
        body, result, dead_letter = _oversized(result, len(body), cap)
    usage = None
    if outcome.usage is not None:
        usage = Publication(names.usage_exchange,
                            usage_routing_key(outcome.usage.workspace_id, outcome.usage.provider.value),
                            _usage_body(outcome.usage, cap), outcome.usage.event_id)
    counts = result.usage
    error_code = result.error.code.value if result.error else None
    log_fields = {
        "job_id": result.job_id,
        "workspace_id": result.workspace_id,
        "automation_id": result.automation_id,
        "provider": result.provider.value if result.provider else None,
        "model": result.model,
        "status": result.status.value,
        "error_code": error_code,
        "attempts": result.attempts,
        "latency_ms": result.latency_ms,
        "input_tokens": counts.input_tokens if counts else None,
        "cache_read_tokens": counts.cache_read_tokens if counts else None,
        "cache_write_tokens": counts.cache_write_tokens if counts else None,
        "output_tokens": counts.output_tokens if counts else None,
        "reasoning_tokens": counts.reasoning_tokens if counts else None,
        "usage_reported": outcome.usage.usage_reported if outcome.usage else None,
    }
    routing_key = result_routing_key(result.workspace_id, result.automation_id, result.status.value)
    return Settled(Publication(names.results_exchange, routing_key, body, result.job_id), usage, dead_letter,
                   result.status.value, error_code, log_fields)


class SettledMemo:
    """The last settled outcomes by message key, at most ``max_entries`` and ``max_bytes`` of bodies."""

    def __init__(self, *, max_entries: int, max_bytes: int) -> None:
        self._entries: OrderedDict[str, Settled] = OrderedDict()
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self.total_bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Settled | None:
        return self._entries.get(key)

    def remember(self, key: str, settled: Settled) -> None:
        self._forget(key)
        if settled.size > self._max_bytes:
            return  # larger than the whole memo: a redelivery runs the job again
        self._entries[key] = settled
        self.total_bytes += settled.size
        while len(self._entries) > self._max_entries or self.total_bytes > self._max_bytes:
            self._forget(next(iter(self._entries)))

    def _forget(self, key: str) -> None:
        gone = self._entries.pop(key, None)
        if gone is not None:
            self.total_bytes -= gone.size
