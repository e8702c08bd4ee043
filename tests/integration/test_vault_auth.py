"""The worker's Vault identities against a real OpenBao: token, AppRole and Kubernetes.

Every login ends in a real decrypt through the worker's ``TransitDecryptor`` under deploy/vault/worker.hcl.
Kubernetes auth runs in OpenBao too; only the Kubernetes API it asks (TokenReview) is a small local
stand-in, since no cluster runs here. Timing: one test waits for a real 6 s TTL to run down; the others
move the token source's clock instead (Vault's TTLs stay real).
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from schemas.models import Provider
from tests.integration.test_vault_policies import policy_token, write_policy
from tests.services import VaultServer
from worker.failures import VaultUnavailable
from worker.keys.admin import KeyAdmin
from worker.keys.auth import (
    AppRoleAuth,
    KubernetesAuth,
    RenewingTokenSource,
    StaticToken,
    VaultAuthError,
    VaultHttp,
    make_token_source,
)
from worker.keys.endpoint import Endpoint, binding_b64
from worker.keys.transit import TransitDecryptor
from worker.settings import Settings, VaultAuthMethod

KEY = "sk-auth-test-0123456789abcdefghij"


class Clock:
    """time.monotonic, plus however far a test moved it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class Sealed:
    workspace_id: str
    sealed: str

    @property
    def binding(self) -> str:
        return binding_b64(self.workspace_id, Endpoint.resolve(Provider.OPENAI, None))


@pytest.fixture(scope="module")
def worker_policy(vault: VaultServer) -> str:
    return write_policy(vault, "worker")


@pytest.fixture(scope="module")
def sealed(vault: VaultServer) -> Sealed:
    workspace_id = f"auth-{secrets.token_hex(4)}"
    admin = KeyAdmin(vault.client())
    admin.create(workspace_id)
    return Sealed(workspace_id, admin.seal(workspace_id, Endpoint.resolve(Provider.OPENAI, None), SecretStr(KEY)))


async def open_with(source: RenewingTokenSource, vault: VaultServer, sealed: Sealed) -> str:
    decryptor = TransitDecryptor(addr=vault.addr, tokens=source)
    try:
        return (await decryptor.decrypt(sealed.workspace_id, sealed.sealed, sealed.binding)).get_secret_value()
    finally:
        await decryptor.aclose()  # closes its HTTP client only: the token source stays open


def lookup(vault: VaultServer, token: SecretStr) -> dict[str, Any]:
    return dict(vault.client().auth.token.lookup(token.get_secret_value())["data"])


def current_token(source: RenewingTokenSource) -> SecretStr:
    assert source.lease is not None
    return source.lease.token


# -- AppRole --------------------------------------------------------------------------------------------


@dataclass
class AppRole:
    mount: str
    role_id: str
    secret_id: SecretStr

    def settings(self, vault: VaultServer, secret_id: SecretStr | None = None) -> Settings:
        return Settings(vault_addr=vault.addr, vault_auth=VaultAuthMethod.APPROLE, vault_role_id=self.role_id,
                        vault_secret_id=secret_id or self.secret_id, vault_approle_mount=self.mount)


@pytest.fixture(scope="module")
def approle_mount(vault: VaultServer) -> str:
    mount = f"approle-{secrets.token_hex(3)}"
    vault.client().sys.enable_auth_method("approle", path=mount)
    return mount


def make_role(vault: VaultServer, mount: str, policy: str, *, ttl: int, max_ttl: int) -> AppRole:
    root = vault.client()
    name = f"byok-worker-{secrets.token_hex(3)}"
    root.adapter.post(f"/v1/auth/{mount}/role/{name}", json={
        "token_policies": [policy], "token_no_default_policy": True,
        "token_ttl": f"{ttl}s", "token_max_ttl": f"{max_ttl}s", "secret_id_ttl": "10m",
    })
    role_id = root.adapter.get(f"/v1/auth/{mount}/role/{name}/role-id")["data"]["role_id"]
    secret_id = root.adapter.post(f"/v1/auth/{mount}/role/{name}/secret-id")["data"]["secret_id"]
    return AppRole(mount, role_id, SecretStr(secret_id))


