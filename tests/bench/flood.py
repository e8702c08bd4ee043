"""The flood scenario (README, "Fair share"): one workspace's 20,000 queued jobs, another's 2 jobs/s beside it.

On the bench services (real broker, OpenBao, the simulator at 200 ms, ``byok worker`` and ``byok aggregator``
processes): the workers start, the quiet workspace sends a few jobs on the idle system (its idle latency), the
flood is published, and ``QUIET_AFTER_S`` later the quiet workspace sends 2 jobs/s for 60 s. What it measures:
the quiet workspace's latency against its idle latency, the flood's throughput while the quiet one sends
against its throughput alone (the seconds before), and that nothing is lost (a result per job; the
aggregator's consumption of both workspaces equal to the simulator's ledger).

    python -m tests.bench.flood [--workers N] [--sort-window W] [--worker-src TREE]   # one run, prints JSON
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.bench.load import Load, percentile
from tests.bench.loop import fast_run, quiet_gc
from tests.bench.run import _jobs
from tests.bench.stack import Stack, new_prefix, stack, stop_process
from tests.processes import wait_ready
from tests.waiting import wait_until_sync
from worker.testing.devstack import free_port

FLOOD_JOBS = 20_000
LATENCY_MS = 200.0
PREFETCH = 64
QUIET_RATE = 2.0
QUIET_SECONDS = 60.0
QUIET_AFTER_S = 10.0
"""The flood runs alone this long first: its throughput alone."""
IDLE_JOBS = 10
FLOOD, QUIET = "flood-ws", "quiet-ws"
BUCKETS = ("requests", "input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens",
           "reasoning_tokens")


@dataclass
class FloodRun:
    workers: int
    sort_window: int | None
    idle_p50: float = 0.0
    idle_p99: float = 0.0
    quiet_p50: float = 0.0
    quiet_p99: float = 0.0
    quiet_max: float = 0.0
    flood_alone_per_s: float = 0.0
    flood_beside_per_s: float = 0.0
    flood_drain_s: float = 0.0
    jobs: int = 0
    results: int = 0
    ledger: dict[str, int] = field(default_factory=dict)
    consumption: dict[str, int] = field(default_factory=dict)
    moved: float = 0.0

    @property
    def flood_share(self) -> float:
        return self.flood_beside_per_s / self.flood_alone_per_s

    def as_json(self) -> dict[str, Any]:
        return {**self.__dict__, "flood_share": self.flood_share}


def _aggregator(services: Stack, prefix: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    port = free_port()
    log_path = services.workdir / f"aggregator-{prefix}.log"
    env = {name: value for name, value in os.environ.items() if not name.startswith(("OTEL_", "BYOK_"))}
    env.update({"BYOK_AMQP_URL": services.amqp_url, "BYOK_TOPOLOGY_PREFIX": prefix,
                "BYOK_STORE_URL": f"sqlite:///{services.workdir / (prefix + '.db')}",
                "BYOK_API_LISTEN": f"127.0.0.1:{port}", "BYOK_METRICS_LISTEN": f"127.0.0.1:{free_port()}",
                "BYOK_LOG_LEVEL": "warning"})
    with log_path.open("wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "worker.cli", "aggregator"], stdout=log,
                                   stderr=subprocess.STDOUT, env=env)

    def up() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"aggregator exited: {log_path.read_text()[-2000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until_sync(up, timeout=30, poll_s=0.1, what="the aggregator's /healthz")
    return process, port, log_path


def _consumption(port: int, workspaces: tuple[str, ...]) -> dict[str, int]:
    summed = dict.fromkeys(BUCKETS, 0)
    for workspace in workspaces:
        totals = httpx.get(f"http://127.0.0.1:{port}/v1/workspaces/{workspace}/consumption", timeout=30).json()
        for name in BUCKETS:
            summed[name] += int(totals["totals"][name])
    return summed


def _moved(ports: list[int]) -> float:
    from tests.bench.stack import metric_sum, scrape

    return sum(metric_sum(scrape(port), "byok_jobs_moved_total") for port in ports)


async def flood(services: Stack, *, workers: int, sort_window: int | None = None,
                flood_jobs: int = FLOOD_JOBS, quiet_seconds: float = QUIET_SECONDS) -> FloodRun:
    """One flood run; ``sort_window`` None: the worker's default (``BYOK_SORT_WINDOW`` unset)."""
    found = FloodRun(workers, sort_window)
    sim = services.simulator(LATENCY_MS)
    prefix = new_prefix(f"flood{workers}")
    sealed = await asyncio.to_thread(services.seal, [FLOOD, QUIET], sim.endpoint)
    flood_list = _jobs(prefix + "f", flood_jobs, sealed, sim, workspaces=[FLOOD])
    idle_list = _jobs(prefix + "i", IDLE_JOBS, sealed, sim, workspaces=[QUIET])
    quiet_list = _jobs(prefix + "q", int(QUIET_RATE * quiet_seconds), sealed, sim, workspaces=[QUIET])
    found.jobs = len(flood_list) + len(idle_list) + len(quiet_list)
    httpx.post(f"http://127.0.0.1:{sim.port}/_sim/reset", timeout=10).raise_for_status()
    env = {} if sort_window is None else {"BYOK_SORT_WINDOW": str(sort_window)}
    async with Load(services.amqp_url, prefix) as load:
        aggregator, api_port, _ = _aggregator(services, prefix)
        running = [services.launch_worker(prefix, PREFETCH, name=f"-{i}", **env) for i in range(workers)]
        try:
            for worker in running:
                await asyncio.to_thread(wait_ready, worker)
            load.collector.reset(found.jobs)
            await load.paced(idle_list, QUIET_RATE)
            await asyncio.sleep(1.0)
            await load.prefill(flood_list)
            flood_queued = time.perf_counter()
            quiet_at = flood_queued + QUIET_AFTER_S
            await load.paced(quiet_list, QUIET_RATE, start_at=quiet_at)
            await load.collector.wait(600)
            found.moved = await asyncio.to_thread(_moved, [w.health_port for w in running])
        finally:
            for worker in running:
                worker.stop()
        arrivals = load.collector.arrivals
        flood_ids = [job_id for job_id, _ in flood_list]
        found.results = load.collector.count
        flood_done = sorted(arrivals[j] for j in flood_ids if j in arrivals)
        found.flood_drain_s = flood_done[-1] - flood_queued
        # Alone: from 2 s in (the workers at full pace) to the quiet workspace's first job.
        found.flood_alone_per_s = _rate(flood_done, flood_queued + 2.0, quiet_at)
        quiet_end = quiet_at + quiet_seconds
        found.flood_beside_per_s = _rate(flood_done, quiet_at, min(quiet_end, flood_done[-1]))
        idle_ms = load.latencies_ms([j for j, _ in idle_list])
        quiet_ms = load.latencies_ms([j for j, _ in quiet_list if load.sent_at[j] <= flood_done[-1]])
        found.idle_p50, found.idle_p99 = percentile(idle_ms, 50), percentile(idle_ms, 99)
        found.quiet_p50, found.quiet_p99 = percentile(quiet_ms, 50), percentile(quiet_ms, 99)
        found.quiet_max = max(quiet_ms)
        try:
            found.ledger = httpx.get(f"http://127.0.0.1:{sim.port}/_sim/ledger", timeout=60).json()["totals"]

            def counted() -> bool:
                found.consumption = _consumption(api_port, (FLOOD, QUIET))
                return found.consumption["requests"] >= found.ledger["requests"]

            await asyncio.to_thread(wait_until_sync, counted, timeout=120, poll_s=0.5,
                                    what=lambda: f"consumption {found.consumption} to reach {found.ledger}")
        finally:
            stop_process(aggregator)
    return found


def _rate(done: list[float], start: float, end: float) -> float:
    if end <= start:
        return float("nan")
    return sum(1 for t in done if start <= t < end) / (end - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.flood", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--sort-window", type=int, default=None)
    parser.add_argument("--worker-src", type=Path, default=None, help="run byok worker from this tree")
    args = parser.parse_args(argv)
    quiet_gc()

    async def one() -> FloodRun:
        with stack() as services:
            services.worker_source = args.worker_src.resolve() if args.worker_src else None
            return await flood(services, workers=args.workers, sort_window=args.sort_window)

    print(orjson.dumps(fast_run()(one()).as_json(), option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
