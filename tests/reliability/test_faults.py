"""Faults injected on purpose, against the real broker, the real Vault-API server and real processes.

Each test prints its figures (jobs sent, results, dead letters, ledger against aggregator) so a run
with ``-s`` shows them.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st
from pydantic import SecretStr

from schemas.models import MAX_JOB_BYTES, Provider
from tests.broker import BrokerTap, byok, job_body, publish_jobs, running
from tests.conftest import Sealer
from tests.faults import TcpProxy
from tests.processes import start_worker
from tests.services import start_vault
from tests.waiting import wait_until
from worker.jobs.service import Worker
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-test-Reliability0123456789abcdef"


def sealed_model(
    seal: Sealer, simulator: ProviderSimulator, workspace: str, name: str = "gpt-4o-mini"
) -> dict[str, Any]:
    base_url = simulator.base_url(Provider.OPENAI)
    return {"provider": "openai", "name": name, "base_url": base_url,
            "sealed_key": seal(workspace, KEY, Provider.OPENAI, base_url)}


def vault_calls(worker: Worker) -> float:
    return sum(s.value for m in worker.metrics.vault_latency.collect() for s in m.samples if s.name.endswith("_count"))


def retries(worker: Worker) -> float:
    return sum(s.value for m in worker.metrics.retries.collect() for s in m.samples if s.name.endswith("_total"))


def job_ids(tap: BrokerTap) -> set[str]:
    return {r.json["job_id"] for r in tap.results}


@pytest.mark.timeout(120)
async def test_broker_connection_cut_mid_run_loses_no_job(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    model = sealed_model(seal, simulator, "ws-cut")
    parts = urlsplit(settings.amqp_url.get_secret_value())
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5672)
    await proxy.start()
    via_proxy = urlunsplit(parts._replace(netloc=f"guest:guest@127.0.0.1:{proxy.port}"))
    proxied = settings.model_copy(update={"amqp_url": SecretStr(via_proxy), "prefetch": 20})
    simulator.latency_s = 0.05
    total = 300
    async with running(Worker(proxied)):
        await publish_jobs(settings, [job_body(f"cut-{i}", "ws-cut", model) for i in range(total)])
        await tap.wait_for(lambda: len(job_ids(tap)) >= 60, timeout_s=30)
        cut = await proxy.cut()
        results_at_cut = len(job_ids(tap))
        await tap.wait_for(lambda: len(job_ids(tap)) == total, timeout_s=90)
    await proxy.stop()
    assert cut == 1, "the worker's one connection went through the proxy"
    assert proxy.connections >= 2, "the worker did not reconnect"
    assert job_ids(tap) == {f"cut-{i}" for i in range(total)}
    assert all(r.json["status"] == "succeeded" for r in tap.results)
    # Jobs whose ack was lost are settled again from memory: no second provider call, same usage event id.
    assert len(simulator.ledger.billed()) == total
    assert len({u.json["event_id"] for u in tap.usage}) == total
    print(f"\n[broker cut] sent={total} results_at_cut={results_at_cut} connections_cut={cut} "
          f"reconnects={proxy.connections - 1} results={len(tap.results)} unique={len(job_ids(tap))} "
          f"dead={len(tap.dead)} ledger_calls={len(simulator.ledger.billed())}")


@pytest.mark.timeout(120)
async def test_vault_stopped_mid_run_fails_no_job(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    own_vault = start_vault()
    try:
        own = settings.model_copy(update={
            "vault_addr": own_vault.addr, "vault_token": SecretStr(own_vault.root_token),
            "unseal_cache_ttl_s": 0.0, "vault_timeout_s": 1.0, "retry_base_delay_s": 0.2, "retry_max_delay_s": 2.0,
            "prefetch": 100,  # every job in flight at once, so each one meets the outage
        })
        byok(own, "keys", "create", "ws-vault")
        base_url = simulator.base_url(Provider.OPENAI)
        sealed = byok(own, "keys", "seal", "ws-vault", "--provider", "openai", "--base-url", base_url,
                      stdin=KEY.encode()).stdout.decode().strip()
        model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url, "sealed_key": sealed}
        deadline = "2099-01-01T00:00:00Z"
        total = 100
        async with running(Worker(own)) as worker:
            await publish_jobs(own, [job_body(f"v-{i}", "ws-vault", model, deadline=deadline) for i in range(20)])
            await tap.wait_for(lambda: len(tap.results) == 20)
            own_vault.process.send_signal(signal.SIGSTOP)
            stopped_at = time.monotonic()
            await publish_jobs(own, [job_body(f"v-{i}", "ws-vault", model, deadline=deadline)
                                     for i in range(20, total)])
            # The outage lasts until every job published during it is in the worker and the failed unseals
            # add up to two per job: they met the stopped Vault and retried against it.
            await wait_until(lambda: worker.metrics.in_flight._value.get() == total - 20
                             and retries(worker) >= 2 * (total - 20), timeout=60,
                             what=lambda: f"80 jobs retrying on the stopped Vault ({retries(worker):g} retries)")
            during = len(tap.results)
            own_vault.process.send_signal(signal.SIGCONT)
            await tap.wait_for(lambda: len(job_ids(tap)) == total, timeout_s=60)
        statuses = [r.json["status"] for r in tap.results]
        print(f"\n[vault outage] sent={total} outage_s={time.monotonic() - stopped_at:.1f} "
              f"results_during_outage={during - 20} results={len(tap.results)} failed={statuses.count('failed')} "
              f"dead={len(tap.dead)} vault_calls={vault_calls(worker)}")
        assert during == 20, "no job may finish while its key cannot be unsealed"
        assert statuses.count("failed") == 0
        assert job_ids(tap) == {f"v-{i}" for i in range(total)}
        assert tap.dead == []
    finally:
        own_vault.process.send_signal(signal.SIGCONT)
        own_vault.stop()


def malformed_bodies() -> st.SearchStrategy[bytes]:
    valid: dict[str, Any] = {"job_id": "m", "workspace_id": "ws-m", "model": {"provider": "ollama", "name": "x"},
                             "input": {"messages": [{"role": "user", "content": "x"}]}}
    wrong_types = st.fixed_dictionaries({
        "job_id": st.one_of(st.integers(), st.none(), st.lists(st.text())),
        "workspace_id": st.one_of(st.integers(), st.text(), st.booleans()),
        "model": st.one_of(st.text(), st.integers(), st.dictionaries(st.text(), st.text())),
        "input": st.one_of(st.text(), st.lists(st.integers())),
    }).map(_dump)
    missing_fields = st.sets(st.sampled_from(sorted(valid)), min_size=1).map(
        lambda drop: orjson.dumps({k: v for k, v in valid.items() if k not in drop}))
    oversized = st.one_of(
        st.integers(129, 5_000).map(lambda n: {**valid, "job_id": "x" * n}),
        st.integers(17_000, 40_000).map(lambda n: {**valid, "metadata": {"blob": "x" * n}}),
        st.integers(65, 2_000).map(lambda n: {**valid, "workspace_id": "w" * n}),
    ).map(_dump)
    bad_utf8 = st.binary(min_size=1, max_size=64).map(lambda b: b'{"job_id": "' + b + b'\xff\xfe"}')
    not_json = st.binary(max_size=200).filter(lambda b: not _is_json(b))
    junk_json = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.text(max_size=20),
                             lambda children: st.lists(children, max_size=4), max_leaves=8).map(_dump)
    return st.one_of(wrong_types, missing_fields, oversized, bad_utf8, not_json, junk_json)


def _dump(value: Any) -> bytes:
    # The standard library writes integers of any size (orjson stops at 64 bits).
    return json.dumps(value).encode()


def _is_json(data: bytes) -> bool:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return True


def generate_malformed(count: int) -> list[bytes]:
    bodies: list[bytes] = []

    @hyp_settings(max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    @given(malformed_bodies())
    def collect(body: bytes) -> None:
        bodies.append(body)

    collect()
    return bodies[:count]


@pytest.mark.timeout(240)
async def test_two_thousand_malformed_bodies_interleaved_with_valid_jobs(
    settings: Settings, simulator: ProviderSimulator, running_worker: Worker, tap: BrokerTap, seal: Sealer
) -> None:
    model = sealed_model(seal, simulator, "ws-mal")
    # Bodies over the 1 MiB job limit are few but real; the rest come from hypothesis.
    huge = [orjson.dumps({"job_id": f"huge-{i}", "blob": "x" * (1_048_576 + i)}) for i in range(5)]
    malformed = generate_malformed(1995) + huge
    assert len(malformed) == 2000
    valid = [job_body(f"ok-{i}", "ws-mal", model) for i in range(100)]
    bodies: list[bytes] = []
    for i, body in enumerate(malformed):
        bodies.append(body)
        if i % 20 == 0:
            bodies.append(valid[i // 20])
    await publish_jobs(settings, bodies)
    await tap.wait_for(lambda: len(tap.dead) >= 2000 and len(job_ids(tap) & {f"ok-{i}" for i in range(100)}) == 100,
                       timeout_s=180)
    ok = [r.json for r in tap.results if r.json["job_id"].startswith("ok-")]
    assert all(r["status"] == "succeeded" for r in ok)
    assert len(tap.dead) == 2000
    assert all(d.headers.get("x-byok-error") == "invalid_job" and d.headers.get("x-byok-reason") for d in tap.dead)
    # A body over the job limit is dead-lettered cut to it, with its size in x-byok-truncated.
    assert sorted(d.body for d in tap.dead) == sorted(body[:MAX_JOB_BYTES] for body in malformed)
    assert sorted(d.headers["x-byok-truncated"] for d in tap.dead if len(d.body) == MAX_JOB_BYTES) == sorted(
        len(body) for body in huge)
    assert running_worker.ready.is_set()
    print(f"\n[malformed] sent={len(bodies)} malformed={len(malformed)} valid={len(valid)} "
          f"valid_succeeded={len(ok)} dead={len(tap.dead)} invalid_results={len(tap.results) - len(ok)}")


@pytest.mark.timeout(180)
async def test_sigterm_under_load_finishes_in_flight_and_redelivers_the_rest(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    simulator.latency_s = 0.5
    model = sealed_model(seal, simulator, "ws-term")
    total = 150
    await publish_jobs(settings, [job_body(f"t-{i}", "ws-term", model) for i in range(total)])
    first = await asyncio.to_thread(start_worker, settings, BYOK_PREFETCH="20", BYOK_SHUTDOWN_GRACE_S="10")
    await tap.wait_for(lambda: len(tap.results) >= 30, timeout_s=60)
    first.signal(signal.SIGTERM)
    code = await asyncio.to_thread(first.wait, 30)
    after_stop = len(job_ids(tap))
    log = first.log()
    assert code == 0, log[-2000:]
    assert '"worker.draining"' in log
    assert '"job.cancelled"' not in log, "every in-flight job must have finished within the grace period"
    second = await asyncio.to_thread(start_worker, settings, BYOK_PREFETCH="50")
    try:
        await tap.wait_for(lambda: len(job_ids(tap)) == total, timeout_s=90)
    finally:
        second.stop()
    duplicates = len(tap.results) - len(job_ids(tap))
    print(f"\n[sigterm] sent={total} finished_by_first={after_stop} results={len(tap.results)} "
          f"duplicates={duplicates} dead={len(tap.dead)} ledger_calls={len(simulator.ledger.billed())}")
    assert duplicates == 0, "a drained worker must not leave half-finished jobs behind"
    assert len(simulator.ledger.billed()) == total
    assert tap.dead == []
