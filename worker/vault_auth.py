"""Where the worker's Vault token comes from (token auth; AppRole and Kubernetes build on this)."""

from __future__ import annotations

from typing import Protocol

from pydantic import SecretStr

from worker.settings import Settings, VaultAuthMethod


class VaultAuthError(RuntimeError):
    """Vault refused to authenticate the worker: a configuration problem, stated clearly."""


class TokenSource(Protocol):
    async def token(self) -> SecretStr:
        """A token valid now (logging in or renewing first if needed)."""
        ...

    async def invalidate(self) -> None:
        """Vault said 403: forget the token, so the next call logs in again."""
        ...

    async def aclose(self) -> None: ...


class StaticToken:
    def __init__(self, token: SecretStr) -> None:
        self._token = token

    async def token(self) -> SecretStr:
        return self._token

    async def invalidate(self) -> None:
        return None

    async def aclose(self) -> None:
        return None


def make_token_source(settings: Settings) -> TokenSource:
    if settings.vault_auth is VaultAuthMethod.TOKEN:
        if settings.vault_token is None:
            raise VaultAuthError("BYOK_VAULT_TOKEN is not set (BYOK_VAULT_AUTH=token)")
        return StaticToken(settings.vault_token)
    raise VaultAuthError(f"Vault auth method {settings.vault_auth.value} is not available yet")