@pytest.fixture
def approle(vault: VaultServer, approle_mount: str, worker_policy: str) -> AppRole:
    return make_role(vault, approle_mount, worker_policy, ttl=60, max_ttl=600)


@pytest.fixture
async def approle_source(vault: VaultServer, approle: AppRole) -> AsyncIterator[AppRoleAuth]:
    source = make_token_source(approle.settings(vault))
    assert isinstance(source, AppRoleAuth)
    yield source
    await source.aclose()


async def test_approle_login_gets_a_worker_token_that_decrypts(
    vault: VaultServer, approle_source: AppRoleAuth, sealed: Sealed, worker_policy: str
) -> None:
    assert await open_with(approle_source, vault, sealed) == KEY
    assert approle_source.logins == 1
    info = lookup(vault, current_token(approle_source))
    assert info["policies"] == [worker_policy]  # the worker policy and nothing else
    assert await approle_source.token() == current_token(approle_source)  # cached: no second login
    assert approle_source.logins == 1


async def test_approle_token_is_renewed_before_it_expires(
    vault: VaultServer, approle_mount: str, worker_policy: str, sealed: Sealed
) -> None:
    """A real 6 s TTL: after 4.3 s (less than a third left) the next token() renews in the background."""
    role = make_role(vault, approle_mount, worker_policy, ttl=6, max_ttl=120)
    source = make_token_source(role.settings(vault))
    assert isinstance(source, AppRoleAuth)
    try:
        first = await source.token()
        await asyncio.sleep(4.3)  # the TTL must really run down
        assert lookup(vault, first)["ttl"] <= 2
        assert await source.token() == first  # returned at once, the renewal runs behind it
        await source.wait_idle()
        assert source.renewals == 1 and source.logins == 1
        assert await source.token() == first  # renewed, not replaced
        assert lookup(vault, first)["ttl"] >= 4
        assert await open_with(source, vault, sealed) == KEY
    finally:
        await source.aclose()


async def test_a_failed_renewal_logs_in_again(
    vault: VaultServer, approle: AppRole, sealed: Sealed
) -> None:
    clock = Clock()
    source = AppRoleAuth(VaultHttp(vault.addr), role_id=approle.role_id, secret_id=approle.secret_id,
                         mount=approle.mount, clock=clock)
    try:
        first = await source.token()
        vault.client().auth.token.revoke(first.get_secret_value())  # renew-self will now be refused
        clock.advance(45)  # 15 s of 60 left: renewal due
        assert await source.token() == first
        await source.wait_idle()
        second = await source.token()
        assert second != first
        assert source.logins == 2 and source.renewals == 0
        assert await open_with(source, vault, sealed) == KEY
    finally:
        await source.aclose()


async def test_a_403_on_decrypt_logs_in_again_once(
    vault: VaultServer, approle: AppRole, sealed: Sealed
) -> None:
    clock = Clock()
    source = AppRoleAuth(VaultHttp(vault.addr), role_id=approle.role_id, secret_id=approle.secret_id,
                         mount=approle.mount, clock=clock)
    try:
        first = await source.token()
        vault.client().auth.token.revoke(first.get_secret_value())
        clock.advance(2)  # older than the invalidate grace period
        assert await open_with(source, vault, sealed) == KEY  # 403 → invalidate → login → decrypt
        assert source.logins == 2
        assert await source.token() != first
    finally:
        await source.aclose()


async def test_a_wrong_secret_id_is_a_clear_vault_auth_error(vault: VaultServer, approle: AppRole) -> None:
    wrong = "0b1d7a5e-0000-4000-8000-00000000dead"
    source = make_token_source(approle.settings(vault, SecretStr(wrong)))
    try:
        with pytest.raises(VaultAuthError) as raised:
            await source.token()
    finally:
        await source.aclose()
    message = str(raised.value)
    assert f"auth/{approle.mount}/login" in message
    assert "invalid role or secret ID" in message
    assert "BYOK_VAULT_SECRET_ID" in message
    assert wrong not in message and approle.secret_id.get_secret_value() not in message
    assert isinstance(raised.value, VaultUnavailable)  # a job meeting it is retried, not failed for good


