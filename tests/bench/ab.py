"""A before/after pair in one run: the same P1-P4 measurements for this tree's worker and another copy's,
interleaved round by round on one set of services, so drift in the machine's load moves both sides alike.

    python -m tests.bench.ab /path/to/before-tree      # prints the table; about 3 minutes
    python -m tests.bench.ab /path/to/before --after /path/to/after   # two other trees, this harness

Each round runs the bare loop, then this tree's worker, then the other tree's, on the same simulator; P2 and
P4 run once per tree, back to back, P4 at the same rate for both (half the slower tree's P1 median). The
figures that matter are the after/before ratios in the last column: 1.00 is "the same".
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench.loop import fast_run, quiet_gc
from tests.bench.run import (
    P1_JOBS,
    P1_PREFETCH,
    P1_ROUNDS,
    P2_JOBS,
    P2_LATENCY_MS,
    P2_PREFETCH,
    Throughput,
    _median,
    latency,
    throughput,
)
from tests.bench.stack import Stack, stack

SIDES = ("after", "before")


async def _worker_run(services: Stack, source: Path | None, n: int, prefetch: int, sim: Any) -> Throughput:
    services.worker_source = source
    return await throughput(services, "worker", n, prefetch, sim)


async def pair(before: Path, after: Path | None = None) -> dict[str, Any]:
    sources: dict[str, Path | None] = {"after": after, "before": before}
    found: dict[str, Any] = {"load_before": os.getloadavg()}
    with stack() as services:
        sim = services.simulator(0.0)
        bare: list[Throughput] = []
        runs: dict[str, list[Throughput]] = {side: [] for side in SIDES}
        for round_ in range(1, P1_ROUNDS + 1):
            print(f"ab: P1 round {round_}/{P1_ROUNDS}: bare, after, before …", file=sys.stderr)
            bare.append(await throughput(services, "bare", P1_JOBS, P1_PREFETCH, sim))
            for side in SIDES:
                runs[side].append(await _worker_run(services, sources[side], P1_JOBS, P1_PREFETCH, sim))
        found["bare"] = _median(bare)
        found["P1"] = {side: _median(runs[side]) for side in SIDES}
        pairs = zip(bare, runs["after"], runs["before"], strict=True)
        found["rounds"] = [(b.rate, a.rate, o.rate) for b, a, o in pairs]
        slow = services.simulator(P2_LATENCY_MS)
        found["P2"] = {}
        for side in SIDES:
            print(f"ab: P2 {side} …", file=sys.stderr)
            found["P2"][side] = await _worker_run(services, sources[side], P2_JOBS, P2_PREFETCH, slow)
        rate = min(found["P1"][side].rate for side in SIDES) / 2
        found["P4"] = {}
        for side in SIDES:
            print(f"ab: P4 {side} at {rate:.0f} jobs/s …", file=sys.stderr)
            services.worker_source = sources[side]
            found["P4"][side] = await latency(services, rate)
    found["load_after"] = os.getloadavg()
    return found


def table(found: dict[str, Any]) -> str:
    p1, p2, p4 = found["P1"], found["P2"], found["P4"]
    bare = found["bare"].rate
    rows: list[tuple[str, str, float, float]] = [
        ("P1", "jobs/s, instant simulator, prefetch 256 (median of rounds)", p1["after"].rate, p1["before"].rate),
        ("P1", f"ratio to the bare loop ({bare:,.0f} msg/s, same rounds)", p1["after"].rate / bare,
         p1["before"].rate / bare),
        ("P2", "jobs/s, simulator latency 1 s, prefetch 500", p2["after"].rate, p2["before"].rate),
        ("P2", "worker peak RSS (VmHWM), MB", p2["after"].memory.get("VmHWM", float("nan")),
         p2["before"].memory.get("VmHWM", float("nan"))),
        ("P3", "worker CPU per job over P1's window, ms", p1["after"].cpu_ms_per_job("worker"),
         p1["before"].cpu_ms_per_job("worker")),
        ("P4", f"overhead p50 at {p4['after']['rate']:.0f} jobs/s, ms", p4["after"]["p50"], p4["before"]["p50"]),
        ("P4", "overhead p99, ms", p4["after"]["p99"], p4["before"]["p99"]),
    ]
    lines = ["#  | measurement | after | before | after/before", "---|---|---:|---:|---:"]
    lines += [f"{key} | {label} | {a:,.2f} | {b:,.2f} | {a / b:.2f}" for key, label, a, b in rows]
    rounds = "; ".join(f"{b:,.0f} / {a:,.0f} / {o:,.0f}" for b, a, o in found["rounds"])
    lines.append(f"\nP1 rounds (bare / after / before, per s): {rounds}")
    lines.append(f"load average before {found['load_before'][0]:.2f}, after {found['load_after'][0]:.2f}; "
                 f"whole run {found['elapsed_s']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench.ab", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before", type=Path,
                        help="the other copy of the tree (a directory holding worker/ and schemas/)")
    parser.add_argument("--after", type=Path, default=None,
                        help="the tree measured as 'after' (default: this one)")
    args = parser.parse_args(argv)
    quiet_gc()
    started = time.monotonic()
    found = fast_run()(pair(args.before.resolve(), args.after.resolve() if args.after else None))
    found["elapsed_s"] = time.monotonic() - started
    print(table(found))
    return 0


if __name__ == "__main__":
    sys.exit(main())
