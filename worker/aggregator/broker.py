"""The aggregator's part of the broker topology, declared idempotently with the worker's arguments."""

from __future__ import annotations

from worker.constants import Topology
from worker.topology import BindingSpec, ExchangeSpec, QueueSpec, TopologySpec

FAILED_RESULTS_BINDING = "*.*.failed"
QUORUM = {"x-queue-type": "quorum"}


def aggregator_topology(names: Topology) -> TopologySpec:
    return TopologySpec(
        exchanges=(
            ExchangeSpec(names.usage_exchange, "topic"),
            ExchangeSpec(names.results_exchange, "topic"),
            ExchangeSpec(names.alerts_exchange, "topic"),
        ),
        queues=(QueueSpec(names.usage_queue, dict(QUORUM)), QueueSpec(names.results_aggregator_queue, dict(QUORUM))),
        bindings=(
            BindingSpec(names.usage_exchange, names.usage_queue, "#"),
            BindingSpec(names.results_exchange, names.results_aggregator_queue, FAILED_RESULTS_BINDING),
        ),
    )
