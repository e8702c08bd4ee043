"""Scrubbing of anything key-shaped from text and structured log events.

Two layers: values of sensitive *names* (fields, headers, query parameters) are replaced whatever they
look like, which catches keys without a recognisable prefix (Mistral's are 32 plain letters and digits);
and known key *shapes* are scrubbed from every string. Structured values that are not plain data
(exceptions, URLs, models…) are rendered to text first, so nothing reaches a renderer unscrubbed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, MutableMapping
from datetime import date, datetime, time, timedelta
from typing import Any

REDACTED = "[redacted]"

_HEADER_NAMES = r"(?:proxy-authorization|authorization|x-api-key|api-key|x-goog-api-key|x-vault-token|cookie)"

_KEY_PATTERNS = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"sk-ant-[A-Za-z0-9_\-]{8,}"  # Anthropic
    r"|sk-[A-Za-z0-9_\-]{8,}"  # OpenAI (sk-, sk-proj-, sk-svcacct-)
    r"|hv[sbr]\.[A-Za-z0-9_\-]{8,}"  # Vault tokens
    r"|[sbr]\.[A-Za-z0-9]{24,}"  # OpenBao and older Vault tokens
    r"|eyJ[A-Za-z0-9_\-]{4,}\.eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]*"  # JWTs (Kubernetes service accounts)
    r")"
    r"|(?i:\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/\-]{8,}=*"  # Authorization header values
)
# "x-api-key: abc", "'authorization': 'Bearer abc'", "api-key=abc": the value, whatever its shape.
_HEADER_VALUES = re.compile(
    rf"(?i)(\b{_HEADER_NAMES}[\"']?\s*[:=]\s*[\"']?)(?:(?:bearer|basic)\s+)?[^\s\"',;&}}\]]+"
)
_QUERY_SECRETS = re.compile(
    r"(?i)([?&](?:api[_-]?key|key|token|access_token|secret|client_secret|secret_id|password|sig|signature)=)"
    r"[^&#\s\"']+"
)

# "amqp://user:password@host", "postgresql://…": the password of a URL's user info.
_URL_PASSWORDS = re.compile(r"(?i)(\b[a-z][a-z0-9+.\-]*://[^\s:/@]*:)[^\s@/]+@")

# Every match of the four patterns above contains one of these: text without any is returned as it is,
# after one scan instead of three (most log values are ids, names and numbers).
_MAY_HOLD_SECRET = re.compile(r"(?i)sk-|[sbr]\.|eyj|bearer|basic|authorization|api-key|x-vault-token|cookie|[?&]|://")

_SENSITIVE_FIELDS = frozenset({
    "authorization", "proxy_authorization", "x_api_key", "api_key", "apikey", "x_goog_api_key",
    "x_vault_token", "token", "client_token", "secret", "secret_id", "client_secret", "plaintext",
    "password", "key", "provider_key", "jwt", "cookie", "set_cookie",
})
_SENSITIVE_SUFFIXES = ("_api_key", "_apikey", "_token", "_secret", "_secret_id", "_password", "_jwt")
_PLAIN = (bool, int, float, datetime, date, time, timedelta)


def is_sensitive_name(name: object) -> bool:
    """A field, header or parameter name whose value is a secret (``X-Api-Key``, ``vault_token``…)."""
    if isinstance(name, bytes | bytearray):
        name = bytes(name).decode("latin-1")
    if not isinstance(name, str):
        return False
    normal = name.strip().lower().replace("-", "_")
    return normal in _SENSITIVE_FIELDS or normal.endswith(_SENSITIVE_SUFFIXES)


def redact_text(text: str) -> str:
    if _MAY_HOLD_SECRET.search(text) is None:
        return text
    return scrub_text(text)


def scrub_text(text: str) -> str:
    """Every pattern applied to ``text`` (``redact_text`` skips text that cannot match any)."""
    text = _HEADER_VALUES.sub(rf"\1{REDACTED}", text)
    text = _KEY_PATTERNS.sub(REDACTED, text)
    text = _URL_PASSWORDS.sub(rf"\1{REDACTED}@", text)
    return _QUERY_SECRETS.sub(rf"\1{REDACTED}", text)


def _redact_value(value: Any) -> Any:
    if value is None or isinstance(value, _PLAIN):
        return value
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes | bytearray):
        return redact_text(bytes(value).decode("utf-8", "replace"))
    if isinstance(value, Mapping):  # dicts, httpx.Headers, …
        return {k: REDACTED if is_sensitive_name(k) else _redact_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = list(value)
        if len(items) == 2 and is_sensitive_name(items[0]):  # a (header, value) pair
            return [_redact_value(items[0]), REDACTED]
        return [_redact_value(v) for v in items]
    # Exceptions, URLs, models, anything else: as the renderer would show it (repr), scrubbed.
    return redact_text(repr(value))


def redact_event(_logger: Any, _method: str, event_dict: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """structlog processor: sensitive fields replaced, key patterns scrubbed from every value."""
    for name in list(event_dict):
        if is_sensitive_name(name):
            event_dict[name] = REDACTED
        else:
            event_dict[name] = _redact_value(event_dict[name])
    return event_dict
