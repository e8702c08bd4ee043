"""``make bench``: every benchmark of BENCHMARKS.md in one run, against the real local services.

Processes: this one publishes jobs and collects results; the simulator(s), the OpenBao dev server,
each ``byok worker`` and the bare aio-pika loop run in processes of their own, so CPU is measured per
process from /proc. Every figure that has a target is a ratio or a value measured in this same run.

    python -m tests.bench.run                 # everything, writes BENCHMARKS.md (about 5 minutes)
    python -m tests.bench.run --only P1,P3    # a subset (BENCHMARKS.md is then not written)
    python -m tests.bench.run --only P8       # tracing on / off only
    python -m tests.bench.run --profile DIR   # P1 under py-spy: DIR/worker.txt (collapsed stacks), top frames
    python -m tests.bench.run --worker-src DIR --output FILE   # the same against another copy of the tree
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from tests.bench import report
from tests.bench.load import Load, Window, job_body, percentile
from tests.bench.loop import fast_run, quiet_gc
from tests.bench.procstat import CpuProbe, find_pid, machine, memory_mb
from tests.bench.stack import Simulator, Stack, metric_sum, new_prefix, scrape, stack, stop_process
from tests.processes import wait_ready
from worker.aggregator.pricing import load_prices
from worker.budgets.admin import BudgetAdmin
from worker.budgets.rules import Budget
from worker.testing.devstack import free_port, wait_for_port

ROOT = Path(__file__).resolve().parents[2]
WORKSPACES = [f"bench-ws-{i:02d}" for i in range(16)]
WARM_WORKSPACE = "bench-warm"

# Sizes: the whole run stays within a few minutes on 2 cores.
P1_JOBS = 10_000
P1_ROUNDS = 3
P2_JOBS = 7_000
P2_PREFETCH = 500
P2_LATENCY_MS = 1000.0
P1_PREFETCH = 256
P3_CALLS = 2_000
P3_CONCURRENCY = 64
P4_SECONDS = 15.0
P4_LATENCY_MS = 50.0
P5_COLD = 1_000
P5_WARM_RATE = 100.0
P5_SECONDS = 8.0
P5_COLD_AT_S = 2.0
P5_PACED_S = 4.0
P6_EVENTS = 20_000
ALL = ("P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9", "P10")
P10_WORKERS = (1, 3)
P8_JOBS = 5_000
P8_ROUNDS = 3
P9_JOBS = 6_000
P9_ROUNDS = 3
P7_JOBS = 5_000
P7_ROUNDS = 2
P7_LIMIT_USD = 1e9
PG_URL = os.environ.get("BENCH_PG_URL", "postgresql://127.0.0.1:5432/test")


@dataclass
class Throughput:
    kind: str
    jobs: int
    rate: float
    window_jobs: int
    window_s: float
    cpu_s: dict[str, float]
    sys_s: dict[str, float]
    memory: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)

    def cpu_ms_per_job(self, process: str) -> float:
        return self.cpu_s[process] * 1000 / self.window_jobs

    def cores(self, process: str) -> float:
        return self.cpu_s[process] / self.window_s


def _median(runs: list[Throughput]) -> Throughput:
    return sorted(runs, key=lambda run: run.rate)[len(runs) // 2]


def _jobs(prefix: str, n: int, sealed: dict[str, str], sim: Simulator, model: str = "gpt-4o-mini",
          workspaces: list[str] | None = None) -> list[tuple[str, bytes]]:
    names = workspaces or list(sealed)
    jobs = []
    for i in range(n):
        ws = names[i % len(names)]
        job_id = f"{prefix}-{i:07d}"
        jobs.append((job_id, job_body(job_id, ws, sealed[ws], sim.openai_base_url, model=model, run=prefix)))
    return jobs


async def throughput(services: Stack, kind: str, n: int, prefetch: int, sim: Simulator,
                     profile_dir: Path | None = None, worker_env: dict[str, str] | None = None) -> Throughput:
    """Prefill ``n`` jobs, start the consumer (``worker`` or ``bare``), time the results between 5% and 95%."""
    prefix = new_prefix(kind)
    sealed = await asyncio.to_thread(services.seal, WORKSPACES, sim.endpoint)
    jobs = _jobs(prefix, n, sealed, sim)
    broker = find_pid("beam.smp")
    async with Load(services.amqp_url, prefix) as load:
        await load.prefill(jobs)
        window = Window(int(n * 0.05), int(n * 0.95))
        load.collector.reset(n, window)
        if kind == "bare":
            env = {**os.environ, "BENCH_AMQP_URL": services.amqp_url, "BENCH_PREFIX": prefix,
                   "BENCH_PREFETCH": str(prefetch)}
            bare = subprocess.Popen([sys.executable, "-m", "tests.bench.bare"], env=env)
            pid, worker = bare.pid, None
        else:
            worker = services.launch_worker(prefix, prefetch, **(worker_env or {}))
            pid, bare = worker.process.pid, None
        pids = {"consumer": pid, "simulator": sim.pid, "collector": os.getpid()}
        if broker is not None:
            pids["broker"] = broker
        probe = CpuProbe(pids)
        spies: list[subprocess.Popen[bytes]] = []

        def on_start() -> None:
            probe.start()
            if profile_dir is not None:
                spies.append(_py_spy(pid, profile_dir))

        window.on_start = on_start
        window.on_end = probe.stop
        try:
            await load.collector.wait(300)
            memory = memory_mb(pid)
            metrics = await asyncio.to_thread(scrape, worker.health_port) if worker is not None else {}
        finally:
            for spy in spies:
                spy.wait(120)
            if worker is not None:
                worker.stop()
            if bare is not None:
                stop_process(bare)
    cpu, system = dict(probe.used), dict(probe.system)
    cpu["worker" if kind == "worker" else "bare"] = cpu["consumer"]
    return Throughput(kind, n, window.rate, window.hi - window.lo, window.ended - window.started, cpu, system,
                      memory, metrics)


def _py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    out.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(pid), "--rate", "250", "--duration", "8",
         "--nonblocking", "--format", "raw", "-o", str(out / "worker.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


_LINE = re.compile(r":\d+\)$")
_FILE = re.compile(r"\(([^()]+)\)$")
# Frames every sample goes through (the interpreter, the CLI, the event loop): no information.
_ROOT = re.compile(r"runpy|worker/cli\.py|asyncio/runners\.py|run_forever|run_until_complete|_run_once|Handle\._run")


def top_frames(raw: Path, limit: int = 25) -> dict[str, list[tuple[str, float]]]:
    """Shares of py-spy's samples (collapsed stacks): own time per frame, inclusive time per frame,
    and own time per package (asyncio, aiormq, aiohttp, pydantic…; this project's files by name)."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    packages: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_text, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [_LINE.sub(")", f) for f in stack_text.split(";")]
        total += count
        own[frames[-1]] += count
        packages[_package(frames[-1])] += count
        for frame in set(frames):
            if not _ROOT.search(frame):
                inclusive[frame] += count
    return {name: [(f, c / total) for f, c in counter.most_common(limit)]
            for name, counter in (("own time", own), ("inclusive time", inclusive), ("own time by package", packages))}


def _package(frame: str) -> str:
    found = _FILE.search(frame)
    path = found.group(1) if found else frame
    top = path.split("/")[0] if "/" in path else path
    return path if top in ("worker", "schemas") else top


async def latency(services: Stack, rate: float) -> dict[str, Any]:
    """P4: jobs published at ``rate``/s; end-to-end time minus the simulator's configured latency."""
    sim = services.simulator(P4_LATENCY_MS)
    prefix = new_prefix("latency")
    sealed = await asyncio.to_thread(services.seal, WORKSPACES, sim.endpoint)
    warmup = _jobs(prefix + "w", 200, sealed, sim)
    jobs = _jobs(prefix, int(rate * P4_SECONDS), sealed, sim)
    async with Load(services.amqp_url, prefix) as load:
        worker = services.launch_worker(prefix, P1_PREFETCH)
        try:
            await asyncio.to_thread(wait_ready, worker)
            load.collector.reset(len(warmup))
            await load.paced(warmup, rate)
            await load.collector.wait(60)
            load.collector.reset(len(jobs))
            probe = _probe(worker.process.pid, sim)
            started = time.perf_counter()
            probe.start()
            await load.paced(jobs, rate)
            await load.collector.wait(60)
            cpu = {name: used / (time.perf_counter() - started) for name, used in probe.stop().items()}
        finally:
            worker.stop()
        overhead = [ms - P4_LATENCY_MS for ms in load.latencies_ms([j for j, _ in jobs])]
    return {"rate": rate, "jobs": len(jobs), "p50": percentile(overhead, 50), "p99": percentile(overhead, 99),
            "max": max(overhead), "cores": cpu}


def _probe(worker_pid: int, sim: Simulator) -> CpuProbe:
    pids = {"worker": worker_pid, "simulator": sim.pid, "collector": os.getpid()}
    broker = find_pid("beam.smp")
    if broker is not None:
        pids["broker"] = broker
    return CpuProbe(pids)


async def vault_cold(services: Stack) -> dict[str, Any]:
    """P5 cold start: 1,000 never-seen workspaces while one warm workspace keeps sending 100 jobs/s.

    Twice, each time on a fresh worker (empty unseal cache): the cold jobs spread over 2 s ("paced",
    500/s: does unsealing hold up anything else?) and all at once ("burst": how fast 1,000 unseals drain).
    """
    sim = services.simulator(0.0)
    cold_ws = [f"bench-cold-{i:04d}" for i in range(P5_COLD)]
    started = time.perf_counter()
    sealed = await asyncio.to_thread(services.seal, [*cold_ws, WARM_WORKSPACE], sim.endpoint, 16)
    found: dict[str, Any] = {"seal_s": time.perf_counter() - started}
    for mode in ("paced", "burst"):
        found[mode] = await _cold_scenario(services, sim, sealed, cold_ws, mode)
    return found


async def _cold_scenario(services: Stack, sim: Simulator, sealed: dict[str, str], cold_ws: list[str],
                         mode: str) -> dict[str, Any]:
    prefix = new_prefix("cold" + mode)
    warm_jobs = _jobs(prefix + "w", int(P5_WARM_RATE * P5_SECONDS), sealed, sim, workspaces=[WARM_WORKSPACE])
    cold_jobs = _jobs(prefix + "c", P5_COLD, sealed, sim, workspaces=cold_ws)
    primer = _jobs(prefix + "p", 50, sealed, sim, workspaces=[WARM_WORKSPACE])
    async with Load(services.amqp_url, prefix) as load:
        worker = services.launch_worker(prefix, P1_PREFETCH)
        try:
            await asyncio.to_thread(wait_ready, worker)
            load.collector.reset(len(primer))
            await load.prefill(primer)
            await load.collector.wait(60)
            before = await asyncio.to_thread(scrape, worker.health_port)
            load.collector.reset(len(warm_jobs) + len(cold_jobs))
            t0 = time.perf_counter()
            cold_at = t0 + P5_COLD_AT_S

            async def cold() -> None:
                await asyncio.sleep(cold_at - time.perf_counter())
                if mode == "burst":
                    await load.burst(cold_jobs)
                else:
                    await load.paced(cold_jobs, P5_COLD / P5_PACED_S, start_at=cold_at)

            await asyncio.gather(load.paced(warm_jobs, P5_WARM_RATE, start_at=t0), cold())
            await load.collector.wait(120)
            after = await asyncio.to_thread(scrape, worker.health_port)
        finally:
            worker.stop()
        arrivals = load.collector.arrivals
        cold_done = max(arrivals[j] for j, _ in cold_jobs)
        cold_sent = min(load.sent_at[j] for j, _ in cold_jobs)
        baseline = [j for j, _ in warm_jobs if load.sent_at[j] < cold_sent]
        during = [j for j, _ in warm_jobs if cold_sent <= load.sent_at[j] <= cold_done]
        base_ms, during_ms = load.latencies_ms(baseline), load.latencies_ms(during)
        cold_ms = load.latencies_ms([j for j, _ in cold_jobs])
    calls = "byok_vault_call_seconds_count"
    vault_calls = metric_sum(after, calls) - metric_sum(before, calls)
    vault_ok = after.get(calls + '{outcome="200"}', 0.0) - before.get(calls + '{outcome="200"}', 0.0)
    failed = sum(v - before.get(k, 0.0) for k, v in after.items()
                 if k.startswith("byok_jobs_total{") and 'status="failed"' in k)
    return {
        "vault_calls": vault_calls, "vault_errors": vault_calls - vault_ok, "failed": failed,
        "cold_drain_s": cold_done - cold_sent, "cold_p50": percentile(cold_ms, 50),
        "cold_p99": percentile(cold_ms, 99),
        "warm_base_p50": percentile(base_ms, 50), "warm_base_p99": percentile(base_ms, 99),
        "warm_during_p50": percentile(during_ms, 50), "warm_during_p99": percentile(during_ms, 99),
        "warm_during_max": max(during_ms) if during_ms else float("nan"), "warm_during_n": len(during_ms),
    }


async def tracing_cost(services: Stack, sim: Simulator) -> dict[str, Any]:
    """P8: worker CPU per job with tracing on (OTLP/HTTP to a receiver in its own process) and off, alternated
    ``P8_ROUNDS`` times on the same load as P1; the medians' ratio, and the spans the receiver decoded."""
    port = free_port()
    sink = subprocess.Popen([sys.executable, "-m", "tests.otlp", "--port", str(port)])
    try:
        await asyncio.to_thread(wait_for_port, "127.0.0.1", port, 30)
        traced = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_SERVICE_NAME": "byok-bench"}
        runs: dict[str, list[Throughput]] = {"off": [], "on": []}
        for round_ in range(1, P8_ROUNDS + 1):
            print(f"bench: P8 round {round_}/{P8_ROUNDS}: tracing off, then on …", file=sys.stderr)
            runs["off"].append(await throughput(services, "worker", P8_JOBS, P1_PREFETCH, sim))
            runs["on"].append(await throughput(services, "worker", P8_JOBS, P1_PREFETCH, sim, worker_env=traced))
        stats = orjson.loads(httpx.get(f"http://127.0.0.1:{port}/stats", timeout=10).content)
    finally:
        stop_process(sink)
    cpu = {mode: sorted(run.cpu_ms_per_job("worker") for run in found) for mode, found in runs.items()}
    return {"cpu_ms": {mode: values[len(values) // 2] for mode, values in cpu.items()}, "rounds": cpu,
            "rates": {mode: [run.rate for run in found] for mode, found in runs.items()},
            "spans": stats["spans"], "requests": stats["requests"], "traced_jobs": P8_JOBS * P8_ROUNDS}


def clients(sim: Simulator) -> dict[str, dict[str, float]]:
    """P3's references: the same call through ``openai`` and ``litellm``, each in its own process."""
    found: dict[str, dict[str, float]] = {}
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
    for client in ("openai", "litellm"):
        out = subprocess.run(
            [sys.executable, "-m", "tests.bench.clients", client, sim.openai_base_url, str(P3_CALLS),
             str(P3_CONCURRENCY)], capture_output=True, env=env, timeout=300, check=False,
        )
        if out.returncode != 0:
            found[client] = {"error": 1.0}
            print(f"bench: {client} client failed: {out.stderr.decode()[-2000:]}", file=sys.stderr)
            continue
        found[client] = orjson.loads(out.stdout.decode().strip().splitlines()[-1])
    return found


async def aggregator_ingest(workdir: Path) -> dict[str, Any]:
    try:
        from worker.aggregator.bench import bench_ingest
    except ImportError as exc:
        return {"error": f"worker.aggregator.bench.bench_ingest is not available ({exc})"}
    found: dict[str, Any] = {}
    for name, url in (("sqlite", f"sqlite:///{workdir / 'ingest.db'}"), ("postgresql", PG_URL)):
        try:
            found[name] = await bench_ingest(url, P6_EVENTS)
        except Exception as exc:
            found[name] = f"{type(exc).__name__}: {exc}"[:200]
    return found


async def call_records_cost(services: Stack, sim: Simulator) -> dict[str, Any]:
    """P9: the same P1 run with provider-call records off (``BYOK_CALL_RECORDS=false``) and on (the default),
    alternating ``P9_ROUNDS`` times; the median run of each counts."""
    off_runs, on_runs = [], []
    for round_ in range(1, P9_ROUNDS + 1):
        print(f"bench: P9 round {round_}/{P9_ROUNDS}: call records off, then on …", file=sys.stderr)
        off_runs.append(await throughput(services, "worker", P9_JOBS, P1_PREFETCH, sim,
                                         worker_env={"BYOK_CALL_RECORDS": "false"}))
        on_runs.append(await throughput(services, "worker", P9_JOBS, P1_PREFETCH, sim))
    off, on = _median(off_runs), _median(on_runs)
    return {"off": off, "on": on, "rounds": [(a.rate, b.rate) for a, b in zip(off_runs, on_runs, strict=True)]}
async def budgeted(services: Stack, sim: Simulator) -> dict[str, Any]:
    """P7: P1's load with a block budget (never reached) on every workspace, against the same without one.

    Both runs have a store (SQLite files in the work directory); without budgets the worker never touches it
    after start-up. Plain and budgeted alternate; the median of each counts."""
    budgets_url = f"sqlite:///{services.workdir / 'p7-budgets.db'}"
    admin = await BudgetAdmin.open(budgets_url, load_prices(None), migrate_schema=True)
    try:
        for workspace in WORKSPACES:
            await admin.set(Budget(workspace_id=workspace, limit_usd=P7_LIMIT_USD))
    finally:
        await admin.close()
    plain_env = {"BYOK_STORE_URL": f"sqlite:///{services.workdir / 'p7-none.db'}"}
    plain, held = [], []
    for round_ in range(1, P7_ROUNDS + 1):
        print(f"bench: P7 round {round_}/{P7_ROUNDS}: without budgets, then with …", file=sys.stderr)
        plain.append(await throughput(services, "worker", P7_JOBS, P1_PREFETCH, sim, worker_env=plain_env))
        held.append(await throughput(services, "worker", P7_JOBS, P1_PREFETCH, sim,
                                     worker_env={"BYOK_STORE_URL": budgets_url}))
    without, with_ = _median(plain).rate, _median(held).rate
    return {"without": without, "with": with_, "ratio": with_ / without,
            "rounds": [(p.rate, h.rate) for p, h in zip(plain, held, strict=True)],
            "worker_cpu_ms": {"without": _median(plain).cpu_ms_per_job("worker"),
                              "with": _median(held).cpu_ms_per_job("worker")}}


async def run(only: set[str], profile_dir: Path | None, worker_src: Path | None = None) -> dict[str, Any]:
    results: dict[str, Any] = {
        "machine": machine(), "date": datetime.now(UTC).isoformat(timespec="seconds"), "load_before": os.getloadavg(),
        "sizes": {"p1_jobs": P1_JOBS, "p1_rounds": P1_ROUNDS, "p1_prefetch": P1_PREFETCH, "p2_jobs": P2_JOBS,
                  "p2_prefetch": P2_PREFETCH, "p3_calls": P3_CALLS, "p3_concurrency": P3_CONCURRENCY,
                  "p4_seconds": P4_SECONDS, "p4_latency_ms": P4_LATENCY_MS, "p5_warm_rate": P5_WARM_RATE,
                  "p5_paced_s": P5_PACED_S, "p6_events": P6_EVENTS, "p7_jobs": P7_JOBS, "p7_rounds": P7_ROUNDS,
                  "p8_jobs": P8_JOBS, "p8_rounds": P8_ROUNDS,
                  "p9_jobs": P9_JOBS, "p9_rounds": P9_ROUNDS},
    }
    with stack() as services:
        services.worker_source = worker_src
        sim = services.simulator(0.0)
        if profile_dir is not None:
            results["P1_bare"] = await throughput(services, "bare", P1_JOBS, P1_PREFETCH, sim)
            results["P1_worker"] = await throughput(services, "worker", P1_JOBS, P1_PREFETCH, sim, profile_dir)
            return results
        if only & {"P1", "P3", "P4", "P5"}:
            # Bare loop and worker alternate, three times each: the median run of each kind counts, so a
            # burst of other load on the machine moves one run, not the ratio.
            bare_runs, worker_runs = [], []
            for round_ in range(1, P1_ROUNDS + 1):
                print(f"bench: P1 round {round_}/{P1_ROUNDS}: bare aio-pika loop, then worker …", file=sys.stderr)
                bare_runs.append(await throughput(services, "bare", P1_JOBS, P1_PREFETCH, sim))
                worker_runs.append(await throughput(services, "worker", P1_JOBS, P1_PREFETCH, sim))
            results["P1_bare"], results["P1_worker"] = _median(bare_runs), _median(worker_runs)
            results["P1_rounds"] = [(b.rate, w.rate) for b, w in zip(bare_runs, worker_runs, strict=True)]
        if "P2" in only:
            print("bench: P2 concurrency …", file=sys.stderr)
            results["P2"] = await throughput(services, "worker", P2_JOBS, P2_PREFETCH,
                                             services.simulator(P2_LATENCY_MS))
        if "P3" in only:
            print("bench: P3 openai / litellm clients …", file=sys.stderr)
            results["P3_clients"] = await asyncio.to_thread(clients, sim)
        if "P4" in only:
            print("bench: P4 latency …", file=sys.stderr)
            results["P4"] = await latency(services, results["P1_worker"].rate / 2)
        if "P5" in only:
            print("bench: P5 Vault cold start …", file=sys.stderr)
            results["P5_cold"] = await vault_cold(services)
        await _features(services, sim, only, results)
    return results


async def _features(services: Stack, sim: Simulator, only: set[str], results: dict[str, Any]) -> None:
    """P6-P10: what tracing, the aggregator, budgets, call records and fair share cost or do."""
    if "P8" in only:
        results["P8"] = await tracing_cost(services, sim)
    if "P6" in only:
        print("bench: P6 aggregator ingest …", file=sys.stderr)
        results["P6"] = await aggregator_ingest(services.workdir)
    if "P7" in only:
        print("bench: P7 budgets …", file=sys.stderr)
        results["P7"] = await budgeted(services, sim)
    if "P9" in only:
        print("bench: P9 provider-call records …", file=sys.stderr)
        results["P9"] = await call_records_cost(services, sim)
    if "P10" in only:
        results["P10"] = await fair_share(services)


async def fair_share(services: Stack) -> dict[str, Any]:
    """P10: the flood of ``tests.bench.flood`` with one worker and with three."""
    from tests.bench.flood import flood  # it builds its jobs with this module's helpers

    found = {}
    for workers in P10_WORKERS:
        print(f"bench: P10 flood, {workers} worker(s) …", file=sys.stderr)
        found[str(workers)] = (await flood(services, workers=workers)).as_json()
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(ALL), help="comma-separated subset of " + ",".join(ALL))
    parser.add_argument("--profile", type=Path, default=None, help="profile the worker under P1 load into DIR")
    parser.add_argument("--output", type=Path, default=ROOT / "BENCHMARKS.md")
    parser.add_argument("--worker-src", type=Path, default=None,
                        help="run `byok worker` from another copy of the tree (a directory holding worker/ and "
                             "schemas/), e.g. to measure a before/after pair")
    args = parser.parse_args(argv)
    only = {part.strip().upper() for part in args.only.split(",") if part.strip()}
    started = time.monotonic()
    quiet_gc()
    results = fast_run()(run(only, args.profile, args.worker_src))
    if args.worker_src is not None:
        results["worker_src"] = str(args.worker_src)
    results["elapsed_s"] = time.monotonic() - started
    results["load_after"] = os.getloadavg()
    rows = report.rows(results)
    print(report.table(rows))
    print(report.details(results))
    if args.profile is not None:
        print(report.frames(top_frames(args.profile / "worker.txt")))
        return 0
    if only == set(ALL):
        args.output.write_text(report.markdown(results, rows, ROOT / "tests" / "bench" / "PROFILING.md"))
        print(f"bench: wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
