"""Workspace keys for the admin identity: create, seal, rotate, rewrap, retire, status (``byok keys``).

How a sealed key is bound to its workspace and endpoint
-------------------------------------------------------
Every workspace key is a *derived* ``aes256-gcm96`` transit key, and the binding
``worker.keys.endpoint.binding_b64(workspace, endpoint)`` is the transit ``context`` at seal, at rewrap and at
unseal. Transit derives a separate AES key from (key version, context), so a sealed key only opens with
the exact binding it was sealed with: another workspace, provider or base URL fails GCM authentication
inside Vault, and the plaintext never leaves it.

Why ``context`` and not ``associated_data``: transit *rewrap* takes no associated data (OpenBao 2.7 and
Vault alike: ``ciphertext``, ``context``, ``key_version`` only; hashicorp/vault#29532, #31791), so a key
sealed with associated data can never be rewrapped without decrypting it, which the admin identity may
not do. Rewrap does carry ``context``. Caution: for a key that is *not* derived, transit silently ignores
``context``. That is why keys are created derived, the admin policy refuses to create any other kind,
and every seal and rewrap checks the key first.

The admin identity creates keys, seals (encrypt), rotates, rewraps and raises ``min_decryption_version``.
It never decrypts: no method here returns, logs or raises anything that contains a provider key.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import hvac
import hvac.exceptions
import requests
from pydantic import SecretStr

from schemas.models import IDENTIFIER_PATTERN, SEALED_KEY_PATTERN
from worker.keys.endpoint import Endpoint, EndpointError, binding_b64, check_vault_addr
from worker.redaction import redact_text
from worker.settings import VaultSettings

KEY_TYPE = "aes256-gcm96"
WORKSPACE_ID = re.compile(IDENTIFIER_PATTERN)
SEALED_KEY = re.compile(SEALED_KEY_PATTERN)
MAX_PROVIDER_KEY_CHARS = 16_384
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

T = TypeVar("T")


class KeyAdminError(Exception):
    """An operation failed; the message is safe to print (it never contains key material)."""

    exit_code = 1


class KeyUsageError(KeyAdminError):
    """The request itself is wrong (bad workspace id, empty key, lowering a retirement…)."""

    exit_code = 2


class KeyNotFound(KeyAdminError):
    pass


@dataclass(frozen=True, slots=True)
class KeyVersion:
    version: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class KeyStatus:
    workspace_id: str
    name: str
    type: str
    derived: bool
    convergent: bool
    exportable: bool
    allow_plaintext_backup: bool
    deletion_allowed: bool
    soft_deleted: bool
    latest_version: int
    min_decryption_version: int
    min_encryption_version: int
    versions: tuple[KeyVersion, ...]
    """Versions that can still decrypt (transit does not list retired versions)."""

    def problems(self) -> list[str]:
        """Why this key must not hold sealed provider keys (empty when it is fine)."""
        found = []
        if self.type != KEY_TYPE:
            found.append(f"type is {self.type}, not {KEY_TYPE}")
        if not self.derived:
            found.append("it is not derived (transit would ignore the endpoint binding)")
        if self.convergent:
            found.append("it uses convergent encryption")
        if self.exportable:
            found.append("it is exportable")
        if self.allow_plaintext_backup:
            found.append("it allows plaintext backups")
        if self.deletion_allowed:
            found.append("deletion is allowed")
        if self.soft_deleted:
            found.append("it is soft-deleted")
        return found

    def to_json(self) -> dict[str, Any]:
        return {
            "workspace_id": self.workspace_id,
            "key": self.name,
            "type": self.type,
            "derived": self.derived,
            "exportable": self.exportable,
            "allow_plaintext_backup": self.allow_plaintext_backup,
            "deletion_allowed": self.deletion_allowed,
            "latest_version": self.latest_version,
            "min_decryption_version": self.min_decryption_version,
            "min_encryption_version": self.min_encryption_version,
            "versions": [
                {"version": v.version, "created_at": v.created_at.isoformat().replace("+00:00", "Z")}
                for v in self.versions
            ],
        }


def check_workspace_id(workspace_id: str) -> str:
    if not WORKSPACE_ID.fullmatch(workspace_id):
        raise KeyUsageError("a workspace id is 1-64 characters of A-Z, a-z, 0-9, '_' and '-'")
    return workspace_id


def check_provider_key(secret: SecretStr) -> SecretStr:
    value = secret.get_secret_value()
    if not value:
        raise KeyUsageError("the provider key is empty: nothing was sealed")
    if len(value) > MAX_PROVIDER_KEY_CHARS:
        raise KeyUsageError(f"the provider key is longer than {MAX_PROVIDER_KEY_CHARS} characters")
    if _CONTROL.search(value):
        # A newline inside a key would end up in an HTTP header: refuse rather than guess.
        raise KeyUsageError("the provider key contains a line break or another control character")
    return secret


class KeyAdmin:
    """Workspace transit keys through hvac (synchronous: this is the CLI's side, not the worker's)."""

    def __init__(self, client: hvac.Client, *, mount: str = "transit", key_prefix: str = "byok-ws-") -> None:
        self._client = client
        self._mount = mount.strip("/")
        self._prefix = key_prefix

    @classmethod
    def from_settings(cls, settings: VaultSettings) -> KeyAdmin:
        """The admin identity: ``BYOK_VAULT_ADDR`` and ``BYOK_VAULT_TOKEN`` (plus namespace, mount, prefix)."""
        if settings.vault_token is None or not settings.vault_token.get_secret_value():
            raise KeyUsageError("BYOK_VAULT_TOKEN is not set: `byok keys` needs the admin identity's Vault token")
        try:
            check_vault_addr(settings.vault_addr, allow_plain_http=settings.vault_allow_plain_http)
        except EndpointError as exc:
            raise KeyUsageError(str(exc)) from None
        client = hvac.Client(
            url=settings.vault_addr,
            token=settings.vault_token.get_secret_value(),
            namespace=settings.vault_namespace,
            timeout=settings.vault_timeout_s,
        )
        return cls(client, mount=settings.vault_transit_mount, key_prefix=settings.vault_key_prefix)

    def __repr__(self) -> str:
        return f"KeyAdmin(addr={self._client.url!r}, mount={self._mount!r}, key_prefix={self._prefix!r})"

    def key_name(self, workspace_id: str) -> str:
        return f"{self._prefix}{check_workspace_id(workspace_id)}"

    # -- reads -----------------------------------------------------------------------------------------

    def status(self, workspace_id: str) -> KeyStatus:
        name = self.key_name(workspace_id)
        # ``derived=true`` rides along on reads because admin.hcl requires it on transit/keys/<name>, so
        # that the admin identity can never create a key without derivation (Vault checks
        # required_parameters on reads too). Transit ignores it on a read.
        data = self._vault(
            f"read of {name}",
            lambda: self._client.adapter.get(f"/v1/{self._mount}/keys/{name}", params={"derived": "true"}),
            not_found=f"there is no transit key {name}: run `byok keys create {workspace_id}` first",
        )["data"]
        versions = tuple(
            sorted(
                (KeyVersion(int(v), datetime.fromtimestamp(int(t), UTC)) for v, t in data.get("keys", {}).items()),
                key=lambda kv: kv.version,
            )
        )
        return KeyStatus(
            workspace_id=workspace_id,
            name=name,
            type=str(data.get("type")),
            derived=bool(data.get("derived")),
            convergent=bool(data.get("convergent_encryption")),
            exportable=bool(data.get("exportable")),
            allow_plaintext_backup=bool(data.get("allow_plaintext_backup")),
            deletion_allowed=bool(data.get("deletion_allowed")),
            soft_deleted=bool(data.get("soft_deleted")),
            latest_version=int(data["latest_version"]),
            min_decryption_version=int(data["min_decryption_version"]),
            min_encryption_version=int(data.get("min_encryption_version") or 0),
            versions=versions,
        )

    def _usable(self, workspace_id: str) -> KeyStatus:
        status = self.status(workspace_id)
        problems = status.problems()
        if problems:
            raise KeyAdminError(
                f"transit key {status.name} cannot hold sealed keys: {'; '.join(problems)}. "
                "It was not made by `byok keys create`; a workspace key cannot be changed into a safe one, "
                "so an operator has to replace it."
            )
        return status

    # -- writes ----------------------------------------------------------------------------------------

    def create(self, workspace_id: str) -> tuple[bool, KeyStatus]:
        """Create the workspace key if it does not exist. Returns (created, status)."""
        name = self.key_name(workspace_id)
        try:
            return False, self._usable(workspace_id)
        except KeyNotFound:
            pass
        body = {"type": KEY_TYPE, "derived": True, "exportable": False, "allow_plaintext_backup": False}
        self._vault(f"creation of {name}", self._post(f"keys/{name}", body))
        return True, self._usable(workspace_id)

    def seal(self, workspace_id: str, endpoint: Endpoint, provider_key: SecretStr) -> str:
        """Encrypt ``provider_key`` with the workspace key, bound to (workspace, endpoint)."""
        check_provider_key(provider_key)
        name = self._usable(workspace_id).name
        plaintext = base64.b64encode(provider_key.get_secret_value().encode()).decode()
        body = {"plaintext": plaintext, "context": binding_b64(workspace_id, endpoint)}
        response = self._vault(f"seal with {name}", self._post(f"encrypt/{name}", body))
        return self._sealed_from(response, name)

    def rotate(self, workspace_id: str) -> KeyStatus:
        """A new key version for new seals; sealed keys of earlier versions keep opening."""
        name = self._usable(workspace_id).name
        self._vault(f"rotation of {name}", self._post(f"keys/{name}/rotate", None))
        return self.status(workspace_id)

    def rewrap(self, workspace_id: str, endpoint: Endpoint, sealed_keys: Sequence[str]) -> list[str]:
        """Re-encrypt sealed keys with the latest key version inside Vault (plaintext never leaves it).

        All or nothing: every input is checked before the first call, and any failure raises, so a
        caller never holds a half-rewrapped list.
        """
        for number, sealed in enumerate(sealed_keys, 1):
            if not SEALED_KEY.fullmatch(sealed):
                # Never echo the line: someone may have piped a clear-text key in by mistake.
                raise KeyUsageError(f"input line {number} is not a sealed key (expected vault:vN:…)")
        name = self._usable(workspace_id).name
        context = binding_b64(workspace_id, endpoint)
        rewrapped = []
        for number, sealed in enumerate(sealed_keys, 1):
            response = self._vault(
                f"rewrap of input line {number} with {name}",
                self._post(f"rewrap/{name}", {"ciphertext": sealed, "context": context}),
                refused=(
                    f"input line {number} did not rewrap: it was not sealed for workspace {workspace_id} and "
                    f"{endpoint.provider.value} {endpoint.base_url}, or its key version is retired"
                ),
            )
            rewrapped.append(self._sealed_from(response, name))
        return rewrapped

    def retire(self, workspace_id: str, before_version: int | None = None) -> tuple[int, KeyStatus]:
        """Raise ``min_decryption_version``: keys sealed with versions below it stop opening.

        Returns (previous min_decryption_version, new status). Never lowers it: that would bring
        retired keys back.
        """
        status = self._usable(workspace_id)
        target = status.latest_version if before_version is None else before_version
        if not 1 <= target <= status.latest_version:
            raise KeyUsageError(
                f"--before-version must be between 1 and the latest version {status.latest_version}"
            )
        previous = status.min_decryption_version
        if target < previous:
            raise KeyUsageError(
                f"versions before {previous} are already retired; retire never lowers min_decryption_version"
            )
        if target == previous:
            return previous, status
        body = {"min_decryption_version": target}
        self._vault(f"retirement on {status.name}", self._post(f"keys/{status.name}/config", body))
        return previous, self.status(workspace_id)

    # -- plumbing --------------------------------------------------------------------------------------

    def _post(self, path: str, body: dict[str, Any] | None) -> Callable[[], Any]:
        url = f"/v1/{self._mount}/{path}"
        if body is None:
            return lambda: self._client.adapter.post(url)
        return lambda: self._client.adapter.post(url, json=body)

    @staticmethod
    def _sealed_from(response: Any, name: str) -> str:
        try:
            sealed = str(response["data"]["ciphertext"])
        except (TypeError, KeyError):
            raise KeyAdminError(f"Vault's answer for {name} carried no ciphertext") from None
        if not SEALED_KEY.fullmatch(sealed):
            raise KeyAdminError(f"Vault's answer for {name} is not a vault:vN: ciphertext")
        return sealed

    def _vault(self, what: str, call: Callable[[], T], *, not_found: str | None = None,
               refused: str | None = None) -> T:
        """One Vault call, its failures turned into messages that say what to do (and hold no secret).

        ``from None`` everywhere: a chained hvac/requests exception must not drag request details along.
        """
        try:
            return call()
        except hvac.exceptions.Forbidden:
            raise KeyAdminError(
                f"Vault denied the {what}: BYOK_VAULT_TOKEN must carry the admin policy (deploy/vault/admin.hcl)"
            ) from None
        except hvac.exceptions.InvalidPath:
            if not_found:
                raise KeyNotFound(not_found) from None
            raise KeyAdminError(f"Vault has no such path for the {what} (is transit mounted at "
                                f"{self._mount}/?)") from None
        except hvac.exceptions.InvalidRequest as exc:
            raise KeyAdminError(refused or f"Vault refused the {what}: {_vault_errors(exc)}") from None
        except hvac.exceptions.VaultError as exc:
            raise KeyAdminError(f"Vault failed the {what}: {type(exc).__name__}: {_vault_errors(exc)}") from None
        except requests.exceptions.RequestException as exc:
            raise KeyAdminError(f"Vault at {self._client.url} is unreachable ({type(exc).__name__})") from None


def _vault_errors(exc: hvac.exceptions.VaultError) -> str:
    errors = getattr(exc, "errors", None)
    text = "; ".join(str(e) for e in errors) if errors else "no detail"
    return redact_text(text)[:300]
