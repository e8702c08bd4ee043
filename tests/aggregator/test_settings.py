"""The aggregator's ``BYOK_*`` settings as an operator writes them."""

from __future__ import annotations

from pathlib import Path

import pytest

from schemas.models import ErrorCode
from worker.aggregator.settings import AggregatorSettings
from worker.settings import InvalidSettings, load_settings


def load_aggregator_settings() -> AggregatorSettings:
    return load_settings(AggregatorSettings)


def test_settings_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    budgets = tmp_path / "budgets.json"
    budgets.write_text('{"acme": 250, "beta": 40.5}')
    for name, value in {
        "BYOK_BUDGETS_FILE": str(budgets),
        "BYOK_BUDGETS": '{"beta": 99}',
        "BYOK_MONTHLY_BUDGET_USD": "10",
        "BYOK_BUDGET_ALERT_RATIOS": "1.0, 0.5,0.8",
        "BYOK_SPIKE_FACTOR": "4",
        "BYOK_SPIKE_FLOOR_TOKENS": "5000",
        "BYOK_MODEL_ALLOWLIST": '{"acme": ["gpt-4o*"], "*": ["*"]}',
        "BYOK_ERROR_BURST_CODES": "auth_failed,rate_limited",
        "BYOK_AGGREGATOR_BATCH_SIZE": "200",
    }.items():
        monkeypatch.setenv(name, value)
    settings = load_aggregator_settings()
    assert [settings.budget_for(ws) for ws in ("acme", "beta", "gamma")] == [250.0, 99.0, 10.0]
    assert settings.budget_alert_ratios == (0.5, 0.8, 1.0)
    assert (settings.spike_factor, settings.spike_floor_tokens) == (4.0, 5000)
    assert settings.model_allowlist == {"acme": ["gpt-4o*"], "*": ["*"]}
    assert settings.error_burst_codes == frozenset({ErrorCode.AUTH_FAILED, ErrorCode.RATE_LIMITED})
    assert settings.aggregator_batch_size == 200


def test_defaults_have_no_budget_and_burst_on_auth_and_quota(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("BYOK_MONTHLY_BUDGET_USD", "BYOK_BUDGETS", "BYOK_BUDGETS_FILE", "BYOK_ERROR_BURST_CODES"):
        monkeypatch.delenv(name, raising=False)
    settings = load_aggregator_settings()
    assert settings.budget_for("acme") is None
    assert settings.error_burst_codes == frozenset({ErrorCode.AUTH_FAILED, ErrorCode.QUOTA_EXHAUSTED})
    assert settings.budget_alert_ratios == (0.8, 1.0)


@pytest.mark.parametrize(
    ("name", "value"),
    [("BYOK_ERROR_BURST_CODES", "auth_failed,teapot"), ("BYOK_BUDGET_ALERT_RATIOS", "0.8,-1"),
     ("BYOK_SPIKE_FACTOR", "1")],
)
def test_bad_values_are_refused(name: str, value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(InvalidSettings, match=name):
        load_aggregator_settings()
