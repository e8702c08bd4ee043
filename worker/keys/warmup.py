"""Unsealing a job's key before the job takes a run slot, so a cold key's wait for Vault holds no slot.

The fair-share window (``worker.jobs.fair_share``) asks, for each job it holds, whether its key is in the
unseal cache. A cold one is unsealed here, at most ``concurrency`` Vault calls at a time and one per key
(jobs of the same key share the cache's pending load), and the job becomes runnable when it is done. The run
itself then finds the key in the cache. A failure here is not the job's answer: the run unseals again and
reports what Vault says, as it always did.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pydantic import SecretStr

from schemas.models import KEYLESS_PROVIDERS, Provider
from worker.keys.endpoint import Endpoint, EndpointError, binding_b64, check_destination, check_public
from worker.keys.transit import Decryptor
from worker.keys.unseal_cache import UnsealCache


@dataclass(frozen=True, slots=True)
class SealedKeyRef:
    """A job's sealed key and the endpoint binding it unseals for (the unseal cache's key)."""

    workspace_id: str
    sealed: str
    binding: str


def sealed_key_ref(raw: Any, allowed_hosts: frozenset[str] | None) -> SealedKeyRef | None:
    """The key a job body (parsed JSON) will unseal, or None when it has none or the run would refuse it first
    (unknown provider, an endpoint it may not call): only what the run itself would unseal is unsealed early."""
    if not isinstance(raw, dict):
        return None
    workspace_id, model = raw.get("workspace_id"), raw.get("model")
    if not isinstance(workspace_id, str) or not isinstance(model, dict):
        return None
    sealed, base_url = model.get("sealed_key"), model.get("base_url")
    if not isinstance(sealed, str) or not (base_url is None or isinstance(base_url, str)):
        return None
    try:
        provider = Provider(str(model.get("provider")))
    except ValueError:
        return None
    if provider in KEYLESS_PROVIDERS:
        return None
    try:
        endpoint = Endpoint.resolve(provider, base_url)
        check_destination(endpoint, allowed_hosts, carries_key=True)
        check_public(endpoint, allowed_hosts)
    except EndpointError:
        return None
    return SealedKeyRef(workspace_id, sealed, binding_b64(workspace_id, endpoint))


class KeyWarmup:
    def __init__(self, cache: UnsealCache, decryptor: Decryptor, *, concurrency: int) -> None:
        self._cache = cache
        self._decryptor = decryptor
        self._vault_places = asyncio.Semaphore(concurrency)
        self.warming = 0
        """Keys being unsealed here now (a gauge of the worker's metrics)."""

    def is_cold(self, ref: SealedKeyRef) -> bool:
        return not self._cache.holds(ref.binding, ref.sealed)

    async def warm(self, ref: SealedKeyRef) -> None:
        """Returns when the key is in the cache, or its unseal failed (the run tries again and reports it)."""
        try:
            await self._cache.get(ref.binding, ref.sealed, lambda: self._unseal(ref))
        except Exception:  # the run unseals again, meets the same failure and reports it
            return

    async def _unseal(self, ref: SealedKeyRef) -> SecretStr:
        async with self._vault_places:
            self.warming += 1
            try:
                return await self._decryptor.decrypt(ref.workspace_id, ref.sealed, ref.binding)
            finally:
                self.warming -= 1
