"""Which message travels on which exchange, with which routing key, sent and read by whom: the data the
AsyncAPI document (``schemas/asyncapi.yaml``, ``worker.broker.asyncapi``) is generated from with the topology.

A new message is a model in ``schemas.generate.MODELS`` plus a route here; a new exchange in the topology
needs a route too (a test holds every exchange of the topology to one).
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from schemas.models import Alert, CompletionJob, CompletionResult, ProviderCallRecord, UsageEvent
from worker.broker.names import (
    HEADER_ATTEMPTS,
    HEADER_ERROR,
    HEADER_FIRST_SEEN,
    HEADER_NOT_BEFORE,
    HEADER_REASON,
    HEADER_REPLAYED,
    HEADER_TRUNCATED,
    JOB_ROUTING_KEY,
    TRACE_HEADERS,
    Topology,
)

PUBLISHER = "publisher"
WORKER = "worker"
AGGREGATOR = "aggregator"
OPERATOR = "operator"
"""Who sends and reads: a team's publisher (``worker.client``, ``byok submit``), the worker, the aggregator, and
an operator (``byok dlq``, alerting)."""

DEFAULT_EXCHANGE = ""
"""RabbitMQ's default exchange: the routing key is a queue's name (how a result goes to a job's ``reply_to``)."""

HEADER_MEANINGS: dict[str, str] = {
    "traceparent": "W3C trace context: a job's is continued, its result and usage events carry it on",
    "tracestate": "W3C trace context: a job's is continued, its result and usage events carry it on",
    HEADER_ERROR: "the error code that dead-lettered the job",
    HEADER_REASON: "why, in words (never the job's text or a key)",
    HEADER_ATTEMPTS: "provider calls made so far",
    HEADER_FIRST_SEEN: "when the worker first saw the job (ISO-8601)",
    HEADER_NOT_BEFORE: "a wait longer than the longest delay queue: the job goes round again until then",
    HEADER_REPLAYED: "how many times `byok dlq replay` republished the job",
    HEADER_TRUNCATED: "the original body was too large to carry: its size in bytes",
}


@dataclass(frozen=True, slots=True)
class MessageRoute:
    message: str
    """The message's name in the AsyncAPI document (unique)."""
    exchange: str
    routing_key: str | None
    """A pattern: ``{name}`` is one word (a parameter); None on a fanout exchange (the key is not used)."""
    model: type[BaseModel]
    summary: str
    sent_by: tuple[str, ...]
    received_by: tuple[str, ...]
    headers: tuple[str, ...] = ()
    replied_with: str | None = None
    """The message the receiver sends back to the AMQP ``reply_to`` the sender set, if it set one."""


def message_routes(names: Topology) -> tuple[MessageRoute, ...]:
    carried = (*TRACE_HEADERS, HEADER_REPLAYED)
    return (
        MessageRoute("job", names.jobs_exchange, JOB_ROUTING_KEY, CompletionJob,
                     "A completion job; its AMQP message_id is its job_id, reply_to and correlation_id optional.",
                     (PUBLISHER, OPERATOR), (WORKER,), carried, replied_with="reply"),
        MessageRoute("moved_job", DEFAULT_EXCHANGE, names.overflow_queue, CompletionJob,
                     "A job a worker moved aside for fair share between workspaces (README): published as it came, "
                     "through the default exchange to the overflow queue, then acked on the jobs queue. Only "
                     "workers publish and read it.", (WORKER,), (WORKER,), carried),
        MessageRoute("delayed_job", names.delay_exchange, "{delay_ms}", CompletionJob,
                     "A job waiting to be retried: the delay queue's TTL sends it back to the jobs exchange.",
                     (WORKER,), (WORKER,), (*carried, HEADER_ATTEMPTS, HEADER_FIRST_SEEN, HEADER_NOT_BEFORE)),
        MessageRoute("dead_letter", names.dead_letter_exchange, None, CompletionJob,
                     "A job that failed for good or could not be read: its original body (which may not be a "
                     "valid job: that can be why it is here), or a stub when it was too large to carry.",
                     (WORKER,), (OPERATOR,), (*carried, HEADER_ERROR, HEADER_REASON, HEADER_TRUNCATED)),
        MessageRoute("result", names.results_exchange, "{workspace_id}.{automation_id}.{status}", CompletionResult,
                     "One final result per job; automation_id is _ when the job had none.",
                     (WORKER,), (PUBLISHER, AGGREGATOR), TRACE_HEADERS),
        MessageRoute("reply", DEFAULT_EXCHANGE, "{reply_to}", CompletionResult,
                     "The same result, to the queue the job named in reply_to, with the job's correlation_id.",
                     (WORKER,), (PUBLISHER,), TRACE_HEADERS),
        MessageRoute("usage_event", names.usage_exchange, "{workspace_id}.{provider}", UsageEvent,
                     "One event per billed provider call; event_id identifies the call.",
                     (WORKER,), (AGGREGATOR,), TRACE_HEADERS),
        MessageRoute("provider_call", names.usage_exchange, "{workspace_id}.{provider}.call", ProviderCallRecord,
                     "A provider call that may be billed, confirmed before the request is sent (state started), "
                     "or closed as not_billed; its call_id is the event_id of the usage event that completes it. "
                     "No prompt, output or key.",
                     (WORKER,), (AGGREGATOR,)),
        MessageRoute("alert", names.alerts_exchange, "{workspace_id}.{kind}", Alert,
                     "An anomaly or budget alert.", (AGGREGATOR,), (OPERATOR,)),
        MessageRoute("rejected_usage_event", names.aggregator_dead_letter_exchange, None, UsageEvent,
                     "A usage event the aggregator can never store (kept, not dropped); may not validate.",
                     (AGGREGATOR,), (OPERATOR,)),
        MessageRoute("rejected_result", names.aggregator_dead_letter_exchange, None, CompletionResult,
                     "A failed result the aggregator can never store (kept, not dropped); may not validate.",
                     (AGGREGATOR,), (OPERATOR,)),
    )
