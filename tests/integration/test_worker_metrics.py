"""The worker's ``/metrics`` (``BYOK_METRICS_LISTEN``) after a known set of jobs: every metric the README lists
("Worker health and metrics") exists with the README's labels and the values those jobs must leave."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from schemas.models import Provider
from tests.broker import BrokerTap, job_body, publish_jobs, running
from tests.conftest import Sealer
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

README = Path(__file__).resolve().parents[2] / "README.md"
KEY = "sk-test-Metrics0123456789abcdef"
WORKSPACE = "ws-metrics"

# One job at a time, so the unseal cache's hits and misses are known. (job id, model, expected status)
JOBS = (
    ("m-ok-1", "gpt-4o-mini", "succeeded"),    # unseal miss (Vault call 1), one provider call
    ("m-ok-2", "gpt-4o-mini", "succeeded"),    # hit, one call
    ("m-flaky", "sim-flaky-1", "succeeded"),   # a 500 retried in-process: two calls, two lookups (hits), one retry
    ("m-rate", "sim-rate", "failed"),          # 429 retry-after 1 s > inline max: delayed once, called again,
                                               # 429 again at max_attempts 2: rate_limited, dead-lettered
    ("m-auth", "sim-auth", "failed"),          # 401: auth_failed, dead-lettered, the cached key evicted
    ("m-ok-3", "gpt-4o-mini", "succeeded"),    # unseal miss again (Vault call 2)
)


def readme_metrics() -> dict[str, set[str]]:
    """``name{label,…}`` as the README's "Worker health and metrics" section lists them."""
    text = README.read_text()
    section = text.split("## Worker health and metrics", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"`(byok_[a-z_]+)(?:\{([a-z_,]+)\})?`", section)
    metrics: dict[str, set[str]] = {}
    for name, labels in listed:  # the first mention of a metric gives its labels; later ones may leave them out
        metrics.setdefault(name, set(labels.split(",")) if labels else set())
    return metrics


def samples(text: str) -> Iterator[Sample]:
    for family in text_string_to_metric_families(text):
        yield from family.samples


def value(text: str, name: str, **labels: str) -> float:
    found = [s.value for s in samples(text) if s.name == name and s.labels == labels]
    assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
    return found[0]


def label_sets(text: str, name: str) -> list[dict[str, str]]:
    return [s.labels for s in samples(text) if s.name == name]


def sealed_model(simulator: ProviderSimulator, name: str, sealed: str) -> dict[str, Any]:
    return {"provider": "openai", "name": name, "base_url": simulator.base_url(Provider.OPENAI), "sealed_key": sealed}


async def test_the_metrics_the_readme_lists_count_a_known_set_of_jobs(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    listed = readme_metrics()
    assert len(listed) == 14, listed
    sealed = seal(WORKSPACE, KEY, Provider.OPENAI, simulator.base_url(Provider.OPENAI))
    known = settings.model_copy(update={"max_attempts": 2, "inline_retry_max_s": 0.5, "metrics_listen": "127.0.0.1:0"})
    async with running(Worker(known)) as worker:
        for job_id, model, _ in JOBS:
            await publish_jobs(settings, [job_body(job_id, WORKSPACE, sealed_model(simulator, model, sealed))])
            await tap.wait_for(lambda job_id=job_id: any(r.json["job_id"] == job_id for r in tap.results),
                               timeout_s=30)
        assert worker.health is not None
        async with httpx.AsyncClient() as client:  # the worker serves it from this event loop
            text = (await client.get(f"http://127.0.0.1:{worker.health.port}/metrics", timeout=5)).text

    assert [(r.json["job_id"], r.json["status"]) for r in tap.results] == [(j, s) for j, _, s in JOBS]
    provider_calls = len(simulator.ledger.calls)
    print(f"\n[worker-metrics] jobs={len(JOBS)} provider_calls={provider_calls} delayed={len(tap.delayed)} "
          f"dead={len(tap.dead)}\n" + "\n".join(
              f"  {s.name}{s.labels} {s.value:g}" for s in samples(text)
              if s.name.startswith("byok_") and not s.name.endswith(("_bucket", "_created", "_sum"))))

    # Every listed metric exists, with exactly the README's labels.
    exposed = {s.name for s in samples(text)}
    for name, labels in listed.items():
        histogram = name.endswith("_seconds")
        sample_name = f"{name}_count" if histogram else name
        assert sample_name in exposed, f"{name} is in the README but not on /metrics"
        assert all(set(ls) == labels for ls in label_sets(text, sample_name)), (name, label_sets(text, sample_name))

    assert value(text, "byok_jobs_total", status="succeeded", error_code="") == 4
    assert value(text, "byok_jobs_total", status="failed", error_code="rate_limited") == 1
    assert value(text, "byok_jobs_total", status="failed", error_code="auth_failed") == 1
    assert len(label_sets(text, "byok_jobs_total")) == 3
    assert value(text, "byok_jobs_in_flight") == 0
    assert provider_calls == 8
    assert value(text, "byok_provider_call_seconds_count", provider="openai") == provider_calls
    # A retry is a provider call made again: m-flaky once, m-rate once (its second 429 ended the job).
    assert value(text, "byok_retries_total", provider="openai", error_code="provider_error") == 1
    assert value(text, "byok_retries_total", provider="openai", error_code="rate_limited") == 1
    assert len(label_sets(text, "byok_retries_total")) == 2
    assert value(text, "byok_jobs_delayed_total") == len(tap.delayed) == 1
    assert value(text, "byok_dead_letters_total", error_code="rate_limited") == 1
    assert value(text, "byok_dead_letters_total", error_code="auth_failed") == 1
    assert len(label_sets(text, "byok_dead_letters_total")) == len(tap.dead) == 2
    # One lookup per attempt, all hits: a cold key (m-ok-1's, and m-ok-3's after the 401 evicted it) is
    # unsealed before its job takes a run slot (README, "Fair share"), so the run finds it in the cache.
    assert value(text, "byok_unseal_cache_lookups_total", result="hit") == 8
    assert label_sets(text, "byok_unseal_cache_lookups_total") == [{"result": "hit"}], "no run missed the cache"
    assert value(text, "byok_jobs_waiting") == 0
    assert value(text, "byok_keys_unsealing") == 0
    assert value(text, "byok_cold_jobs_running") == 0
    assert value(text, "byok_vault_call_seconds_count", outcome="200") == 2
    assert len(label_sets(text, "byok_vault_call_seconds_count")) == 1
    # No connection was lost: nothing was published again.
    assert value(text, "byok_outbox_republished_total") == 0
