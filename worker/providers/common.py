"""What the adapters share: HTTP status classification, provider error messages, token counters."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import orjson

from schemas.models import ErrorCode
from worker.failures import JobFailure, RetryableFailure
from worker.providers.retry_after import parse_retry_after
from worker.redaction import REDACTED, redact_text

MAX_PROVIDER_MESSAGE = 300

# Statuses on which a provider may tell us the account is out of money or quota (the adapter decides).
QUOTA_STATUSES = frozenset({400, 402, 403, 429})

# Provider keys without a known prefix (Mistral's are 32 letters and digits): any long token mixing
# letters and digits is scrubbed from a provider's message, request ids included, a small price.
_OPAQUE_TOKEN = re.compile(r"(?<![A-Za-z0-9_\-])(?=[A-Za-z0-9_\-]*[0-9])(?=[A-Za-z0-9_\-]*[A-Za-z])"
                           r"[A-Za-z0-9_\-]{24,}(?![A-Za-z0-9_\-])")


def count(value: Any) -> int:
    """A token counter from a provider's usage object: a non-negative int, anything else counts 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def error_body(body: bytes) -> dict[str, Any]:
    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _validation_details(detail: Any) -> str | None:
    """FastAPI-style ``detail`` lists (Mistral's 422): their ``msg`` fields, never the echoed ``input``."""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, dict):
        detail = detail.get("detail")
    if isinstance(detail, list):
        messages = [
            f"{'.'.join(str(p) for p in item.get('loc', []))}: {item['msg']}".lstrip(": ")
            for item in detail
            if isinstance(item, dict) and isinstance(item.get("msg"), str)
        ]
        return "; ".join(messages) or None
    return None


def scrub(text: str) -> str:
    return _OPAQUE_TOKEN.sub(REDACTED, redact_text(text))


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
    if not isinstance(message, str):
        message = _validation_details(message)
    text = message if isinstance(message, str) and message else fallback
    return scrub(text)[:MAX_PROVIDER_MESSAGE]


def mentions(text: str, words: Iterable[str]) -> bool:
    lowered = text.lower()
    return any(word in lowered for word in words)


def classify_status(
    status: int, headers: dict[str, str], body: bytes, *, quota_exhausted: bool
) -> JobFailure:
    """The default mapping of HTTP statuses to the contract's error codes (schemas/CONTRACT.md).

    ``quota_exhausted`` is the adapter's verdict from the provider's own signals; it counts on
    400/402/403/429 (Anthropic reports an empty credit balance as a 400). A 402 is always quota.
    """
    message = provider_message(body, f"HTTP {status}")
    if (quota_exhausted and status in QUOTA_STATUSES) or status == 402:
        return JobFailure(ErrorCode.QUOTA_EXHAUSTED, message, provider_status=status)
    if status in (401, 403):
        return JobFailure(ErrorCode.AUTH_FAILED, message, provider_status=status)
    hint = parse_retry_after(headers)
    if status == 429:
        return RetryableFailure(ErrorCode.RATE_LIMITED, message, provider_status=status, retry_after_s=hint)
    if status == 408:
        return RetryableFailure(ErrorCode.TIMEOUT, message, provider_status=status, retry_after_s=hint)
    if status >= 500:
        return RetryableFailure(ErrorCode.PROVIDER_ERROR, message, provider_status=status, retry_after_s=hint)
    return JobFailure(ErrorCode.PROVIDER_ERROR, message, provider_status=status)
