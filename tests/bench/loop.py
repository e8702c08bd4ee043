"""Event loop and collector settings for the bench's own processes (load generator, simulator).

They share 2 cores with the worker they measure, so they run on uvloop (the bench extra) when it is
installed, and keep the garbage collector from stopping them for tens of milliseconds in the middle of a
latency measurement. The worker itself is measured as it runs in production: ``byok worker``.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any


def fast_run() -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """``uvloop.run`` when uvloop is installed, else ``asyncio.run``."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    run: Callable[[Coroutine[Any, Any, Any]], Any] = uvloop.run
    return run


def quiet_gc() -> None:
    """What is alive now (modules…) is never scanned again; young collections 15 times rarer."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(10_000, middle, old)
