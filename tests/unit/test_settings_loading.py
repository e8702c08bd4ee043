"""One loader for every command: each verb loads only its settings, and a refusal is one line naming the
variable (never its value), exit status 2; a misspelled ``BYOK_*`` variable is reported by name."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from worker.aggregator.settings import AggregatorSettings
from worker.cli.common import EVERY_SETTING
from worker.settings import (
    ConsumptionSettings,
    InvalidSettings,
    ProcessSettings,
    VaultSettings,
    WorkerSettings,
    load_settings,
    unknown_settings,
)

AMQP_PASSWORD = "amqp-Pa55word-0001"


def byok(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m worker.cli`` with only the given ``BYOK_*`` variables (none inherited)."""
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("BYOK_")}
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60, check=False)


@pytest.mark.parametrize(("kind", "name", "value", "problem"), [
    (WorkerSettings, "BYOK_METRICS_LISTEN", "localhost", "host:port"),
    (WorkerSettings, "BYOK_METRICS_LISTEN", "127.0.0.1:70000", "0 to 65535"),
    (AggregatorSettings, "BYOK_API_LISTEN", "0.0.0.0:http", "host:port"),
    (ProcessSettings, "BYOK_AMQP_URL", f"amqp://byok:{AMQP_PASSWORD}@broker:notaport/", "not a URL"),
    (ProcessSettings, "BYOK_AMQP_URL", f"http://byok:{AMQP_PASSWORD}@broker/", "amqp://"),
    (ProcessSettings, "BYOK_AMQP_URL", f"{AMQP_PASSWORD}", "amqp://"),
    (ProcessSettings, "BYOK_LOG_LEVEL", "bogus", "debug, info, warning, error"),
])
def test_a_bad_value_is_refused_at_load_naming_the_variable_not_the_value(
    kind: type[ProcessSettings], name: str, value: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidSettings) as refused:
        load_settings(kind)
    message = str(refused.value)
    assert message.startswith(f"invalid settings: {name}: ")
    assert problem in message
    assert value not in message and AMQP_PASSWORD not in message


def test_log_levels_are_read_whatever_their_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOK_LOG_LEVEL", "WARNING")
    assert load_settings(ProcessSettings).log_level == "warning"


def test_each_verb_loads_only_its_own_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker-only setting gone wrong stops the worker, not ``byok keys`` or ``byok consumption``."""
    monkeypatch.setenv("BYOK_PREFETCH", "lots")
    monkeypatch.setenv("BYOK_SPIKE_FACTOR", "0.5")
    for kind in (VaultSettings, ConsumptionSettings, ProcessSettings):
        load_settings(kind)
    with pytest.raises(InvalidSettings, match=r"^invalid settings: BYOK_PREFETCH: "):
        load_settings(WorkerSettings)
    with pytest.raises(InvalidSettings, match=r"^invalid settings: BYOK_SPIKE_FACTOR: "):
        load_settings(AggregatorSettings)
    assert "vault_addr" not in ConsumptionSettings.model_fields
    assert "amqp_url" not in VaultSettings.model_fields
    assert "spike_factor" not in WorkerSettings.model_fields


def test_an_unreadable_budgets_file_is_a_settings_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOK_BUDGETS_FILE", "/nonexistent/budgets.json")
    with pytest.raises(InvalidSettings, match="BYOK_BUDGETS_FILE cannot be read"):
        load_settings(AggregatorSettings)


def test_unknown_byok_variables_are_named() -> None:
    environ = {"BYOK_ALLOWED_HOST": "api.openai.com", "BYOK_PREFETCH": "5", "byok_vault_addr": "x", "HOME": "/"}
    assert unknown_settings(EVERY_SETTING, environ) == ["BYOK_ALLOWED_HOST"]


def test_invalid_settings_are_one_line_and_exit_2_from_the_command() -> None:
    ran = byok("worker", BYOK_AMQP_URL=f"amqp://byok:{AMQP_PASSWORD}@broker:port/", BYOK_LOG_LEVEL="bogus")
    assert ran.returncode == 2
    assert ran.stderr.splitlines() == [
        "byok worker: invalid settings: BYOK_AMQP_URL: not a URL (amqp://user:password@host:5672/vhost); "
        "BYOK_LOG_LEVEL: expected one of debug, info, warning, error"
    ]
    assert AMQP_PASSWORD not in ran.stdout + ran.stderr


def test_a_listen_address_without_a_port_stops_the_aggregator_with_exit_2() -> None:
    ran = byok("aggregator", BYOK_API_LISTEN="localhost")
    assert ran.returncode == 2
    assert ran.stderr.splitlines() == [
        "byok aggregator: invalid settings: BYOK_API_LISTEN: expected host:port (port 0 for any free one)"
    ]


def test_a_misspelled_variable_is_warned_about_by_name_only() -> None:
    ran = byok("consumption", "no such workspace!", BYOK_ALOWED_HOSTS="api.openai.com", BYOK_PRICE_FILE="p.json")
    assert ran.returncode == 2  # the workspace id is refused; the warnings came first
    warnings = [line for line in ran.stderr.splitlines() if "is not a byok setting" in line]
    assert warnings == [
        "byok: warning: BYOK_ALOWED_HOSTS is not a byok setting and is ignored (misspelled?)",
        "byok: warning: BYOK_PRICE_FILE is not a byok setting and is ignored (misspelled?)",
    ]
    assert "api.openai.com" not in ran.stderr and "p.json" not in ran.stderr
