"""Scrubbing of anything key-shaped from text and structured log events."""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Any

REDACTED = "[redacted]"

_KEY_PATTERNS = re.compile(
    r"(sk-ant-[A-Za-z0-9_\-]{8,}"  # Anthropic
    r"|sk-[A-Za-z0-9_\-]{8,}"  # OpenAI (sk-, sk-proj-, sk-svcacct-)
    r"|(?i:bearer)\s+[A-Za-z0-9._~+/\-]{8,}=*"  # Authorization header values
    r"|hvs\.[A-Za-z0-9_\-]{8,}|s\.[A-Za-z0-9]{20,})"  # Vault / OpenBao tokens
)
_QUERY_SECRETS = re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access_token|secret)=)[^&#\s]+")
_SENSITIVE_FIELDS = frozenset(
    {"authorization", "x-api-key", "api_key", "apikey", "api-key", "x-vault-token", "token",
     "secret_id", "plaintext", "password", "key"}
)


def redact_text(text: str) -> str:
    return _QUERY_SECRETS.sub(rf"\1{REDACTED}", _KEY_PATTERNS.sub(REDACTED, text))


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {k: REDACTED if str(k).lower() in _SENSITIVE_FIELDS else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_value(v) for v in value]
    return value


def redact_event(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: sensitive fields replaced, key patterns scrubbed from every string."""
    for name in list(event_dict):
        if name.lower() in _SENSITIVE_FIELDS:
            event_dict[name] = REDACTED
        else:
            event_dict[name] = _redact_value(event_dict[name])
    return event_dict
