"""``byok keys``: the whole key lifecycle as the least-privileged admin identity, opened by the worker.

Every command runs with a token that holds deploy/vault/admin.hcl only; every "it opens" is checked
through the worker's own ``TransitDecryptor`` with a token that holds deploy/vault/worker.hcl only.
"""

from __future__ import annotations

import io
import json
import os
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import hvac.exceptions
import pytest
from pydantic import SecretStr

from schemas.models import Provider
from tests.integration.test_vault_policies import policy_token, write_policy
from tests.services import VaultServer
from worker.cli.main import main as byok
from worker.failures import KeyUnavailable
from worker.keys.auth import StaticToken
from worker.keys.endpoint import Endpoint, binding_b64
from worker.keys.transit import TransitDecryptor

SEALED_LINE = re.compile(r"vault:v(\d+):[A-Za-z0-9+/]+={0,2}\n")
KEY = "sk-proj-lifecycle-test-0123456789abcdefghij"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture(scope="module")
def admin_token(vault: VaultServer) -> str:
    return policy_token(vault, write_policy(vault, "admin"))


@pytest.fixture(scope="module")
def worker_token(vault: VaultServer) -> str:
    return policy_token(vault, write_policy(vault, "worker"))


@pytest.fixture
def keys_env(monkeypatch: pytest.MonkeyPatch, vault: VaultServer, admin_token: str) -> dict[str, str]:
    for name in list(os.environ):
        if name.startswith("BYOK_"):
            monkeypatch.delenv(name)
    env = {"BYOK_VAULT_ADDR": vault.addr, "BYOK_VAULT_TOKEN": admin_token}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


Keys = Callable[..., Ran]


