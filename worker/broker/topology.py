"""The broker topology (README.md, "Broker topology") as data, and its declaration.

``deploy/rabbitmq/definitions.json`` describes the same objects; a test holds the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel

from worker.broker.names import DELAY_STEPS_MS, JOB_ROUTING_KEY, Topology


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class QueueSpec:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BindingSpec:
    exchange: str
    queue: str
    routing_key: str


@dataclass(frozen=True, slots=True)
class TopologySpec:
    exchanges: tuple[ExchangeSpec, ...]
    queues: tuple[QueueSpec, ...]
    bindings: tuple[BindingSpec, ...]


QUORUM = {"x-queue-type": "quorum"}

AGGREGATOR_DELIVERY_LIMIT = 20
"""Deliveries of one message to the aggregator that may end without an ack (a crash, a lost connection)
before the broker dead-letters it to ``<prefix>.aggregator.dlx``. Explicit, so RabbitMQ 3.x (no limit by
default: a message that crashes the aggregator would come back forever) and 4.x (20 by default) agree."""


def aggregator_queue(names: Topology, name: str) -> QueueSpec:
    """A queue the aggregator consumes: what it rejects (it can never store it), and what was delivered
    ``AGGREGATOR_DELIVERY_LIMIT`` times without an ack, is dead-lettered, not dropped."""
    return QueueSpec(name, {**QUORUM, "x-dead-letter-exchange": names.aggregator_dead_letter_exchange,
                            "x-delivery-limit": AGGREGATOR_DELIVERY_LIMIT})


def aggregator_dead_letters(names: Topology) -> tuple[ExchangeSpec, QueueSpec, BindingSpec]:
    return (
        ExchangeSpec(names.aggregator_dead_letter_exchange, "fanout"),
        QueueSpec(names.aggregator_dead_letter_queue, dict(QUORUM)),
        BindingSpec(names.aggregator_dead_letter_exchange, names.aggregator_dead_letter_queue, ""),
    )


def topology_spec(names: Topology, *, delivery_limit: int) -> TopologySpec:
    usage_dead_exchange, usage_dead_queue, usage_dead_binding = aggregator_dead_letters(names)
    exchanges = (
        ExchangeSpec(names.jobs_exchange, "direct"),
        ExchangeSpec(names.dead_letter_exchange, "fanout"),
        ExchangeSpec(names.delay_exchange, "direct"),
        ExchangeSpec(names.results_exchange, "topic"),
        ExchangeSpec(names.usage_exchange, "topic"),
        ExchangeSpec(names.alerts_exchange, "topic"),
        usage_dead_exchange,
    )
    delay_queues = tuple(
        QueueSpec(
            names.delay_queue(step),
            {
                **QUORUM,
                "x-message-ttl": step,
                "x-dead-letter-exchange": names.jobs_exchange,
                "x-dead-letter-routing-key": JOB_ROUTING_KEY,
                # A delayed job must reach byok.jobs again, not be dropped on the way.
                "x-dead-letter-strategy": "at-least-once",
                "x-overflow": "reject-publish",
            },
        )
        for step in DELAY_STEPS_MS
    )
    jobs_arguments = {**QUORUM, "x-dead-letter-exchange": names.dead_letter_exchange,
                      "x-delivery-limit": delivery_limit}
    queues = (
        QueueSpec(names.jobs_queue, jobs_arguments),
        # Published to through the default exchange (no binding): a workspace's jobs beyond its fair share.
        QueueSpec(names.overflow_queue, dict(jobs_arguments)),
        QueueSpec(names.dead_letter_queue, dict(QUORUM)),
        aggregator_queue(names, names.usage_queue),
        usage_dead_queue,
        *delay_queues,
    )
    bindings = (
        BindingSpec(names.jobs_exchange, names.jobs_queue, JOB_ROUTING_KEY),
        BindingSpec(names.dead_letter_exchange, names.dead_letter_queue, ""),
        BindingSpec(names.usage_exchange, names.usage_queue, "#"),
        usage_dead_binding,
        *(BindingSpec(names.delay_exchange, names.delay_queue(step), str(step)) for step in DELAY_STEPS_MS),
    )
    return TopologySpec(exchanges, queues, bindings)


async def declare_topology(channel: AbstractChannel, spec: TopologySpec) -> None:
    """Idempotent: declaring what exists with the same arguments is a no-op; different ones fail loudly."""
    exchanges = {}
    for exchange in spec.exchanges:
        exchanges[exchange.name] = await channel.declare_exchange(
            exchange.name, aio_pika.ExchangeType(exchange.kind), durable=True
        )
    queues = {}
    for queue in spec.queues:
        queues[queue.name] = await channel.declare_queue(queue.name, durable=True, arguments=queue.arguments)
    for binding in spec.bindings:
        await queues[binding.queue].bind(exchanges[binding.exchange], routing_key=binding.routing_key)


async def check_topology(channel: AbstractChannel, spec: TopologySpec) -> None:
    """Passive declarations only, for a user without configure permission: every exchange and queue must exist
    (a missing one closes the channel with NOT_FOUND). Bindings cannot be checked passively."""
    for exchange in spec.exchanges:
        await channel.declare_exchange(exchange.name, aio_pika.ExchangeType(exchange.kind), passive=True)
    for queue in spec.queues:
        await channel.declare_queue(queue.name, passive=True)


FAILED_RESULTS_BINDING = "*.*.failed"


def aggregator_topology(names: Topology) -> TopologySpec:
    """The aggregator's part, declared idempotently with the same arguments as the worker's."""
    dead_exchange, dead_queue, dead_binding = aggregator_dead_letters(names)
    return TopologySpec(
        exchanges=(
            ExchangeSpec(names.usage_exchange, "topic"),
            ExchangeSpec(names.results_exchange, "topic"),
            ExchangeSpec(names.alerts_exchange, "topic"),
            dead_exchange,
        ),
        queues=(
            aggregator_queue(names, names.usage_queue),
            aggregator_queue(names, names.results_aggregator_queue),
            dead_queue,
        ),
        bindings=(
            BindingSpec(names.usage_exchange, names.usage_queue, "#"),
            BindingSpec(names.results_exchange, names.results_aggregator_queue, FAILED_RESULTS_BINDING),
            dead_binding,
        ),
    )


def deployed_topology(names: Topology, *, delivery_limit: int) -> TopologySpec:
    """The worker's topology and the aggregator's, each object once (declared identically by both): what
    ``byok topology declare`` declares and ``deploy/rabbitmq/definitions.json`` holds."""
    parts = (topology_spec(names, delivery_limit=delivery_limit), aggregator_topology(names))
    exchanges: dict[str, ExchangeSpec] = {}
    queues: dict[str, QueueSpec] = {}
    bindings: dict[tuple[str, str, str], BindingSpec] = {}
    for part in parts:
        for e in part.exchanges:
            if exchanges.setdefault(e.name, e) != e:
                raise ValueError(f"exchange {e.name} is declared two ways")
        for q in part.queues:
            if queues.setdefault(q.name, q) != q:
                raise ValueError(f"queue {q.name} is declared two ways")
        for b in part.bindings:
            bindings.setdefault((b.exchange, b.queue, b.routing_key), b)
    return TopologySpec(tuple(exchanges.values()), tuple(queues.values()), tuple(bindings.values()))
