"""Clear-text provider keys, in memory only: TTL, size bound, one Vault call per key at a time."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from pydantic import SecretStr

Loader = Callable[[], Awaitable[SecretStr]]


class UnsealCache:
    def __init__(self, *, ttl_s: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._ttl_s = ttl_s
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], tuple[float, SecretStr]] = OrderedDict()
        self._pending: dict[tuple[str, str], asyncio.Future[SecretStr]] = {}
        self.hits = 0
        self.misses = 0

    async def get(self, scope: str, sealed: str, load: Loader) -> SecretStr:
        """The cached key, or the result of ``load()``; concurrent callers share one load.

        ``scope`` is the endpoint binding (workspace + provider + base URL): a key opened for one endpoint
        is never served to a job that pairs the same sealed string with another.
        """
        cache_key = (scope, sealed)
        entry = self._entries.get(cache_key)
        if entry is not None:
            expires_at, value = entry
            if expires_at > self._clock():
                self.hits += 1
                self._entries.move_to_end(cache_key)
                return value
            del self._entries[cache_key]
        pending = self._pending.get(cache_key)
        if pending is not None:
            self.hits += 1
            return await asyncio.shield(pending)
        self.misses += 1
        future: asyncio.Future[SecretStr] = asyncio.get_running_loop().create_future()
        self._pending[cache_key] = future
        try:
            value = await load()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # marks it retrieved when nobody else was waiting
            raise
        else:
            future.set_result(value)
            if self._ttl_s > 0:
                self._store(cache_key, value)
            return value
        finally:
            del self._pending[cache_key]

    def holds(self, scope: str, sealed: str) -> bool:
        """Whether ``get`` would answer at once: a live entry (a load under way is still a wait for Vault)."""
        entry = self._entries.get((scope, sealed))
        return entry is not None and entry[0] > self._clock()

    def _store(self, cache_key: tuple[str, str], value: SecretStr) -> None:
        self._entries[cache_key] = (self._clock() + self._ttl_s, value)
        self._entries.move_to_end(cache_key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def evict(self, scope: str, sealed: str) -> None:
        """A provider said 401: this key is no longer good, unseal afresh next time."""
        self._entries.pop((scope, sealed), None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
