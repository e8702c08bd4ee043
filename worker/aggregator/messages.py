"""Parsing of the two message kinds the aggregator consumes; anything unusable is ``InvalidMessage``."""

from __future__ import annotations

from pydantic import ValidationError

from schemas.models import PROVIDER_CALL_SCHEMA, TOKEN_BUCKETS, CompletionResult, ProviderCallRecord, Status, UsageEvent
from worker.aggregator.consumer import InvalidMessage, describe

# Far above any real call, far below the 64-bit integers both stores hold.
MAX_TOKENS_PER_EVENT = 10**12
SHAPE_COUNTS = ("system_chars", "input_chars", "messages", "tools", "images")


def _no_nul(body: bytes) -> None:
    # PostgreSQL text and jsonb cannot hold U+0000; refuse it here rather than fail a whole batch.
    if b"\\u0000" in body:
        raise InvalidMessage("contains a NUL character (\\u0000), which the store cannot hold")


_CALL_MARK = PROVIDER_CALL_SCHEMA.encode()


def parse_usage_queue(body: bytes) -> UsageEvent | ProviderCallRecord:
    """What the usage queue carries: usage events, and the provider-call records they complete."""
    if _CALL_MARK in body:
        _no_nul(body)
        try:
            return ProviderCallRecord.model_validate_json(body)
        except ValidationError:
            pass  # a usage event may name the schema in a tag: read it as one
    return parse_usage(body)


def parse_usage(body: bytes) -> UsageEvent:
    _no_nul(body)
    try:
        event = UsageEvent.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidMessage(f"not a usage event: {describe(exc)}") from None
    too_large = [name for name in TOKEN_BUCKETS if getattr(event, name) > MAX_TOKENS_PER_EVENT]
    if too_large:
        raise InvalidMessage(f"implausible token counts in {', '.join(too_large)} (> {MAX_TOKENS_PER_EVENT})")
    shape = event.shape
    oversized = [name for name in SHAPE_COUNTS if shape is not None and getattr(shape, name) > MAX_TOKENS_PER_EVENT]
    if oversized:
        raise InvalidMessage(f"implausible shape counts in {', '.join(oversized)} (> {MAX_TOKENS_PER_EVENT})")
    return event


def parse_failed_result(body: bytes) -> CompletionResult | None:
    """A failed result with its error; None for a valid result that is not one (acked, ignored)."""
    _no_nul(body)
    try:
        result = CompletionResult.model_validate_json(body)
    except ValidationError as exc:
        raise InvalidMessage(f"not a completion result: {describe(exc)}") from None
    if result.status is not Status.FAILED or result.error is None:
        return None
    return result
