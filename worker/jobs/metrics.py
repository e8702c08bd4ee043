"""Prometheus metrics of the worker. Labels are closed sets: no key, no job id, no free text."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs = Counter(
            "byok_jobs", "Jobs finished, by status and error code", ["status", "error_code"], registry=self.registry
        )
        self.in_flight = Gauge("byok_jobs_in_flight", "Jobs being processed now", registry=self.registry)
        self.provider_latency = Histogram(
            "byok_provider_call_seconds", "Provider call latency", ["provider"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.retries = Counter(
            "byok_retries", "Transient failures that led to a retry", ["provider", "error_code"],
            registry=self.registry,
        )
        self.delayed = Counter("byok_jobs_delayed", "Jobs sent through the delay queue", registry=self.registry)
        self.dead_letters = Counter(
            "byok_dead_letters", "Messages dead-lettered by the worker", ["error_code"], registry=self.registry
        )
        self.unseal_cache = Counter(
            "byok_unseal_cache_lookups", "Unseal cache lookups", ["result"], registry=self.registry
        )
        self.vault_latency = Histogram(
            "byok_vault_call_seconds", "Vault transit call latency", ["outcome"], buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.republished = Counter(
            "byok_outbox_republished", "Usage events and call records published again on a new connection",
            registry=self.registry,
        )
        self.moved = Counter(
            "byok_jobs_moved", "Jobs moved to the overflow queue: their workspace had its share of the window",
            registry=self.registry,
        )
        # Aggregates only (README, "Fair share"): never one label per workspace.
        self.waiting = Gauge("byok_jobs_waiting", "Jobs held for their turn or their key, not yet running",
                             registry=self.registry)
        self.waiting_workspaces = Gauge("byok_workspaces_waiting", "Workspaces with jobs waiting in this worker",
                                        registry=self.registry)
        self.cold_running = Gauge("byok_cold_jobs_running",
                                  "Jobs running in the cold lane: their key had to be unsealed",
                                  registry=self.registry)
        self.keys_warming = Gauge("byok_keys_unsealing", "Keys of waiting jobs being unsealed now",
                                  registry=self.registry)
        self._jobs: dict[tuple[str, str], Counter] = {}
        self._provider: dict[str, Histogram] = {}
        self._vault: dict[str, Histogram] = {}
        self._unseal: dict[bool, Counter] = {}

    # Each labelled child is looked up once: ``labels()`` costs more than the increment itself, and
    # every label set is a closed one (see the module docstring).

    def finished(self, status: str, error_code: str | None) -> None:
        key = (status, error_code or "")
        child = self._jobs.get(key)
        if child is None:
            child = self._jobs[key] = self.jobs.labels(status=key[0], error_code=key[1])
        child.inc()

    def provider_call(self, provider: str, seconds: float) -> None:
        child = self._provider.get(provider)
        if child is None:
            child = self._provider[provider] = self.provider_latency.labels(provider=provider)
        child.observe(seconds)

    def retry(self, provider: str, error_code: str) -> None:
        self.retries.labels(provider=provider, error_code=error_code).inc()

    def dead_lettered(self, error_code: str) -> None:
        self.dead_letters.labels(error_code=error_code).inc()

    def unseal(self, *, hit: bool) -> None:
        child = self._unseal.get(hit)
        if child is None:
            child = self._unseal[hit] = self.unseal_cache.labels(result="hit" if hit else "miss")
        child.inc()

    def vault_call(self, seconds: float, outcome: str) -> None:
        child = self._vault.get(outcome)
        if child is None:
            child = self._vault[outcome] = self.vault_latency.labels(outcome=outcome)
        child.observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