@pytest.fixture
def keys(keys_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Keys:
    """Runs ``byok keys <args>`` in process with ``stdin`` as its standard input."""

    def run(*args: str, stdin: bytes = b"", tty: bool = False) -> Ran:
        stream = _Terminal() if tty else io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
        monkeypatch.setattr(sys, "stdin", stream)
        capsys.readouterr()
        try:
            code = byok(["keys", *args])
        except SystemExit as exited:  # argparse refusing the command line
            code = int(exited.code or 0)
        captured = capsys.readouterr()
        return Ran(code, captured.out, captured.err)

    return run


@pytest.fixture
def ws() -> str:
    return f"ws-{secrets.token_hex(4)}"


@pytest.fixture
async def unseal(vault: VaultServer, worker_token: str) -> Iterator[Callable[..., object]]:
    """Opens a sealed key exactly as the worker does (worker policy, TransitDecryptor)."""
    decryptor = TransitDecryptor(addr=vault.addr, tokens=StaticToken(SecretStr(worker_token)))

    async def open_(workspace_id: str, sealed: str, provider: Provider = Provider.OPENAI,
                    base_url: str | None = None) -> str:
        binding = binding_b64(workspace_id, Endpoint.resolve(provider, base_url))
        return (await decryptor.decrypt(workspace_id, sealed, binding)).get_secret_value()

    yield open_
    await decryptor.aclose()


def sealed_line(ran: Ran) -> str:
    assert ran.code == 0, ran.err
    assert SEALED_LINE.fullmatch(ran.out), f"seal must print exactly one vault:vN: line, got {ran.out!r}"
    return ran.out.strip()


# -- create ---------------------------------------------------------------------------------------------


def test_create_makes_a_derived_key_that_cannot_leave_vault_and_is_idempotent(
    keys: Keys, vault: VaultServer, ws: str
) -> None:
    first = keys("create", ws)
    assert first.code == 0, first.err
    assert "created" in first.err
    key = vault.client().secrets.transit.read_key(f"byok-ws-{ws}")["data"]
    assert key["type"] == "aes256-gcm96"
    assert key["derived"] is True
    assert key["exportable"] is False
    assert key["allow_plaintext_backup"] is False
    assert key["deletion_allowed"] is False
    again = keys("create", ws)
    assert again.code == 0, again.err
    assert "already exists" in again.err
    assert vault.client().secrets.transit.read_key(f"byok-ws-{ws}")["data"]["latest_version"] == 1


def test_a_key_made_without_derivation_is_refused_for_sealing(keys: Keys, vault: VaultServer, ws: str) -> None:
    vault.client().secrets.transit.create_key(f"byok-ws-{ws}", key_type="aes256-gcm96")  # not derived
    created = keys("create", ws)
    assert created.code == 1
    assert "not derived" in created.err
    sealed = keys("seal", ws, "--provider", "openai", stdin=KEY.encode())
    assert sealed.code == 1
    assert sealed.out == ""
    assert "not derived" in sealed.err


def test_create_rejects_an_invalid_workspace_id(keys: Keys) -> None:
    ran = keys("create", "ws\n")
    assert ran.code == 2
    assert "workspace id" in ran.err


# -- seal -----------------------------------------------------------------------------------------------


async def test_seal_prints_one_line_that_opens_only_for_its_workspace_and_endpoint(
    keys: Keys, ws: str, unseal: Callable[..., object]
) -> None:
    other_ws = f"{ws}-other"
    assert keys("create", ws).code == 0
    assert keys("create", other_ws).code == 0
    sealed = sealed_line(keys("seal", ws, "--provider", "openai", stdin=KEY.encode() + b"\n"))
    assert sealed.startswith("vault:v1:")

    assert await unseal(ws, sealed) == KEY
    # The same endpoint, written differently, is the same binding (normalised base URL).
    assert await unseal(ws, sealed, Provider.OPENAI, "HTTPS://API.OpenAI.com:443/v1/") == KEY
    for workspace_id, provider, base_url in [
        (other_ws, Provider.OPENAI, None),  # another workspace (its own key, the same binding otherwise)
        (ws, Provider.OPENAI, "https://evil.example.com/v1"),  # another base URL
        (ws, Provider.MISTRAL, "https://api.openai.com/v1"),  # another provider, same URL
    ]:
        with pytest.raises(KeyUnavailable):
            await unseal(workspace_id, sealed, provider, base_url)


@pytest.mark.parametrize(("stdin", "expected"), [
    (b"sk-one", "sk-one"),
    (b"sk-one\n", "sk-one"),
    (b"sk-one\r\n", "sk-one"),
])
async def test_seal_strips_exactly_one_trailing_newline(
    keys: Keys, ws: str, unseal: Callable[..., object], stdin: bytes, expected: str
) -> None:
    assert keys("create", ws).code == 0
    sealed = sealed_line(keys("seal", ws, "--provider", "anthropic", stdin=stdin))
    assert await unseal(ws, sealed, Provider.ANTHROPIC) == expected


@pytest.mark.parametrize(("stdin", "message"), [
    (b"", "empty"),
    (b"\n", "empty"),
    (b"sk-one\n\n", "line break"),  # one newline stripped, the other stays: refused, not guessed
    (b"sk-one\nsk-two\n", "line break"),
    (b"sk-\xff\xfe", "UTF-8"),
    (b"   \n", "only whitespace"),
    (b" \t ", "only whitespace"),
    (b"  sk-one  \n", "leading or trailing whitespace"),
    (b"sk-one ", "leading or trailing whitespace"),
    (b"\tsk-one", "leading or trailing whitespace"),
    (b"sk-one \r\n", "leading or trailing whitespace"),
])
def test_seal_refuses_a_bad_key_with_a_clear_error(keys: Keys, ws: str, stdin: bytes, message: str) -> None:
    assert keys("create", ws).code == 0
    ran = keys("seal", ws, "--provider", "openai", stdin=stdin)
    assert ran.code == 2
    assert ran.out == ""
    assert message in ran.err
    assert "sk-one" not in ran.err and "sk-two" not in ran.err


@pytest.mark.parametrize("argv", [
    ["sk-live-on-the-command-line-123456"],
    ["--key", "sk-live-on-the-command-line-123456"],
    ["--key=sk-live-on-the-command-line-123456"],
])
def test_seal_never_takes_the_key_from_argv_and_never_echoes_it(keys: Keys, ws: str, argv: list[str]) -> None:
    assert keys("create", ws).code == 0
    ran = keys("seal", ws, "--provider", "openai", *argv, stdin=b"sk-from-stdin-0123456789")
    assert ran.code == 2
    assert ran.out == ""
    assert "never taken from the command line" in ran.err
    assert "sk-live" not in ran.err


async def test_seal_prompts_without_echo_on_a_terminal(
    keys: Keys, ws: str, monkeypatch: pytest.MonkeyPatch, unseal: Callable[..., object]
) -> None:
    prompts: list[str] = []

    def fake_getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return KEY

    monkeypatch.setattr("getpass.getpass", fake_getpass)
    assert keys("create", ws).code == 0
    sealed = sealed_line(keys("seal", ws, "--provider", "mistral", tty=True))
    assert len(prompts) == 1 and ws in prompts[0] and KEY not in prompts[0]
    assert await unseal(ws, sealed, Provider.MISTRAL) == KEY


def test_seal_refuses_a_plain_http_endpoint_off_loopback(keys: Keys, ws: str) -> None:
    assert keys("create", ws).code == 0
    ran = keys("seal", ws, "--provider", "openai", "--base-url", "http://api.example.com/v1", stdin=KEY.encode())
    assert ran.code == 2
    assert "plain http" in ran.err
    assert ran.out == ""
    local = keys("seal", ws, "--provider", "openai", "--base-url", "http://127.0.0.1:8099/v1", stdin=KEY.encode())
    sealed_line(local)


def test_seal_without_a_workspace_key_says_what_to_do(keys: Keys, ws: str) -> None:
    ran = keys("seal", ws, "--provider", "openai", stdin=KEY.encode())
    assert ran.code == 1
    assert f"byok keys create {ws}" in ran.err
    assert ran.out == ""


def test_seal_without_an_admin_token_fails_clearly(keys: Keys, ws: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BYOK_VAULT_TOKEN")
    ran = keys("seal", ws, "--provider", "openai", stdin=KEY.encode())
    assert ran.code == 2
    assert "BYOK_VAULT_TOKEN" in ran.err


def test_a_worker_token_cannot_administer_keys(
    keys: Keys, ws: str, monkeypatch: pytest.MonkeyPatch, worker_token: str
) -> None:
    monkeypatch.setenv("BYOK_VAULT_TOKEN", worker_token)
    ran = keys("create", ws)
    assert ran.code == 1
    assert "Vault denied" in ran.err and "admin.hcl" in ran.err


def test_the_admin_identity_cannot_open_what_it_sealed(
    keys: Keys, ws: str, vault: VaultServer, admin_token: str
) -> None:
    assert keys("create", ws).code == 0
    sealed = sealed_line(keys("seal", ws, "--provider", "openai", stdin=KEY.encode()))
    binding = binding_b64(ws, Endpoint.resolve(Provider.OPENAI, None))
    with pytest.raises(hvac.exceptions.Forbidden):
        vault.client(admin_token).secrets.transit.decrypt_data(f"byok-ws-{ws}", sealed, context=binding)


def test_the_byok_command_seals_from_stdin_and_shows_the_key_nowhere(
    keys_env: dict[str, str], ws: str, keys: Keys
) -> None:
    """The real entry point in a subprocess: a pipe on stdin, one line on stdout, the key in no output."""
    assert keys("create", ws).code == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("BYOK_")} | keys_env
    argv = [sys.executable, "-m", "worker.cli.main", "keys", "seal", ws, "--provider", "openai"]
    result = subprocess.run(argv, input=KEY.encode() + b"\n", capture_output=True, env=env, cwd=REPO,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr.decode()
    assert SEALED_LINE.fullmatch(result.stdout.decode())
    assert KEY.encode() not in result.stdout + result.stderr
    assert all(KEY not in arg for arg in argv)


# -- rotate, rewrap, retire -----------------------------------------------------------------------------


async def test_rotate_keeps_keys_sealed_earlier_opening(
    keys: Keys, ws: str, unseal: Callable[..., object]
) -> None:
    assert keys("create", ws).code == 0
    old = sealed_line(keys("seal", ws, "--provider", "openai", stdin=KEY.encode()))
    rotated = keys("rotate", ws)
    assert rotated.code == 0, rotated.err
    assert "version 2" in rotated.err
    new = sealed_line(keys("seal", ws, "--provider", "openai", stdin=b"sk-after-rotation-0123456789"))
    assert old.startswith("vault:v1:") and new.startswith("vault:v2:")
    assert await unseal(ws, old) == KEY
    assert await unseal(ws, new) == "sk-after-rotation-0123456789"


async def test_rewrap_moves_sealed_keys_to_the_latest_version_and_they_still_open_only_with_their_binding(
    keys: Keys, ws: str, unseal: Callable[..., object]
) -> None:
    base_url = "https://llm.internal.example.com/v1"
    assert keys("create", ws).code == 0
    first = sealed_line(keys("seal", ws, "--provider", "openai", "--base-url", base_url, stdin=b"sk-first-0123456789"))
    second = sealed_line(keys("seal", ws, "--provider", "openai", "--base-url", base_url, stdin=b"sk-second-012345678"))
    assert keys("rotate", ws).code == 0
    assert keys("rotate", ws).code == 0

    ran = keys("rewrap", ws, "--provider", "openai", "--base-url", base_url,
               stdin=f"{first}\n\n{second}\n".encode())
    assert ran.code == 0, ran.err
    lines = ran.out.splitlines()
    assert len(lines) == 2 and all(line.startswith("vault:v3:") for line in lines)
    assert lines[0] != first and lines[1] != second

    assert await unseal(ws, lines[0], Provider.OPENAI, base_url) == "sk-first-0123456789"
    assert await unseal(ws, lines[1], Provider.OPENAI, base_url) == "sk-second-012345678"
    with pytest.raises(KeyUnavailable):
        await unseal(ws, lines[0], Provider.OPENAI, None)  # rewrap kept the binding: not the default URL

    retired = keys("retire", ws)
    assert retired.code == 0, retired.err
    with pytest.raises(KeyUnavailable):
        await unseal(ws, first, Provider.OPENAI, base_url)  # the v1 original is retired
    assert await unseal(ws, lines[0], Provider.OPENAI, base_url) == "sk-first-0123456789"


async def test_rewrap_is_all_or_nothing_and_never_echoes_its_input(
    keys: Keys, ws: str, unseal: Callable[..., object]
) -> None:
    assert keys("create", ws).code == 0
    sealed = sealed_line(keys("seal", ws, "--provider", "openai", stdin=KEY.encode()))
    assert keys("rotate", ws).code == 0

    pasted = "sk-clear-text-pasted-by-mistake-0123456789"
    ran = keys("rewrap", ws, "--provider", "openai", stdin=f"{sealed}\n{pasted}\n".encode())
    assert ran.code == 2
    assert ran.out == ""
    assert "line 2 is not a sealed key" in ran.err
    assert pasted not in ran.err

    wrong_endpoint = keys("rewrap", ws, "--provider", "anthropic", stdin=f"{sealed}\n".encode())
    assert wrong_endpoint.code == 1
    assert wrong_endpoint.out == ""
    assert "line 1 did not rewrap" in wrong_endpoint.err

    assert keys("rewrap", ws, "--provider", "openai", stdin=b"\n").code == 2
    assert await unseal(ws, sealed) == KEY  # nothing changed for the original


async def test_retire_raises_min_decryption_version_and_never_lowers_it(
    keys: Keys, ws: str, vault: VaultServer, unseal: Callable[..., object]
) -> None:
    assert keys("create", ws).code == 0
    v1 = sealed_line(keys("seal", ws, "--provider", "openai", stdin=b"sk-v1-0123456789"))
    assert keys("rotate", ws).code == 0
    v2 = sealed_line(keys("seal", ws, "--provider", "openai", stdin=b"sk-v2-0123456789"))
    assert keys("rotate", ws).code == 0
    v3 = sealed_line(keys("seal", ws, "--provider", "openai", stdin=b"sk-v3-0123456789"))

    partly = keys("retire", ws, "--before-version", "2")
    assert partly.code == 0, partly.err
    with pytest.raises(KeyUnavailable):
        await unseal(ws, v1)
    assert await unseal(ws, v2) == "sk-v2-0123456789"

    assert keys("retire", ws, "--before-version", "1").code == 2  # lowering: refused
    assert keys("retire", ws, "--before-version", "4").code == 2  # beyond the latest version
    unchanged = keys("retire", ws, "--before-version", "2")
    assert unchanged.code == 0 and "nothing changed" in unchanged.err

    assert keys("retire", ws).code == 0  # default: everything before the latest version
    with pytest.raises(KeyUnavailable):
        await unseal(ws, v2)
    assert await unseal(ws, v3) == "sk-v3-0123456789"
    assert vault.client().secrets.transit.read_key(f"byok-ws-{ws}")["data"]["min_decryption_version"] == 3


def test_status_shows_versions_and_retirement_but_no_key_material(keys: Keys, ws: str) -> None:
    assert keys("create", ws).code == 0
    sealed_line(keys("seal", ws, "--provider", "openai", stdin=KEY.encode()))
    assert keys("rotate", ws).code == 0
    assert keys("rotate", ws).code == 0
    assert keys("retire", ws, "--before-version", "2").code == 0

    text = keys("status", ws)
    assert text.code == 0, text.err
    assert f"byok-ws-{ws}" in text.out
    assert re.search(r"latest_version\s+3", text.out)
    assert re.search(r"min_decryption_version\s+2", text.out)
    assert re.search(r"v2\s+created \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", text.out)
    assert "v1 " not in text.out

    as_json = keys("status", ws, "--json")
    assert as_json.code == 0, as_json.err
    status = json.loads(as_json.out)
    assert status["latest_version"] == 3
    assert status["min_decryption_version"] == 2
    assert [v["version"] for v in status["versions"]] == [2, 3]
    assert all(v["created_at"].endswith("Z") for v in status["versions"])
    assert status["derived"] is True and status["exportable"] is False
    assert not {"plaintext", "ciphertext", "key_material"} & set(status)
    for output in (text.out, as_json.out):
        assert "vault:v" not in output and KEY not in output
