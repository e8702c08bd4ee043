"""Which AMQP headers of a job the worker believes, which it carries on, and where a result may be replied.

A publisher sets every header of the job it sends, ``x-byok-*`` ones included. The worker's own
(``x-byok-attempts``, ``-first-seen``, ``-not-before``) are believed only on a job that came back through one of
its delay queues, which the broker records in ``x-death`` (newest first: that queue, reason ``expired``), and
even then within bounds: first seen no later than now, not-before no later than first seen plus the retry
window. A fresh job starts at zero attempts, first seen now, with no wait, whatever it carries.
A republished copy (delay queue, dead letter) carries only ``CARRIED_HEADERS`` and what the worker sets: a
publisher's ``CC``/``BCC`` would route the copy to more queues, anything else is not the worker's to repeat.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from aio_pika.abc import AbstractIncomingMessage

from worker.broker.names import (
    DELAY_STEPS_MS,
    HEADER_ATTEMPTS,
    HEADER_FIRST_SEEN,
    HEADER_NOT_BEFORE,
    HEADER_REPLAYED,
    TRACE_HEADERS,
    Topology,
)
from worker.jobs.pipeline import Delivery

CARRIED_HEADERS = frozenset({*TRACE_HEADERS, HEADER_REPLAYED})
MAX_CARRIED_CHARS = 512
"""W3C's limit for ``tracestate``; a longer value is not carried (a header is not the place for a payload)."""


def _carriable(value: Any) -> bool:
    if isinstance(value, str | bytes):
        return len(value) <= MAX_CARRIED_CHARS
    return isinstance(value, int)


def carried(headers: Mapping[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in headers.items() if key in CARRIED_HEADERS and _carriable(value)}


def carried_trace(headers: Mapping[str, Any] | None) -> dict[str, Any]:
    """The job's ``traceparent`` / ``tracestate``, which its result and usage event carry on as they came."""
    if not headers:
        return {}
    return {name: headers[name] for name in TRACE_HEADERS if name in headers and _carriable(headers[name])}


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


def came_back_delayed(headers: Mapping[str, Any], names: Topology) -> bool:
    """Whether the broker's latest dead-lettering of this message was its TTL running out in a delay queue."""
    deaths = headers.get("x-death")
    if not isinstance(deaths, list | tuple) or not deaths or not isinstance(deaths[0], Mapping):
        return False
    latest = deaths[0]
    delay_queues = {names.delay_queue(step) for step in DELAY_STEPS_MS}
    return _text(latest.get("queue")) in delay_queues and _text(latest.get("reason")) == "expired"


def _header_time(headers: Mapping[str, Any], name: str) -> datetime | None:
    raw = _text(headers.get(name))
    if raw is None:
        return None
    try:
        found = datetime.fromisoformat(raw)
    except ValueError:
        return None
    return found if found.tzinfo is not None else None


def delivery_of(message: AbstractIncomingMessage, names: Topology, *, retry_window_s: float,
                now: datetime) -> Delivery:
    headers = message.headers or {}
    if not came_back_delayed(headers, names):
        return Delivery(body=message.body)
    attempts = headers.get(HEADER_ATTEMPTS)
    first_seen = _header_time(headers, HEADER_FIRST_SEEN)
    first_seen = min(first_seen, now) if first_seen is not None else None
    not_before = _header_time(headers, HEADER_NOT_BEFORE)
    if not_before is not None:
        not_before = min(not_before, (first_seen or now) + timedelta(seconds=retry_window_s))
    return Delivery(
        body=message.body,
        attempts_before=attempts if isinstance(attempts, int) and attempts >= 0 else 0,
        first_seen=first_seen,
        not_before=not_before,
    )


def reply_target(reply_to: str | None, names: Topology) -> str | None:
    """The queue a result may be replied to: never one of the topology's own (``<prefix>.…``)."""
    if not reply_to or reply_to == names.prefix or reply_to.startswith(f"{names.prefix}."):
        return None
    return reply_to
