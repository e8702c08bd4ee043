"""deploy/vault/{admin,worker}.hcl against a real OpenBao: every operation x identity, allowed or denied.

Each cell runs on a key of its own, prepared by root so that the operation *would* succeed if the
policy let it through (a deletable key for "delete", an exportable one for "export", …): "denied"
then means the policy said no (hvac.exceptions.Forbidden), not that the key was in the wrong state.
An allowed cell must really succeed; any other error fails the test as well.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import hvac
import hvac.exceptions
import pytest

from schemas.models import Provider
from tests.services import VaultServer
from worker.keys.endpoint import Endpoint, binding_b64

POLICY_DIR = Path(__file__).resolve().parents[2] / "deploy" / "vault"
SAMPLE_KEY = b"sk-policy-matrix-0123456789abcdef"


def policy_for_mount(which: str, mount: str) -> str:
    """deploy/vault/<which>.hcl written for transit at ``mount``, as deploy/vault/setup.sh writes it: the files'
    paths name BYOK's own mount ``byok-transit/``; the session's OpenBao has the workers' default ``transit/``."""
    text = (POLICY_DIR / f"{which}.hcl").read_text()
    return re.sub(r'^path "byok-transit/', f'path "{mount}/', text, flags=re.M)


def write_policy(vault: VaultServer, which: str, mount: str = "transit") -> str:
    """Writes deploy/vault/<which>.hcl (for transit at ``mount``) under a unique name; returns the name."""
    name = f"byok-{which}-{secrets.token_hex(4)}"
    vault.client().sys.create_or_update_policy(name, policy_for_mount(which, mount))
    return name


