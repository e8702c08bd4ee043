"""API tokens: the tokens file (hashes only), ``byok tokens create|list|revoke`` as the real command, and the
aggregator's refusal to serve a non-loopback address without tokens."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from worker.aggregator.settings import AggregatorSettings
from worker.aggregator.tokens import (
    TokenFileError,
    TokenRegistry,
    add_token,
    read_entries,
    revoke_token,
    token_hash,
)
from worker.settings import InvalidSettings, is_loopback, load_settings


def byok(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """The real command, with only the given ``BYOK_*`` variables."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("BYOK_")}
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_file_holds_hashes_and_scopes_never_a_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    token, entry = add_token(path, "acme")
    star, _ = add_token(path, "*")
    text = path.read_text()
    assert token not in text and star not in text
    assert entry.sha256 == token_hash(token) and entry.sha256 in text
    assert [(e.scope, e.sha256) for e in read_entries(path)] == [("acme", token_hash(token)), ("*", token_hash(star))]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token.startswith("byok_") and len(token) > 40


def test_the_registry_rereads_the_file_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    first, _ = add_token(path, "acme")
    registry = TokenRegistry(str(path))
    assert registry.scope_of(first) == "acme"
    second, _ = add_token(path, "globex")
    assert registry.scope_of(second) == "globex"
    revoke_token(path, token_hash(first)[:8])
    assert registry.scope_of(first) is None
    path.unlink()
    assert registry.scope_of(second) is None  # gone: closed, not open


def test_a_missing_file_admits_nobody_and_a_broken_one_stops_the_start(tmp_path: Path) -> None:
    assert len(TokenRegistry(str(tmp_path / "none-yet.json"))) == 0
    broken = tmp_path / "broken.json"
    broken.write_text('{"tokens": [{"sha256": "not-hex", "scope": "acme"}]}')
    with pytest.raises(TokenFileError):
        TokenRegistry(str(broken))


@pytest.mark.parametrize(("prefix", "problem"), [("ab", "at least 4"), ("zzzz", "at least 4"), ("0000", "no token")])
def test_revoke_needs_a_prefix_of_exactly_one_hash(tmp_path: Path, prefix: str, problem: str) -> None:
    path = tmp_path / "tokens.json"
    add_token(path, "acme")
    if read_entries(path)[0].sha256.startswith(prefix):
        prefix = "1111"  # the random hash happened to start with 0000
    with pytest.raises(TokenFileError, match=problem):
        revoke_token(path, prefix)


def test_byok_tokens_create_list_revoke(tmp_path: Path) -> None:
    path = tmp_path / "api-tokens.json"
    created = byok("tokens", "create", "acme", BYOK_API_TOKENS_FILE=str(path))
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert created.stdout.count("\n") == 1 and token.startswith("byok_")  # printed once, alone on stdout
    assert "shown only now" in created.stderr and token not in created.stderr
    other = byok("tokens", "create", "*", "--file", str(path))  # --file instead of the variable
    assert other.returncode == 0

    listed = byok("tokens", "list", "--file", str(path))
    assert listed.returncode == 0
    assert token not in listed.stdout
    digest = token_hash(token)
    assert digest[:12] in listed.stdout and digest not in listed.stdout
    lines = listed.stdout.splitlines()
    assert [line.split()[1] for line in lines[1:]] == ["acme", "*"]

    revoked = byok("tokens", "revoke", digest[:8], BYOK_API_TOKENS_FILE=str(path))
    assert revoked.returncode == 0, revoked.stderr
    assert [e.scope for e in read_entries(path)] == ["*"]


@pytest.mark.parametrize(("args", "problem"), [
    (("tokens", "create", "not a workspace!"), "scope must be"),
    (("tokens", "revoke", "abcd"), "no token"),
    (("tokens", "list"), "no tokens file"),
])
def test_byok_tokens_errors_are_one_line_exit_2(tmp_path: Path, args: tuple[str, ...], problem: str) -> None:
    env = {} if args[1] == "list" else {"BYOK_API_TOKENS_FILE": str(tmp_path / "t.json")}
    ran = byok(*args, **env)
    assert ran.returncode == 2
    assert len(ran.stderr.splitlines()) == 1 and problem in ran.stderr


def test_a_broken_tokens_file_is_refused_without_quoting_it(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    path.write_bytes(orjson.dumps({"tokens": "byok_a-token-someone-pasted"}))
    ran = byok("tokens", "list", "--file", str(path))
    assert ran.returncode == 2
    assert "byok_a-token-someone-pasted" not in ran.stderr


@pytest.mark.parametrize(("listen", "loopback"), [
    ("127.0.0.1:8088", True), ("127.1.2.3:0", True), ("[::1]:8088", True), ("localhost:8088", True),
    (":8088", True), ("0.0.0.0:8088", False), ("[::]:8088", False), ("10.0.0.5:8088", False),
    ("api.example.com:8088", False),
])
def test_loopback_addresses(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


def test_the_aggregator_refuses_a_public_address_without_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOK_API_LISTEN", "0.0.0.0:8088")
    with pytest.raises(InvalidSettings, match="BYOK_API_TOKENS_FILE is unset"):
        load_settings(AggregatorSettings)
    monkeypatch.setenv("BYOK_API_ALLOW_UNAUTHENTICATED", "true")
    assert load_settings(AggregatorSettings).api_listen == "0.0.0.0:8088"
    monkeypatch.delenv("BYOK_API_ALLOW_UNAUTHENTICATED")
    monkeypatch.setenv("BYOK_API_TOKENS_FILE", "/etc/byok/api-tokens.json")
    assert load_settings(AggregatorSettings).api_tokens_file == "/etc/byok/api-tokens.json"


def test_byok_aggregator_on_a_public_address_without_tokens_exits_2() -> None:
    ran = byok("aggregator", BYOK_API_LISTEN="0.0.0.0:0")
    assert ran.returncode == 2
    assert len(ran.stderr.splitlines()) == 1
    assert "BYOK_API_TOKENS_FILE" in ran.stderr and "BYOK_API_ALLOW_UNAUTHENTICATED" in ran.stderr


def test_the_aggregator_says_at_start_who_may_read(tmp_path: Path) -> None:
    from structlog.testing import capture_logs

    from worker.aggregator.service import _say_who_may_read

    loopback = AggregatorSettings(api_listen="127.0.0.1:0")
    path = tmp_path / "tokens.json"
    add_token(path, "acme")
    with capture_logs() as logs:
        _say_who_may_read("http://127.0.0.1:8088", None, loopback)
        _say_who_may_read("http://127.0.0.1:8088", TokenRegistry(str(path)), loopback)
        _say_who_may_read("http://0.0.0.0:8088", None,
                          AggregatorSettings(api_listen="0.0.0.0:0", api_allow_unauthenticated=True))
    assert [(entry["log_level"], entry["event"].split(":")[0]) for entry in logs] == [
        ("warning", "API without tokens"),
        ("info", "API and page need a bearer token"),
        ("warning", "API without tokens on a non-loopback address (BYOK_API_ALLOW_UNAUTHENTICATED=true)"),
    ]
    assert "loopback only" in logs[0]["event"]
    assert logs[1]["tokens"] == 1
