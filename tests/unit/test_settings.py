"""worker.settings: secrets stay hidden, and Vault is only spoken to where a key may travel."""

from __future__ import annotations

import pytest

from worker.keys.admin import KeyAdmin, KeyUsageError
from worker.keys.auth import VaultAuthError, make_token_source
from worker.keys.endpoint import EndpointError, check_vault_addr
from worker.settings import Settings

SECRETS = {
    "BYOK_AMQP_URL": "amqp://byok:amqp-Pa55word-0001@broker:5672/",
    "BYOK_VAULT_TOKEN": "hvs.token-Secret-0002",
    "BYOK_VAULT_SECRET_ID": "secret-id-Secret-0003",
    "BYOK_STORE_URL": "postgresql://agg:pg-Pa55word-0004@db:5432/byok",
}


def test_no_repr_or_dump_of_the_settings_shows_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    shown = "\n".join([repr(settings), str(settings), settings.model_dump_json(), repr(settings.model_dump())])
    for value in SECRETS.values():
        assert value not in shown
        assert value.split(":")[-1].split("@")[0] not in shown  # the password part alone
    assert settings.store_url.get_secret_value() == SECRETS["BYOK_STORE_URL"]


@pytest.mark.parametrize("addr", [
    "https://vault.example:8200", "http://127.0.0.1:8200", "http://localhost:8200", "http://[::1]:8200",
])
def test_vault_addresses_that_keep_keys_off_the_wire(addr: str) -> None:
    check_vault_addr(addr, allow_plain_http=False)


@pytest.mark.parametrize("addr", ["http://vault:8200", "http://10.0.0.7:8200", "ftp://vault", "vault:8200"])
def test_plain_http_off_loopback_and_non_urls_are_refused(addr: str) -> None:
    with pytest.raises(EndpointError):
        check_vault_addr(addr, allow_plain_http=False)


def test_plain_http_on_request() -> None:
    check_vault_addr("http://vault:8200", allow_plain_http=True)


def test_worker_and_key_admin_refuse_plain_http_vault() -> None:
    settings = Settings(vault_addr="http://vault.internal:8200", vault_token="hvs.x")
    with pytest.raises(VaultAuthError, match="BYOK_VAULT_ALLOW_PLAIN_HTTP"):
        make_token_source(settings)
    with pytest.raises(KeyUsageError, match="BYOK_VAULT_ALLOW_PLAIN_HTTP"):
        KeyAdmin.from_settings(settings)
    allowed = settings.model_copy(update={"vault_allow_plain_http": True})
    make_token_source(allowed)
    KeyAdmin.from_settings(allowed)


def test_invalid_settings_exit_2_naming_the_variable_never_its_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cli.main import main

    monkeypatch.setenv("BYOK_AMQP_URL", SECRETS["BYOK_AMQP_URL"])
    monkeypatch.setenv("BYOK_PREFETCH", "lots")
    assert main(["worker"]) == 2
    err = capsys.readouterr().err
    assert "BYOK_PREFETCH" in err and "invalid settings" in err
    assert "amqp-Pa55word" not in err and "lots" not in err