def test_no_repr_shows_a_token_or_secret(vault: VaultServer, approle: AppRole) -> None:
    source = make_token_source(approle.settings(vault))
    text = repr(source) + str(source)
    assert approle.secret_id.get_secret_value() not in text
    assert approle.role_id not in text


# -- static token ---------------------------------------------------------------------------------------


async def test_a_renewable_static_token_is_renewed(vault: VaultServer, worker_policy: str, sealed: Sealed) -> None:
    token = SecretStr(policy_token(vault, worker_policy, ttl="60s"))
    clock = Clock()
    source = StaticToken(token, VaultHttp(vault.addr), clock=clock)
    try:
        assert await open_with(source, vault, sealed) == KEY
        assert source.lease is not None and 55 <= source.lease.ttl_s <= 60 and source.lease.renewable
        assert not lookup(vault, token).get("last_renewal_time")
        clock.advance(45)
        assert await source.token() == token
        await source.wait_idle()
        assert source.renewals == 1
        assert lookup(vault, token).get("last_renewal_time")  # Vault saw the renew-self
    finally:
        await source.aclose()


async def test_a_root_like_token_without_ttl_is_never_renewed(vault: VaultServer) -> None:
    settings = Settings(vault_addr=vault.addr, vault_token=SecretStr(vault.root_token))
    source = make_token_source(settings)
    assert isinstance(source, StaticToken)
    try:
        assert (await source.token()).get_secret_value() == vault.root_token
        assert source.lease is not None and source.lease.ttl_s == 0
        assert source.renewals == 0
    finally:
        await source.aclose()


def test_missing_settings_are_clear_errors() -> None:
    with pytest.raises(VaultAuthError, match="BYOK_VAULT_TOKEN"):
        make_token_source(Settings(vault_token=None))
    with pytest.raises(VaultAuthError, match="BYOK_VAULT_ROLE_ID and BYOK_VAULT_SECRET_ID"):
        make_token_source(Settings(vault_auth=VaultAuthMethod.APPROLE, vault_role_id="r"))
    with pytest.raises(VaultAuthError, match="BYOK_VAULT_K8S_ROLE"):
        make_token_source(Settings(vault_auth=VaultAuthMethod.KUBERNETES))


# -- Kubernetes -----------------------------------------------------------------------------------------

# A throwaway self-signed certificate (its private key was discarded): OpenBao wants a CA certificate for
# the Kubernetes API, and only parses it here, since the stand-in API below speaks plain http on loopback.
FAKE_K8S_CA = """-----BEGIN CERTIFICATE-----
MIIBpjCCAUugAwIBAgIUWbYU0QDfZGVvbFIXszxF+r/PcFMwCgYIKoZIzj0EAwIw
JzElMCMGA1UEAwwcYnlvay10ZXN0LWZha2Uta3ViZXJuZXRlcy1jYTAgFw0yNjEx
MjYxNjA2NTdaGA8yMTI2MTEwMjE2MDY1N1owJzElMCMGA1UEAwwcYnlvay10ZXN0
LWZha2Uta3ViZXJuZXRlcy1jYTBZMBMGByqGSM49AgEGCCqGSM49AwEHA0IABOj1
5dhf1HoBjZbWKHNRSV7R8Qoe+QL13Ux/EjEqlKp6lXIl8oxR9tQuNdUHH7lKBOhG
K4Su7Fas1l19QpHw4zijUzBRMB0GA1UdDgQWBBTOgxTead82xpNsQupjJgJ6jED1
vDAfBgNVHSMEGDAWgBTOgxTead82xpNsQupjJgJ6jED1vDAPBgNVHRMBAf8EBTAD
AQH/MAoGCCqGSM49BAMCA0kAMEYCIQD9UdbrJePGwOS9cBpdibwdWQ2XDSDEYCIM
t248lK0o0AIhAJsWZVkCuLuYcxkeW9PTNeS5kc/rKIttEEgUr6j44IsT
-----END CERTIFICATE-----
"""
K8S_NAMESPACE, K8S_ACCOUNT, K8S_UID = "byok", "byok-worker", "6c1f2d7e-1111-4222-8333-444455556666"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def service_account_jwt(account: str = K8S_ACCOUNT) -> str:
    """Shaped like a Kubernetes service account token. OpenBao verifies it by asking TokenReview (below),
    not by its signature, when the auth method is configured without public keys."""
    claims = {
        "iss": "kubernetes/serviceaccount", "sub": f"system:serviceaccount:{K8S_NAMESPACE}:{account}",
        "kubernetes.io/serviceaccount/namespace": K8S_NAMESPACE,
        "kubernetes.io/serviceaccount/service-account.name": account,
        "kubernetes.io/serviceaccount/service-account.uid": K8S_UID,
    }
    header = {"alg": "RS256", "typ": "JWT"}
    return ".".join([_b64url(json.dumps(header).encode()), _b64url(json.dumps(claims).encode()),
                     _b64url(secrets.token_bytes(256))])


