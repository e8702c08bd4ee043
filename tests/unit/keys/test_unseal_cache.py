from __future__ import annotations

import asyncio

import pytest
from pydantic import SecretStr

from worker.keys.unseal_cache import UnsealCache


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_concurrent_lookups_share_one_load_and_ttl_expires() -> None:
    clock = Clock()
    cache = UnsealCache(ttl_s=300, max_entries=10, clock=clock)
    loads = 0

    async def load() -> SecretStr:
        nonlocal loads
        loads += 1
        await asyncio.sleep(0.01)  # kept: a load that takes a while, so the 50 lookups overlap it
        return SecretStr("k")

    values = await asyncio.gather(*(cache.get("ws", "vault:v1:x", load) for _ in range(50)))
    assert loads == 1
    assert {v.get_secret_value() for v in values} == {"k"}
    clock.now = 299
    await cache.get("ws", "vault:v1:x", load)
    assert loads == 1
    clock.now = 301
    await cache.get("ws", "vault:v1:x", load)
    assert loads == 2


async def test_size_bound_evict_and_failures_are_not_cached() -> None:
    cache = UnsealCache(ttl_s=300, max_entries=2)

    async def load() -> SecretStr:
        return SecretStr("k")

    for sealed in ("a", "b", "c"):
        await cache.get("ws", sealed, load)
    assert len(cache) == 2
    cache.evict("ws", "c")
    assert len(cache) == 1

    async def broken() -> SecretStr:
        raise RuntimeError("vault down")

    with pytest.raises(RuntimeError):
        await cache.get("ws", "d", broken)
    assert await cache.get("ws", "d", load) == SecretStr("k")


async def test_entries_are_keyed_by_workspace_too() -> None:
    cache = UnsealCache(ttl_s=300, max_entries=10)
    calls: list[str] = []

    def loader(value: str):  # type: ignore[no-untyped-def]
        async def load() -> SecretStr:
            calls.append(value)
            return SecretStr(value)
        return load

    assert (await cache.get("ws-a", "same", loader("a"))).get_secret_value() == "a"
    assert (await cache.get("ws-b", "same", loader("b"))).get_secret_value() == "b"
    assert calls == ["a", "b"]
    assert "k" not in repr(await cache.get("ws-a", "same", loader("x")))
