"""The one way a test waits for something: poll a condition until it holds, fail loudly naming what never came."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

POLL_S = 0.02
"""How often a condition is checked: often enough that a wait ends promptly, rarely enough to cost nothing."""

Description = str | Callable[[], str]
"""What is waited for, for the failure message; a callable is read only on failure (say, counts so far)."""


def _describe(what: Description) -> str:
    return what() if callable(what) else what


async def wait_until(
    condition: Callable[[], T | Awaitable[T]], *, timeout: float = 20.0, what: Description = "the condition",
) -> T:
    """Polls ``condition`` (plain or async) until it returns something truthy, and returns that.

    Raises ``AssertionError`` naming ``what`` when ``timeout`` seconds pass first. An exception the
    condition raises ends the wait at once (say, a process it checks on has exited).
    """
    deadline = time.monotonic() + timeout
    while True:
        outcome = condition()
        value = await outcome if inspect.isawaitable(outcome) else outcome
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {_describe(what)}")
        await asyncio.sleep(POLL_S)


def wait_until_sync(
    condition: Callable[[], T], *, timeout: float = 20.0, what: Description = "the condition", poll_s: float = POLL_S,
) -> T:
    """``wait_until`` for code off the event loop (process start-up, ``rabbitmqctl``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {_describe(what)}")
        time.sleep(poll_s)