class TokenReviewApi:
    """The one Kubernetes API call the auth method makes: POST /apis/authentication.k8s.io/v1/tokenreviews."""

    def __init__(self) -> None:
        self.valid: set[str] = set()
        self.reviews = 0
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                api.reviews += 1
                token = body["spec"]["token"]
                status: dict[str, Any] = {"authenticated": token in api.valid}
                if token in api.valid:
                    status["user"] = {"username": f"system:serviceaccount:{K8S_NAMESPACE}:{K8S_ACCOUNT}",
                                      "uid": K8S_UID}
                out = json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                                  "status": status}).encode()
                self.send_response(201)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class K8sAuth:
    mount: str
    role: str
    api: TokenReviewApi


@pytest.fixture(scope="module")
def k8s(vault: VaultServer, worker_policy: str) -> Iterator[K8sAuth]:
    api = TokenReviewApi()
    mount, role = f"k8s-{secrets.token_hex(3)}", "byok-worker"
    root = vault.client()
    root.sys.enable_auth_method("kubernetes", path=mount)
    root.adapter.post(f"/v1/auth/{mount}/config", json={
        "kubernetes_host": api.url, "kubernetes_ca_cert": FAKE_K8S_CA,
        "token_reviewer_jwt": "reviewer-jwt", "disable_local_ca_jwt": True,
    })
    root.adapter.post(f"/v1/auth/{mount}/role/{role}", json={
        "bound_service_account_names": [K8S_ACCOUNT], "bound_service_account_namespaces": [K8S_NAMESPACE],
        "token_policies": [worker_policy], "token_no_default_policy": True, "token_ttl": "60s",
    })
    yield K8sAuth(mount, role, api)
    api.stop()


def k8s_settings(vault: VaultServer, k8s: K8sAuth, jwt_path: Path, role: str | None = None) -> Settings:
    return Settings(vault_addr=vault.addr, vault_auth=VaultAuthMethod.KUBERNETES, vault_k8s_role=role or k8s.role,
                    vault_k8s_mount=k8s.mount, vault_k8s_jwt_path=str(jwt_path))


async def test_kubernetes_login_with_the_service_account_token_decrypts(
    vault: VaultServer, k8s: K8sAuth, tmp_path: Path, sealed: Sealed, worker_policy: str
) -> None:
    jwt = service_account_jwt()
    k8s.api.valid.add(jwt)
    jwt_file = tmp_path / "token"
    jwt_file.write_text(jwt + "\n")
    configured = make_token_source(k8s_settings(vault, k8s, jwt_file))
    assert isinstance(configured, KubernetesAuth)
    try:
        assert await open_with(configured, vault, sealed) == KEY
        assert lookup(vault, current_token(configured))["policies"] == [worker_policy]
    finally:
        await configured.aclose()

    # The kubelet rotates the file: the next login (here after a 403) reads the new token.
    clock = Clock()
    source = KubernetesAuth(VaultHttp(vault.addr), role=k8s.role, jwt_path=jwt_file, mount=k8s.mount, clock=clock)
    try:
        first = await source.token()
        rotated = service_account_jwt()
        k8s.api.valid = {rotated}
        jwt_file.write_text(rotated)
        clock.advance(2)
        await source.invalidate()
        assert await open_with(source, vault, sealed) == KEY
        assert source.logins == 2 and await source.token() != first
    finally:
        await source.aclose()


