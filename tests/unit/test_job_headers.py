"""Which headers of a job the worker believes (only its own, after one of its delay queues, within bounds),
which it carries on, and which reply targets it refuses."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from aio_pika.abc import AbstractIncomingMessage

from worker.broker.names import HEADER_ATTEMPTS, HEADER_FIRST_SEEN, HEADER_NOT_BEFORE, Topology
from worker.jobs.job_headers import carried, delivery_of, reply_target

NAMES = Topology("byok")
NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
WINDOW_S = 900.0


@dataclass
class Message:
    headers: dict[str, Any] = field(default_factory=dict)
    body: bytes = b"{}"


def death(queue: str = "byok.jobs.delay.300000ms", reason: str = "expired") -> dict[str, Any]:
    return {"x-death": [{"queue": queue, "reason": reason, "count": 1}]}


def worker_headers(first_seen: datetime, not_before: datetime, attempts: int = 2) -> dict[str, Any]:
    return {HEADER_ATTEMPTS: attempts, HEADER_FIRST_SEEN: first_seen.isoformat(),
            HEADER_NOT_BEFORE: not_before.isoformat()}


def read(headers: dict[str, Any]) -> tuple[int, datetime | None, datetime | None]:
    delivery = delivery_of(cast(AbstractIncomingMessage, Message(headers)), NAMES, retry_window_s=WINDOW_S, now=NOW)
    return delivery.attempts_before, delivery.first_seen, delivery.not_before


@pytest.mark.parametrize("deaths", [
    {},
    death(queue="byok.jobs"),
    death(queue="other.jobs.delay.300000ms"),
    death(reason="rejected"),
    {"x-death": "not a list"},
    {"x-death": [{"queue": "byok.jobs", "reason": "delivery_limit"}, death()["x-death"][0]]},
], ids=["fresh", "jobs-queue", "other-prefix", "rejected", "malformed", "latest-death-elsewhere"])
def test_worker_headers_are_ignored_unless_the_latest_death_is_a_delay_queue_expiry(deaths: dict[str, Any]) -> None:
    headers = {**deaths, **worker_headers(NOW - timedelta(seconds=10), NOW + timedelta(seconds=60), attempts=3)}
    assert read(headers) == (0, None, None)


def test_after_a_delay_queue_the_worker_headers_are_believed() -> None:
    first_seen, not_before = NOW - timedelta(seconds=10), NOW + timedelta(seconds=60)
    assert read({**death(), **worker_headers(first_seen, not_before)}) == (2, first_seen, not_before)


def test_even_after_a_delay_queue_they_cannot_outlive_the_retry_window() -> None:
    future = datetime(2099, 1, 1, tzinfo=UTC)
    _, first_seen, not_before = read({**death(), **worker_headers(future, future)})
    assert first_seen == NOW, "first seen no later than now"
    assert not_before == NOW + timedelta(seconds=WINDOW_S)


def test_only_the_allow_listed_headers_are_carried() -> None:
    headers = {"traceparent": "00-abc-def-01", "tracestate": "k=v", "x-byok-replayed": 1, "CC": ["a"],
               "BCC": ["b"], "x-custom": "x", "x-death": [{}], HEADER_ATTEMPTS: 3}
    assert carried(headers) == {"traceparent": "00-abc-def-01", "tracestate": "k=v", "x-byok-replayed": 1}
    assert carried({"tracestate": "k=" + "v" * 600, "traceparent": {"nested": "table"}}) == {}, "bounded, flat"


@pytest.mark.parametrize(("reply_to", "allowed"), [
    ("amq.gen-Xa2", True), ("amq.rabbitmq.reply-to", True), ("client.replies", True), (None, False), ("", False),
    ("byok", False), ("byok.jobs", False), ("byok.usage.aggregator", False), ("byok.jobs.dead", False),
    ("byokish.replies", True),
])
def test_reply_targets_inside_the_topology_are_refused(reply_to: str | None, allowed: bool) -> None:
    assert reply_target(reply_to, NAMES) == (reply_to if allowed else None)
