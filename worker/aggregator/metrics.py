"""Prometheus metrics of the aggregator, in its own registry. Labels are closed sets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

BATCH_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_SIZES = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)


class AggregatorMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "byok_aggregator_messages", "Messages consumed, by queue (usage|results) and outcome",
            ["queue", "outcome"], registry=self.registry,
        )
        self.usage_events = Counter(
            "byok_aggregator_usage_events", "Usage events stored (new) or already counted (duplicate)",
            ["result"], registry=self.registry,
        )
        self.call_records = Counter(
            "byok_aggregator_call_records", "Provider-call records received (started or not billed)",
            registry=self.registry,
        )
        self.failed_results = Counter(
            "byok_aggregator_failed_results", "Failed results received, by error code", ["code"],
            registry=self.registry,
        )
        self.alerts = Counter("byok_aggregator_alerts", "Alerts raised, by kind", ["kind"], registry=self.registry)
        self.alerts_published = Counter(
            "byok_aggregator_alerts_published", "Alerts published to the alerts exchange", registry=self.registry
        )
        self.alerts_unpublished = Gauge(
            "byok_aggregator_alerts_unpublished", "Stored alerts not yet published", registry=self.registry
        )
        self.batch_seconds = Histogram(
            "byok_aggregator_batch_seconds", "Time to store and evaluate one batch", ["queue"],
            buckets=BATCH_SECONDS, registry=self.registry,
        )
        self.batch_size = Histogram(
            "byok_aggregator_batch_size", "Messages per batch", ["queue"], buckets=BATCH_SIZES,
            registry=self.registry,
        )
        self.store_errors = Counter(
            "byok_aggregator_store_errors", "Store errors while handling a batch (retried or isolated)",
            ["queue", "kind"], registry=self.registry,
        )
        self.last_batch = Gauge(
            "byok_aggregator_last_batch_timestamp_seconds", "When the last batch was committed",
            ["queue"], registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