async def test_kubernetes_login_refused_is_a_clear_error(vault: VaultServer, k8s: K8sAuth, tmp_path: Path) -> None:
    jwt = service_account_jwt()  # never marked valid: TokenReview says not authenticated
    jwt_file = tmp_path / "token"
    jwt_file.write_text(jwt)
    for role, expected in [(k8s.role, "403"), ("no-such-role", "invalid role name")]:
        source = make_token_source(k8s_settings(vault, k8s, jwt_file, role))
        try:
            with pytest.raises(VaultAuthError) as raised:
                await source.token()
        finally:
            await source.aclose()
        message = str(raised.value)
        assert "Kubernetes login" in message and expected in message and f"auth/{k8s.mount}/login" in message
        assert jwt not in message


async def test_kubernetes_without_a_token_file_is_a_clear_error(
    vault: VaultServer, k8s: K8sAuth, tmp_path: Path
) -> None:
    source = make_token_source(k8s_settings(vault, k8s, tmp_path / "missing"))
    try:
        with pytest.raises(VaultAuthError, match="BYOK_VAULT_K8S_JWT_PATH"):
            await source.token()
    finally:
        await source.aclose()


# -- in process: answers a dev server will not give on demand -------------------------------------------


def _transport(answers: list[tuple[int, dict[str, Any]]], seen: list[httpx.Request]) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        status, body = answers.pop(0)
        return httpx.Response(status, json=body)

    return httpx.MockTransport(handle)


def _auth(token: str, ttl: int) -> dict[str, Any]:
    return {"auth": {"client_token": token, "lease_duration": ttl, "renewable": True}}


async def test_a_renewal_capped_by_max_ttl_logs_in_again() -> None:
    seen: list[httpx.Request] = []
    clock = Clock()
    answers = [(200, _auth("s.first", 60)), (200, _auth("s.first", 10)), (200, _auth("s.second", 60))]
    source = AppRoleAuth(VaultHttp("http://vault.test", transport=_transport(answers, seen)),
                         role_id="role", secret_id=SecretStr("secret"), clock=clock)
    assert (await source.token()).get_secret_value() == "s.first"
    clock.advance(45)
    await source.token()
    await source.wait_idle()
    assert (await source.token()).get_secret_value() == "s.second"
    assert [r.url.path for r in seen] == ["/v1/auth/approle/login", "/v1/auth/token/renew-self",
                                          "/v1/auth/approle/login"]
    assert seen[1].headers["x-vault-token"] == "s.first"
    await source.aclose()


async def test_vault_down_during_login_is_retryable_and_a_background_failure_keeps_the_token() -> None:
    clock = Clock()
    answers = [(200, _auth("s.first", 60)), (503, {"errors": ["sealed"]}), (503, {"errors": ["sealed"]})]
    source = AppRoleAuth(VaultHttp("http://vault.test", transport=_transport(answers, [])),
                         role_id="role", secret_id=SecretStr("secret"), clock=clock)
    assert (await source.token()).get_secret_value() == "s.first"
    clock.advance(45)
    assert (await source.token()).get_secret_value() == "s.first"
    await source.wait_idle()  # renew 503, login 503: the still-valid token stays
    assert (await source.token()).get_secret_value() == "s.first"
    await source.aclose()

    down = AppRoleAuth(VaultHttp("http://vault.test", transport=_transport([(503, {})], [])),
                       role_id="role", secret_id=SecretStr("secret"))
    with pytest.raises(VaultUnavailable) as raised:
        await down.token()
    assert not isinstance(raised.value, VaultAuthError)
    await down.aclose()


async def test_concurrent_first_calls_log_in_once() -> None:
    seen: list[httpx.Request] = []
    source = AppRoleAuth(VaultHttp("http://vault.test", transport=_transport([(200, _auth("s.one", 60))], seen)),
                         role_id="role", secret_id=SecretStr("secret"))
    tokens = await asyncio.gather(*(source.token() for _ in range(20)))
    assert {t.get_secret_value() for t in tokens} == {"s.one"}
    assert len(seen) == 1
    await source.aclose()
