"""Per-job unsealing: Vault transit decrypt over async HTTP, so the event loop never blocks.

The worker's identity may only decrypt. Workspace keys are *derived* transit keys: a sealed key opens
only with its workspace's key and the ``context`` it was sealed with (workspace + provider + base URL,
see ``worker.keys.endpoint.binding``); any other context fails GCM authentication. ``worker.keys.admin`` explains
why context rather than associated data (transit rewrap cannot carry associated data).
"""

from __future__ import annotations

import base64
import binascii
import time
from collections.abc import Callable
from typing import Protocol

import httpx
import orjson
from pydantic import SecretStr

from worker.failures import KeyUnavailable, VaultUnavailable
from worker.keys.auth import TokenSource

DecryptObserver = Callable[[float, str], None]
"""Called with (seconds, outcome) after every Vault call: for the latency metric."""


class Decryptor(Protocol):
    """What unseals a job's key: ``TransitDecryptor``, or a wrapper around it (a trace span per decrypt)."""

    async def decrypt(self, workspace_id: str, sealed: str, binding_b64: str) -> SecretStr: ...


class TransitDecryptor:
    def __init__(
        self,
        *,
        addr: str,
        tokens: TokenSource,
        mount: str = "transit",
        key_prefix: str = "byok-ws-",
        namespace: str | None = None,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        observe: DecryptObserver | None = None,
    ) -> None:
        self._addr = addr.rstrip("/")
        self._tokens = tokens
        self._mount = mount.strip("/")
        self._key_prefix = key_prefix
        self._namespace = namespace
        self._observe = observe
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(timeout_s), transport=transport, follow_redirects=False
        )

    def key_name(self, workspace_id: str) -> str:
        return f"{self._key_prefix}{workspace_id}"

    async def decrypt(self, workspace_id: str, sealed: str, binding_b64: str) -> SecretStr:
        url = f"{self._addr}/v1/{self._mount}/decrypt/{self.key_name(workspace_id)}"
        payload = orjson.dumps({"ciphertext": sealed, "context": binding_b64})
        for attempt in (1, 2):
            response = await self._post(url, payload)
            if response.status_code == 403 and attempt == 1:
                # An expired or revoked token: log in again once before calling it a denial.
                await self._tokens.invalidate()
                continue
            return self._plaintext(response)
        raise AssertionError("unreachable")

    async def _post(self, url: str, payload: bytes) -> httpx.Response:
        headers = {"x-vault-token": (await self._tokens.token()).get_secret_value(),
                   "content-type": "application/json"}
        if self._namespace:
            headers["x-vault-namespace"] = self._namespace
        started = time.perf_counter()
        outcome = "error"
        try:
            response = await self._client.post(url, content=payload, headers=headers)
            outcome = str(response.status_code)
            return response
        except httpx.HTTPError as exc:
            raise VaultUnavailable(f"Vault is unreachable ({type(exc).__name__})") from None
        finally:
            if self._observe is not None:
                self._observe(time.perf_counter() - started, outcome)

    @staticmethod
    def _plaintext(response: httpx.Response) -> SecretStr:
        status = response.status_code
        if status == 200:
            try:
                encoded = orjson.loads(response.content)["data"]["plaintext"]
                return SecretStr(base64.b64decode(encoded, validate=True).decode())
            except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error, UnicodeDecodeError):
                raise KeyUnavailable("Vault returned an unreadable decrypt response") from None
        if status in (400, 404):
            # Wrong workspace key, wrong binding, retired version, unknown key: the key does not open here.
            raise KeyUnavailable("the sealed key does not open for this workspace and endpoint")
        if status == 403:
            raise KeyUnavailable("Vault denied the decrypt (check the worker policy)")
        if status == 429 or status >= 500:
            raise VaultUnavailable(f"Vault answered {status}")
        raise KeyUnavailable(f"Vault refused the decrypt ({status})")

    async def aclose(self) -> None:
        await self._client.aclose()
