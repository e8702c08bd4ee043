"""HTTP status classification shared by the adapters; each adapter adds its provider's own signals."""

from __future__ import annotations

from typing import Any

import orjson

from schemas.models import ErrorCode
from worker.errors import JobFailure, RetryableFailure
from worker.redaction import redact_text
from worker.retry import parse_retry_after

MAX_PROVIDER_MESSAGE = 300


def error_body(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def provider_message(body: bytes, fallback: str) -> str:
    """The provider's own error message, shortened and scrubbed of anything key-shaped."""
    parsed = error_body(body)
    error = parsed.get("error")
    message: Any = None
    if isinstance(error, dict):
        message = error.get("message")
    elif isinstance(error, str):
        message = error
    if message is None:
        message = parsed.get("message") or parsed.get("detail")
    text = message if isinstance(message, str) and message else fallback
    return redact_text(text)[:MAX_PROVIDER_MESSAGE]


def classify_status(
    status: int, headers: dict[str, str], body: bytes, *, quota_exhausted: bool
) -> JobFailure:
    """The default mapping of DESIGN.md's error codes; ``quota_exhausted`` is the adapter's verdict on a 429."""
    message = provider_message(body, f"HTTP {status}")
    if status in (401, 403):
        return JobFailure(ErrorCode.AUTH_FAILED, message, provider_status=status)
    if status == 429 and quota_exhausted:
        return JobFailure(ErrorCode.QUOTA_EXHAUSTED, message, provider_status=status)
    hint = parse_retry_after(headers)
    if status == 429:
        return RetryableFailure(ErrorCode.RATE_LIMITED, message, provider_status=status, retry_after_s=hint)
    if status == 408:
        return RetryableFailure(ErrorCode.TIMEOUT, message, provider_status=status, retry_after_s=hint)
    if status >= 500:
        return RetryableFailure(ErrorCode.PROVIDER_ERROR, message, provider_status=status, retry_after_s=hint)
    return JobFailure(ErrorCode.PROVIDER_ERROR, message, provider_status=status)
