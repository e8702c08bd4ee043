"""The provider simulator for the bench: ``worker.testing.simulator.serve_forever`` on uvloop when it is installed.

It is the same server as ``byok simulate-provider``; only its event loop is faster, so that the simulator
takes as little as possible of the CPU the measured worker shares with it on a small machine.
``python -m tests.bench.simulate PORT LATENCY_MS``.
"""

from __future__ import annotations

import contextlib
import sys

from tests.bench.loop import fast_run, quiet_gc
from worker.testing.simulator import serve_forever


def main(argv: list[str]) -> int:
    port, latency_ms = int(argv[0]), float(argv[1])
    quiet_gc()
    with contextlib.suppress(KeyboardInterrupt):
        fast_run()(serve_forever("127.0.0.1", port, latency_ms / 1000.0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
