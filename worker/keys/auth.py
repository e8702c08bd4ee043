"""Where the worker's Vault token comes from: a token, AppRole or Kubernetes (BYOK_VAULT_AUTH).

The worker calls ``await source.token()`` before every decrypt, so that call is cheap: a cached token,
returned at once. Once less than a third of its TTL remains, a background task renews it
(``auth/token/renew-self``); when renewal fails or can no longer extend it (max TTL), AppRole and
Kubernetes log in again. Only a token at the very end of its life is refreshed in the foreground.
After a 403 the worker calls ``await source.invalidate()``: the next ``token()`` logs in afresh.

All calls are async HTTP (httpx), so nothing blocks the event loop. Tokens and secret ids are
``SecretStr``; no repr, log line or error message shows one.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import orjson
import structlog
from pydantic import SecretStr

from worker.failures import VaultUnavailable
from worker.keys.endpoint import EndpointError, check_vault_addr
from worker.redaction import redact_text
from worker.settings import Settings, VaultAuthMethod

log = structlog.get_logger("byok.vault_auth")

RENEW_FRACTION = 1 / 3
"""Renew in the background once less than this share of the TTL remains."""
EXPIRY_MARGIN_FRACTION = 0.05
"""Below this share of the TTL (at most ``EXPIRY_MARGIN_MAX_S``) the token counts as expired."""
EXPIRY_MARGIN_MAX_S = 30.0
INVALIDATE_GRACE_S = 1.0
"""A token obtained this recently is not thrown away by ``invalidate()`` (a 403 that raced the login)."""


class VaultAuthError(VaultUnavailable):
    """Vault refused to authenticate the worker: a configuration problem, stated clearly.

    Raised by ``make_token_source`` (missing settings) and by ``token()`` (login refused). A job that
    meets it is retried later like an unreachable Vault (code ``key_unavailable``, no provider call
    made): an operator can fix a role or secret id without the jobs being lost in the meantime.
    """


class TokenSource(Protocol):
    async def token(self) -> SecretStr:
        """A token valid now (logging in or renewing first if needed)."""
        ...

    async def invalidate(self) -> None:
        """Vault said 403: forget the token, so the next call logs in again."""
        ...

    async def aclose(self) -> None: ...


@dataclass(slots=True)
class Lease:
    """A token and what Vault said about its life. ``ttl_s == 0`` means it never expires.

    ``full_ttl_s`` is the TTL it had when it was issued: the thresholds are shares of it, also after a
    renewal that Vault capped at the token's max TTL.
    """

    token: SecretStr = field(repr=False)
    ttl_s: float
    renewable: bool
    obtained_at: float
    full_ttl_s: float = 0.0

    def __post_init__(self) -> None:
        self.full_ttl_s = self.full_ttl_s or self.ttl_s

    def remaining(self, now: float) -> float:
        return float("inf") if self.ttl_s <= 0 else self.obtained_at + self.ttl_s - now

    def renewal_due(self, now: float) -> bool:
        return self.ttl_s > 0 and self.remaining(now) < self.full_ttl_s * RENEW_FRACTION

    def expired(self, now: float) -> bool:
        margin = min(self.full_ttl_s * EXPIRY_MARGIN_FRACTION, EXPIRY_MARGIN_MAX_S)
        return self.ttl_s > 0 and self.remaining(now) <= margin


class VaultHttp:
    """The few Vault auth calls, over one async HTTP client."""

    def __init__(self, addr: str, *, namespace: str | None = None, timeout_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.addr = addr.rstrip("/")
        self._namespace = namespace
        self._client = httpx.AsyncClient(
            base_url=self.addr, timeout=httpx.Timeout(timeout_s), transport=transport, follow_redirects=False
        )

    async def call(self, method: str, path: str, *, token: SecretStr | None = None,
                   body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        headers = {"content-type": "application/json"}
        if token is not None:
            headers["x-vault-token"] = token.get_secret_value()
        if self._namespace:
            headers["x-vault-namespace"] = self._namespace
        try:
            response = await self._client.request(
                method, f"/v1/{path}", headers=headers, content=orjson.dumps(body) if body is not None else None
            )
        except httpx.HTTPError as exc:
            raise VaultUnavailable(f"Vault is unreachable ({type(exc).__name__})") from None
        try:
            parsed = orjson.loads(response.content) if response.content else {}
        except orjson.JSONDecodeError:
            parsed = {}
        return response.status_code, parsed if isinstance(parsed, dict) else {}

    async def aclose(self) -> None:
        await self._client.aclose()


def vault_errors(body: dict[str, Any]) -> str:
    errors = body.get("errors")
    if isinstance(errors, list) and errors:
        return redact_text("; ".join(str(e) for e in errors))[:300]
    return "no detail"


def _lease_from_auth(body: dict[str, Any], now: float) -> Lease:
    auth = body.get("auth")
    if not isinstance(auth, dict) or not auth.get("client_token"):
        raise VaultAuthError("Vault answered the login without a token")
    return Lease(SecretStr(str(auth["client_token"])), float(auth.get("lease_duration") or 0),
                 bool(auth.get("renewable")), now)


class RenewingTokenSource:
    """A cached token, renewed in the background; subclasses say how to get a fresh one."""

    method = "token"

    def __init__(self, http: VaultHttp | None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._http = http
        self._clock = clock
        self._lease: Lease | None = None
        self._lock = asyncio.Lock()
        self._background: asyncio.Task[None] | None = None
        self._retry_after = 0.0
        self.logins = 0
        self.renewals = 0

    def __repr__(self) -> str:
        return f"{type(self).__name__}(addr={self._addr!r})"

    @property
    def _addr(self) -> str:
        return self._http.addr if self._http is not None else "(none)"

    @property
    def lease(self) -> Lease | None:
        """The current lease (its token is a SecretStr): for tests and diagnostics."""
        return self._lease

    async def _call(self, method: str, path: str, *, token: SecretStr | None = None,
                    body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        if self._http is None:
            raise VaultAuthError("this token source has no Vault address to call")
        return await self._http.call(method, path, token=token, body=body)

    async def _fresh(self) -> Lease:
        """A new lease: log in (AppRole, Kubernetes) or look the token up (static token)."""
        raise NotImplementedError

    async def token(self) -> SecretStr:
        now = self._clock()
        lease = self._lease
        if lease is None or lease.expired(now):
            return (await self._refresh_now(lease)).token
        if lease.renewal_due(now) and self._background is None and now >= self._retry_after:
            self._background = asyncio.create_task(self._refresh_in_background(lease))
        return lease.token

    async def invalidate(self) -> None:
        lease = self._lease
        if lease is not None and self._clock() - lease.obtained_at >= INVALIDATE_GRACE_S:
            self._lease = None

    async def aclose(self) -> None:
        if self._background is not None:
            self._background.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._background
        if self._http is not None:
            await self._http.aclose()

    async def wait_idle(self) -> None:
        """Wait for a background renewal in flight (for tests and orderly shutdown)."""
        if self._background is not None:
            await asyncio.shield(self._background)

    async def _refresh_now(self, stale: Lease | None) -> Lease:
        async with self._lock:
            current = self._lease
            if current is not None and current is not stale and not current.expired(self._clock()):
                return current  # another caller refreshed it while we waited
            self._lease = await self._renewed_or_fresh(current)
            return self._lease

    async def _refresh_in_background(self, lease: Lease) -> None:
        try:
            async with self._lock:
                if self._lease is lease:
                    self._lease = await self._renewed_or_fresh(lease)
        except Exception as exc:  # a background task must not die silently
            # The current token is still valid for a while: keep it, try again a little later.
            self._retry_after = self._clock() + min(30.0, max(1.0, lease.full_ttl_s / 10))
            log.warning("vault.token_refresh_failed", method=self.method, error=redact_text(str(exc)),
                        error_type=type(exc).__name__)
        finally:
            self._background = None

    async def _renewed_or_fresh(self, lease: Lease | None) -> Lease:
        if lease is not None and lease.renewable:
            renewed = await self._renew(lease)
            if renewed is not None:
                return renewed
        fresh = await self._fresh()
        self.logins += 1
        log.info("vault.login", method=self.method, ttl_s=fresh.ttl_s, renewable=fresh.renewable)
        return fresh

    async def _renew(self, lease: Lease) -> Lease | None:
        """renew-self; ``None`` when it failed or can no longer extend the token meaningfully."""
        try:
            status, body = await self._call("POST", "auth/token/renew-self", token=lease.token, body={})
        except VaultUnavailable as exc:
            log.warning("vault.renew_failed", method=self.method, error=str(exc))
            return None
        if status != 200:
            log.warning("vault.renew_failed", method=self.method, status=status, error=vault_errors(body))
            return None
        try:
            renewed = _lease_from_auth(body, self._clock())
        except VaultAuthError:
            return None
        if renewed.token.get_secret_value() != lease.token.get_secret_value():
            return None  # not our token: never switch identities on a renewal
        renewed.full_ttl_s = lease.full_ttl_s
        if renewed.ttl_s < lease.full_ttl_s * RENEW_FRACTION:
            log.info("vault.renew_capped", method=self.method, ttl_s=renewed.ttl_s)
            return None  # close to its max TTL: renewing again and again would not help
        self.renewals += 1
        log.debug("vault.renewed", method=self.method, ttl_s=renewed.ttl_s)
        return renewed


class StaticToken(RenewingTokenSource):
    """BYOK_VAULT_TOKEN. With an ``http`` client it learns the token's TTL (lookup-self) and renews it."""

    def __init__(self, token: SecretStr, http: VaultHttp | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(http, clock=clock)
        self._token = token

    async def _fresh(self) -> Lease:
        now = self._clock()
        if self._http is None:
            return Lease(self._token, 0.0, False, now)
        status, body = await self._call("GET", "auth/token/lookup-self", token=self._token)
        if status == 200 and isinstance(body.get("data"), dict):
            data = body["data"]
            return Lease(self._token, float(data.get("ttl") or 0), bool(data.get("renewable")), now)
        if status == 429 or status >= 500:
            raise VaultUnavailable(f"Vault answered {status} to the token lookup")
        # No lookup-self in the policy, or a dead token: use it as it is, a decrypt will tell.
        log.warning("vault.token_lookup_failed", status=status, error=vault_errors(body))
        return Lease(self._token, 0.0, False, now)

    async def _renewed_or_fresh(self, lease: Lease | None) -> Lease:
        if lease is not None and lease.renewable:
            renewed = await self._renew(lease)
            if renewed is not None:
                return renewed
            if not lease.expired(self._clock()):
                # A static token cannot log in again: keep it, and stop trying to renew it.
                return Lease(lease.token, lease.ttl_s, False, lease.obtained_at, lease.full_ttl_s)
        return await self._fresh()


class AppRoleAuth(RenewingTokenSource):
    """BYOK_VAULT_ROLE_ID + BYOK_VAULT_SECRET_ID → ``auth/<mount>/login``."""

    method = "approle"

    def __init__(self, http: VaultHttp, *, role_id: str, secret_id: SecretStr, mount: str = "approle",
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(http, clock=clock)
        self._role_id = role_id
        self._secret_id = secret_id
        self._mount = mount.strip("/")

    def __repr__(self) -> str:
        return f"AppRoleAuth(addr={self._addr!r}, mount={self._mount!r})"

    async def _fresh(self) -> Lease:
        path = f"auth/{self._mount}/login"
        status, body = await self._call(
            "POST", path, body={"role_id": self._role_id, "secret_id": self._secret_id.get_secret_value()}
        )
        if status == 200:
            return _lease_from_auth(body, self._clock())
        if status == 429 or status >= 500:
            raise VaultUnavailable(f"Vault answered {status} to the AppRole login")
        raise VaultAuthError(
            f"Vault refused the AppRole login at {path} ({status}: {vault_errors(body)}): check "
            "BYOK_VAULT_ROLE_ID, BYOK_VAULT_SECRET_ID (expired? used up?) and BYOK_VAULT_APPROLE_MOUNT"
        )


class KubernetesAuth(RenewingTokenSource):
    """The pod's service account token (BYOK_VAULT_K8S_JWT_PATH) → ``auth/<mount>/login`` with a role."""

    method = "kubernetes"

    def __init__(self, http: VaultHttp, *, role: str, jwt_path: str | Path, mount: str = "kubernetes",
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(http, clock=clock)
        self._role = role
        self._jwt_path = Path(jwt_path)
        self._mount = mount.strip("/")

    def __repr__(self) -> str:
        return f"KubernetesAuth(addr={self._addr!r}, mount={self._mount!r}, role={self._role!r})"

    async def _fresh(self) -> Lease:
        # Read at every login: projected service account tokens are rotated by the kubelet.
        try:
            jwt = (await asyncio.to_thread(self._jwt_path.read_text, encoding="utf-8")).strip()
        except OSError as exc:
            raise VaultAuthError(
                f"cannot read the Kubernetes service account token at {self._jwt_path} "
                f"({exc.strerror or type(exc).__name__}): check BYOK_VAULT_K8S_JWT_PATH"
            ) from None
        if not jwt:
            raise VaultAuthError(f"the Kubernetes service account token at {self._jwt_path} is empty")
        path = f"auth/{self._mount}/login"
        status, body = await self._call("POST", path, body={"role": self._role, "jwt": jwt})
        if status == 200:
            return _lease_from_auth(body, self._clock())
        if status == 429 or status >= 500:
            raise VaultUnavailable(f"Vault answered {status} to the Kubernetes login")
        raise VaultAuthError(
            f"Vault refused the Kubernetes login for role {self._role!r} at {path} ({status}: "
            f"{vault_errors(body)}): check BYOK_VAULT_K8S_ROLE, the role's bound service account and "
            "namespace, and BYOK_VAULT_K8S_MOUNT"
        )


def make_token_source(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> TokenSource:
    try:
        check_vault_addr(settings.vault_addr, allow_plain_http=settings.vault_allow_plain_http)
    except EndpointError as exc:
        raise VaultAuthError(str(exc)) from None

    def http() -> VaultHttp:
        return VaultHttp(settings.vault_addr, namespace=settings.vault_namespace,
                         timeout_s=settings.vault_timeout_s, transport=transport)

    match settings.vault_auth:
        case VaultAuthMethod.TOKEN:
            if settings.vault_token is None or not settings.vault_token.get_secret_value():
                raise VaultAuthError("BYOK_VAULT_TOKEN is not set (BYOK_VAULT_AUTH=token)")
            return StaticToken(settings.vault_token, http())
        case VaultAuthMethod.APPROLE:
            if not settings.vault_role_id or settings.vault_secret_id is None:
                raise VaultAuthError(
                    "BYOK_VAULT_AUTH=approle needs BYOK_VAULT_ROLE_ID and BYOK_VAULT_SECRET_ID"
                )
            return AppRoleAuth(http(), role_id=settings.vault_role_id, secret_id=settings.vault_secret_id,
                               mount=settings.vault_approle_mount)
        case VaultAuthMethod.KUBERNETES:
            if not settings.vault_k8s_role:
                raise VaultAuthError("BYOK_VAULT_AUTH=kubernetes needs BYOK_VAULT_K8S_ROLE")
            return KubernetesAuth(http(), role=settings.vault_k8s_role, jwt_path=settings.vault_k8s_jwt_path,
                                  mount=settings.vault_k8s_mount)
    raise VaultAuthError(f"unknown Vault auth method {settings.vault_auth!r}")
