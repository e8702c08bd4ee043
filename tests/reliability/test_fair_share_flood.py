"""One workspace cannot hold up the others (README, "Fair share between workspaces").

The flood of ``tests.bench.flood`` on the real broker, OpenBao, the simulator at 200 ms and real ``byok worker``
and ``byok aggregator`` processes: 20,000 jobs of one workspace queued, then a second workspace sending 2 jobs/s
for 60 s, with one worker and with three (prefetch 64). The quiet workspace's p99 stays within 1 s of its
latency on the idle system, the flood keeps at least 80 % of the throughput it had alone, every job has its
result and the aggregator's consumption equals what the simulator billed. About three minutes.
"""

from __future__ import annotations

import pytest

from tests.bench.flood import BUCKETS, flood
from tests.bench.stack import stack


@pytest.mark.timeout(900)
async def test_a_flooding_workspace_does_not_hold_up_another_with_one_and_three_workers() -> None:
    with stack() as services:
        for workers in (1, 3):
            run = await flood(services, workers=workers)
            print(f"\n{workers} worker(s): quiet p50 {run.quiet_p50:,.0f} p99 {run.quiet_p99:,.0f} "
                  f"max {run.quiet_max:,.0f} ms (idle p50 {run.idle_p50:,.0f} p99 {run.idle_p99:,.0f} ms); "
                  f"flood {run.flood_alone_per_s:,.0f} jobs/s alone, {run.flood_beside_per_s:,.0f} beside "
                  f"({run.flood_share:.0%}), drained in {run.flood_drain_s:,.1f} s, {run.moved:,.0f} moved; "
                  f"results {run.results:,} of {run.jobs:,}; billed {run.ledger}, counted {run.consumption}")
            assert run.results == run.jobs, "a job without its result"
            assert run.consumption == {name: run.ledger[name] for name in BUCKETS}
            assert run.moved > 0, "the flood was never moved aside: the scenario did not exercise fair share"
            assert run.quiet_p99 <= run.idle_p99 + 1000, "the quiet workspace waited behind the flood"
            assert run.flood_share >= 0.8, "the flood lost more than a fifth of its throughput"
