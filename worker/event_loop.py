"""The event loop the long-running processes run on: uvloop by default, asyncio's own on request.

uvloop (libuv under asyncio's API) takes about a tenth less CPU per job off the worker (BENCHMARKS.md);
``BYOK_EVENT_LOOP=asyncio`` falls back to the standard loop, e.g. on a platform without uvloop wheels.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, Literal, TypeVar

T = TypeVar("T")

EventLoop = Literal["uvloop", "asyncio"]


def run(main: Coroutine[Any, Any, T], loop: EventLoop = "uvloop") -> T:
    if loop == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
