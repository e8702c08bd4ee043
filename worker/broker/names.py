"""Every exchange, queue, routing key and header name, in one place (README.md, "Broker topology")."""

from __future__ import annotations

from dataclasses import dataclass

JOB_ROUTING_KEY = "completion"
CONTENT_TYPE = "application/json"

HEADER_ERROR = "x-byok-error"
HEADER_REASON = "x-byok-reason"
HEADER_ATTEMPTS = "x-byok-attempts"
HEADER_FIRST_SEEN = "x-byok-first-seen"
HEADER_NOT_BEFORE = "x-byok-not-before"
"""On a delayed job whose wait is longer than the longest delay queue: it is delayed again until then."""
HEADER_REPLAYED = "x-byok-replayed"
"""How many times ``byok dlq replay`` republished the job."""
TRACE_HEADERS = ("traceparent", "tracestate")
ROUTING_HEADERS = ("CC", "BCC")
"""RabbitMQ's sender-selected distribution: a message carrying them is routed with their keys as well."""
HEADER_DELIVERY_COUNT = "x-delivery-count"
"""Set by a quorum queue on a redelivery: how many earlier deliveries of the message ended without an ack."""
DELIVERY_LIMIT_ERROR = "delivery_limit"
"""``x-byok-error`` of a job dead-lettered because it was delivered as often as the queue allows (a poison
message): not a result error code, since such a job has no result."""
HEADER_TRUNCATED = "x-byok-truncated"
"""On a dead letter whose original body was too large to carry: the original size in bytes."""

MAX_MESSAGE_BYTES = 16 * 1024 * 1024 - 256 * 1024
"""The largest body the worker publishes: RabbitMQ's default ``max_message_size`` (16 MiB since 4.0; 128 MiB
in 3.x) less room for properties and headers. A broker configured lower needs a lower cap."""

MOVED_DROPPED_HEADERS = frozenset({*ROUTING_HEADERS, "x-death", "x-first-death-exchange", "x-first-death-queue",
                                   "x-first-death-reason", "x-last-death-exchange", "x-last-death-queue",
                                   "x-last-death-reason", HEADER_DELIVERY_COUNT})
"""Not carried when a job is moved to the overflow queue: routing the copy to more queues, or the broker's
record of the original's deliveries and dead-letterings (only jobs with none are moved)."""

# Delay queues: one per fixed wait so a long TTL never holds a shorter one behind it.
DELAY_STEPS_MS = (1_000, 5_000, 15_000, 60_000, 300_000)


@dataclass(frozen=True, slots=True)
class Topology:
    """Names derived from one prefix (``byok`` by default), so test runs and tenants never collide."""

    prefix: str = "byok"

    @property
    def jobs_exchange(self) -> str:
        return f"{self.prefix}.jobs"

    @property
    def jobs_queue(self) -> str:
        return f"{self.prefix}.jobs"

    @property
    def overflow_queue(self) -> str:
        """Where a worker moves a workspace's jobs beyond its fair share of the window (README, "Fair share");
        published through the default exchange, consumed by every worker beside ``jobs_queue``."""
        return f"{self.prefix}.jobs.overflow"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.prefix}.jobs.dead"

    @property
    def delay_exchange(self) -> str:
        return f"{self.prefix}.jobs.delay"

    def delay_queue(self, delay_ms: int) -> str:
        return f"{self.prefix}.jobs.delay.{delay_ms}ms"

    @property
    def results_exchange(self) -> str:
        return f"{self.prefix}.results"

    @property
    def usage_exchange(self) -> str:
        return f"{self.prefix}.usage"

    @property
    def usage_queue(self) -> str:
        return f"{self.prefix}.usage.aggregator"

    @property
    def results_aggregator_queue(self) -> str:
        """Failed results for the aggregator's error-burst rule (bound with ``*.*.failed``)."""
        return f"{self.prefix}.results.aggregator"

    @property
    def aggregator_dead_letter_exchange(self) -> str:
        """Where the aggregator's queues dead-letter what it rejects (it can never store them)."""
        return f"{self.prefix}.aggregator.dlx"

    @property
    def aggregator_dead_letter_queue(self) -> str:
        return f"{self.prefix}.aggregator.dead"

    @property
    def alerts_exchange(self) -> str:
        return f"{self.prefix}.alerts"


def result_routing_key(workspace_id: str, automation_id: str | None, status: str) -> str:
    return f"{workspace_id}.{automation_id or '_'}.{status}"


def usage_routing_key(workspace_id: str, provider: str) -> str:
    return f"{workspace_id}.{provider}"


def call_routing_key(workspace_id: str, provider: str) -> str:
    """A provider-call record: on the usage exchange, so the aggregator's usage queue (bound with ``#``) has it."""
    return f"{workspace_id}.{provider}.call"
