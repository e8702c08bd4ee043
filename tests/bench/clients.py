"""P3's reference points: CPU per call of the same chat call through the official ``openai`` client and
through ``litellm.acompletion``, against the same simulator, each in a process of its own.

``python -m tests.bench.clients openai|litellm BASE_URL CALLS CONCURRENCY`` prints one JSON line:
``{"client": ..., "calls": n, "cpu_ms_per_call": x, "calls_per_s": y}`` (process CPU, all threads,
over the timed calls after a warm-up).
"""

from __future__ import annotations

import asyncio
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from tests.bench.stack import PROVIDER_KEY

MODEL = "gpt-4o-mini"
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Benchmark job bench-0000001: answer in one short sentence."},
]
WARMUP = 100


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _openai(base_url: str) -> Callable[[], Awaitable[Any]]:
    from openai import AsyncOpenAI

    client = AsyncOpenAI(api_key=PROVIDER_KEY, base_url=base_url, max_retries=0)

    async def call() -> Any:
        reply = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=64,  # type: ignore[arg-type]
                                                     temperature=0.2)
        return reply.choices[0].message.content

    return call


def _litellm(base_url: str) -> Callable[[], Awaitable[Any]]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.telemetry = False
    litellm.suppress_debug_info = True

    async def call() -> Any:
        reply = await litellm.acompletion(model=f"openai/{MODEL}", messages=MESSAGES, api_base=base_url,
                                          api_key=PROVIDER_KEY, max_tokens=64, temperature=0.2, num_retries=0)
        return reply.choices[0].message.content

    return call


async def measure(make: Callable[[], Awaitable[Any]], calls: int, concurrency: int) -> tuple[float, float]:
    async def worker(count: int) -> None:
        for _ in range(count):
            text = await make()
            assert isinstance(text, str) and text.startswith("sim: ")

    async def batch(total: int) -> None:
        share, extra = divmod(total, concurrency)
        await asyncio.gather(*(worker(share + (1 if i < extra else 0)) for i in range(concurrency)))

    await batch(WARMUP)
    cpu, wall = _cpu(), time.perf_counter()
    await batch(calls)
    return _cpu() - cpu, time.perf_counter() - wall


def main(argv: list[str]) -> int:
    client, base_url, calls, concurrency = argv[0], argv[1], int(argv[2]), int(argv[3])
    factories = {"openai": _openai, "litellm": _litellm}

    async def run() -> tuple[float, float]:
        return await measure(factories[client](base_url), calls, concurrency)

    cpu_s, wall_s = asyncio.run(run())
    print(orjson.dumps({"client": client, "calls": calls, "cpu_ms_per_call": cpu_s * 1000 / calls,
                        "calls_per_s": calls / wall_s}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