def policy_token(vault: VaultServer, *policies: str, ttl: str = "1h") -> str:
    """A token with exactly these policies (no default policy)."""
    created = vault.client().auth.token.create(policies=list(policies), no_default_policy=True, ttl=ttl,
                                               renewable=True)
    return str(created["auth"]["client_token"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass
class Target:
    """One cell's own workspace key, sealed sample and binding, set up by root."""

    root: hvac.Client
    workspace_id: str
    key: str
    context: str
    sealed: str

    @property
    def new_key(self) -> str:
        return f"{self.key}-new"


def make_target(root: hvac.Client) -> Target:
    workspace_id = f"pol-{secrets.token_hex(5)}"
    key = f"byok-ws-{workspace_id}"
    context = binding_b64(workspace_id, Endpoint.resolve(Provider.OPENAI, None))
    root.adapter.post(f"/v1/transit/keys/{key}", json={"type": "aes256-gcm96", "derived": True})
    sealed = root.adapter.post(f"/v1/transit/encrypt/{key}", json={"plaintext": b64(SAMPLE_KEY),
                                                                   "context": context})["data"]["ciphertext"]
    return Target(root, workspace_id, key, context, sealed)


def _rotate(t: Target) -> None:
    t.root.adapter.post(f"/v1/transit/keys/{t.key}/rotate")


def _config(**values: object) -> Callable[[Target], None]:
    return lambda t: t.root.adapter.post(f"/v1/transit/keys/{t.key}/config", json=values)


def _rotate_and_retire_v1(t: Target) -> None:
    _rotate(t)
    t.root.adapter.post(f"/v1/transit/keys/{t.key}/config", json={"min_decryption_version": 2,
                                                                   "min_encryption_version": 2})


def _decrypt(c: hvac.Client, t: Target) -> object:
    out = c.adapter.post(f"/v1/transit/decrypt/{t.key}", json={"ciphertext": t.sealed, "context": t.context})
    assert base64.b64decode(out["data"]["plaintext"]) == SAMPLE_KEY
    return out


def _encrypt_unbound(c: hvac.Client, t: Target) -> object:
    plain = f"{t.key}-plain"
    t.root.adapter.post(f"/v1/transit/keys/{plain}")  # not derived: a context would be ignored
    return c.adapter.post(f"/v1/transit/encrypt/{plain}", json={"plaintext": b64(b"sk-x")})


def _decrypt_other(c: hvac.Client, t: Target) -> object:
    other = f"other-{t.workspace_id}"
    t.root.adapter.post(f"/v1/transit/keys/{other}")
    sealed = t.root.adapter.post(f"/v1/transit/encrypt/{other}", json={"plaintext": b64(b"x")})
    return c.adapter.post(f"/v1/transit/decrypt/{other}", json={"ciphertext": sealed["data"]["ciphertext"]})


@dataclass(frozen=True)
class Operation:
    name: str
    run: Callable[[hvac.Client, Target], object]
    admin: bool
    worker: bool
    prepare: Callable[[Target], None] | None = None

    @property
    def both(self) -> bool:
        """An identity holding both policies: the union, except that it still cannot decrypt."""
        return (self.admin or self.worker) and not self.name.startswith("decrypt")


OPERATIONS = [
    Operation("create key (aes256-gcm96, derived)",
              lambda c, t: c.adapter.post(f"/v1/transit/keys/{t.new_key}", json={
                  "type": "aes256-gcm96", "derived": True, "exportable": False, "allow_plaintext_backup": False}),
              admin=True, worker=False),
    Operation("create key without derivation",
              lambda c, t: c.adapter.post(f"/v1/transit/keys/{t.new_key}", json={"type": "aes256-gcm96"}),
              admin=False, worker=False),
    Operation("create key, exportable=true",
              lambda c, t: c.adapter.post(f"/v1/transit/keys/{t.new_key}", json={
                  "type": "aes256-gcm96", "derived": True, "exportable": True}),
              admin=False, worker=False),
    Operation("create key, allow_plaintext_backup=true",
              lambda c, t: c.adapter.post(f"/v1/transit/keys/{t.new_key}", json={
                  "type": "aes256-gcm96", "derived": True, "allow_plaintext_backup": True}),
              admin=False, worker=False),
    Operation("encrypt (seal, with binding context)",
              lambda c, t: c.adapter.post(f"/v1/transit/encrypt/{t.key}", json={
                  "plaintext": b64(b"sk-x"), "context": t.context}),
              admin=True, worker=False),
    Operation("encrypt without context (non-derived key)", _encrypt_unbound, admin=False, worker=False),
    Operation("encrypt to a missing key (upsert)",
              lambda c, t: c.adapter.post(f"/v1/transit/encrypt/{t.new_key}", json={
                  "plaintext": b64(b"sk-x"), "context": t.context}),
              admin=False, worker=False),
    Operation("decrypt", _decrypt, admin=False, worker=True),
    Operation("decrypt, key outside byok-ws-*", _decrypt_other, admin=False, worker=False),
    Operation("rotate", lambda c, t: c.adapter.post(f"/v1/transit/keys/{t.key}/rotate"), admin=True, worker=False),
    Operation("rewrap",
              lambda c, t: c.adapter.post(f"/v1/transit/rewrap/{t.key}", json={
                  "ciphertext": t.sealed, "context": t.context}),
              admin=True, worker=False, prepare=_rotate),
    Operation("set min_decryption_version",
              lambda c, t: c.adapter.post(f"/v1/transit/keys/{t.key}/config", json={"min_decryption_version": 2}),
              admin=True, worker=False, prepare=_rotate),
    Operation("set deletion_allowed=true",
              lambda c, t: c.adapter.post(f"/v1/transit/keys/{t.key}/config", json={"deletion_allowed": True}),
              admin=False, worker=False),
    Operation("set exportable=true",
              lambda c, t: c.adapter.post(f"/v1/transit/keys/{t.key}/config", json={"exportable": True}),
              admin=False, worker=False),
    Operation("set min_decryption_version + deletion_allowed",
              lambda c, t: c.adapter.post(f"/v1/transit/keys/{t.key}/config", json={
                  "min_decryption_version": 2, "deletion_allowed": True}),
              admin=False, worker=False, prepare=_rotate),
    Operation("delete key", lambda c, t: c.adapter.delete(f"/v1/transit/keys/{t.key}"),
              admin=False, worker=False, prepare=_config(deletion_allowed=True)),
    Operation("trim",
              lambda c, t: c.adapter.post(f"/v1/transit/keys/{t.key}/trim", json={"min_available_version": 2}),
              admin=False, worker=False, prepare=_rotate_and_retire_v1),
    Operation("export encryption key", lambda c, t: c.adapter.get(f"/v1/transit/export/encryption-key/{t.key}"),
              admin=False, worker=False, prepare=_config(exportable=True)),
    Operation("backup", lambda c, t: c.adapter.get(f"/v1/transit/backup/{t.key}"),
              admin=False, worker=False, prepare=_config(exportable=True, allow_plaintext_backup=True)),
    Operation("read key (as `byok keys status`: derived=true)",
              lambda c, t: c.adapter.get(f"/v1/transit/keys/{t.key}", params={"derived": "true"}),
              admin=True, worker=False),
    Operation("list keys", lambda c, t: c.adapter.list("/v1/transit/keys"), admin=True, worker=False),
    Operation("token lookup-self", lambda c, t: c.auth.token.lookup_self(), admin=False, worker=True),
    Operation("token renew-self", lambda c, t: c.auth.token.renew_self(), admin=False, worker=True),
]


def outcome(op: Operation, client: hvac.Client, root: hvac.Client) -> str:
    target = make_target(root)
    if op.prepare is not None:
        op.prepare(target)
    try:
        op.run(client, target)
    except hvac.exceptions.Forbidden:
        return "denied"
    except Exception as exc:  # reported in the matrix: fails the test
        return f"error: {type(exc).__name__}: {str(exc)[:80]}"
    return "allowed"


def render(rows: list[tuple[str, dict[str, str], dict[str, str]]]) -> str:
    identities = ["admin", "worker", "admin+worker"]
    width = max(len(name) for name, _, _ in rows) + 2
    lines = ["operation".ljust(width) + "".join(i.ljust(14) for i in identities)]
    for name, got, expected in rows:
        cells = "".join(got[i].ljust(14) if got[i] == expected[i] else f"{got[i]}!".ljust(14) for i in identities)
        wrong = [f"{i} expected {expected[i]}" for i in identities if got[i] != expected[i]]
        lines.append(name.ljust(width) + cells + (f"  <-- {', '.join(wrong)}" if wrong else ""))
    return "\n".join(lines)


@pytest.fixture(scope="module")
def tokens(vault: VaultServer) -> dict[str, str]:
    admin, worker = write_policy(vault, "admin"), write_policy(vault, "worker")
    return {
        "admin": policy_token(vault, admin),
        "worker": policy_token(vault, worker),
        "admin+worker": policy_token(vault, admin, worker),
    }


@pytest.fixture(scope="module")
def identities(vault: VaultServer, tokens: dict[str, str]) -> dict[str, hvac.Client]:
    return {who: vault.client(token) for who, token in tokens.items()}


def test_policy_matrix(vault: VaultServer, identities: dict[str, hvac.Client]) -> None:
    root = vault.client()
    rows = []
    for op in OPERATIONS:
        expected = {"admin": op.admin, "worker": op.worker, "admin+worker": op.both}
        got = {who: outcome(op, client, root) for who, client in identities.items()}
        rows.append((op.name, got, {who: "allowed" if ok else "denied" for who, ok in expected.items()}))
    matrix = render(rows)
    print("\n" + matrix)
    assert all(got == expected for _, got, expected in rows), f"policy matrix differs:\n{matrix}"


def test_every_operation_in_the_matrix_succeeds_for_root(vault: VaultServer) -> None:
    """So a "denied" cell is the policy's doing, not a key in the wrong state."""
    root = vault.client()
    # (the root token itself is not renewable: the token rows are about each identity's own token)
    results = {op.name: outcome(op, root, root) for op in OPERATIONS if not op.name.startswith("token")}
    not_allowed = {name: r for name, r in results.items() if r != "allowed"}
    assert not not_allowed, not_allowed


def test_policies_keep_the_worker_to_decrypt_and_the_admin_away_from_plaintext(
    vault: VaultServer, tokens: dict[str, str]
) -> None:
    """What Vault itself reports as each identity's capabilities on the key paths (sys/capabilities)."""
    def caps(who: str, path: str) -> list[str]:
        return sorted(vault.client().sys.get_capabilities(paths=[path], token=tokens[who])["capabilities"])

    key = "byok-ws-capcheck"
    assert caps("worker", f"transit/decrypt/{key}") == ["update"]
    for path in (f"transit/encrypt/{key}", f"transit/rewrap/{key}", f"transit/keys/{key}",
                 f"transit/keys/{key}/rotate", f"transit/export/encryption-key/{key}", f"transit/backup/{key}"):
        assert caps("worker", path) == ["deny"], path
    assert caps("admin", f"transit/decrypt/{key}") == ["deny"]
    assert caps("admin+worker", f"transit/decrypt/{key}") == ["deny"]
    for path in (f"transit/keys/{key}/trim", f"transit/export/encryption-key/{key}", f"transit/backup/{key}",
                 f"transit/restore/{key}", f"transit/keys/{key}/import"):
        assert caps("admin", path) == ["deny"], path
