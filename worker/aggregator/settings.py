"""``byok aggregator``'s settings (``BYOK_*``): the shared process settings, the store and price table, the API
address, and its batching, anomaly thresholds and budgets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
from pydantic import Field, PrivateAttr, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode

from schemas.models import ErrorCode
from worker.settings import ApiTokensSettings, ConsumptionSettings, Listen, ProcessSettings, is_loopback


class AggregatorSettings(ProcessSettings, ConsumptionSettings, ApiTokensSettings):
    """Every field is read from ``BYOK_<FIELD NAME>``."""

    api_listen: Listen = "127.0.0.1:8088"
    api_allow_unauthenticated: bool = Field(
        default=False, description="serve the API without tokens on a non-loopback BYOK_API_LISTEN"
    )

    aggregator_batch_size: int = Field(default=500, ge=1, le=5000)
    aggregator_batch_wait_ms: float = Field(default=50.0, ge=0)

    spike_factor: float = Field(
        default=3.0, gt=1.0, description="hourly value above k x the mean of the active hours in the window"
    )
    spike_baseline_hours: int = Field(
        default=168, ge=1, le=24 * 31, description="trailing window of the baseline: a week holds daily patterns"
    )
    spike_min_active_hours: int = Field(
        default=6, ge=1, description="a scope with fewer active hours in the window has no baseline: no spike"
    )
    spike_floor_tokens: int = Field(default=100_000, ge=0, description="a token spike needs at least this")
    spike_floor_cost_usd: float = Field(default=5.0, ge=0, description="a cost spike needs at least this")

    model_allowlist: dict[str, list[str]] | None = Field(
        default=None,
        description='JSON {"<workspace>": ["gpt-4o*", "anthropic/claude-*"], "*": [...]}: fnmatch patterns '
        "on the model name or on provider/model; '*' applies to workspaces not listed",
    )

    error_burst_codes: Annotated[frozenset[ErrorCode], NoDecode] = frozenset(
        {ErrorCode.AUTH_FAILED, ErrorCode.QUOTA_EXHAUSTED}
    )
    error_burst_threshold: int = Field(default=5, ge=1, description="failed results of one code in the window")
    error_burst_window_s: int = Field(default=300, ge=1)

    monthly_budget_usd: float | None = Field(default=None, gt=0, description="for workspaces not listed")
    budgets: dict[str, float] = Field(default_factory=dict, description='JSON {"<workspace>": <USD a month>}')
    budgets_file: str | None = Field(default=None, description="a JSON file of the same shape as budgets")
    budget_alert_ratios: Annotated[tuple[float, ...], NoDecode] = (0.8, 1.0)

    alert_claim_s: float = Field(default=30.0, gt=0, description="lease of an alert being published")

    _resolved_budgets: dict[str, float] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _resolve_budgets(self) -> AggregatorSettings:
        budgets: dict[str, float] = {}
        if self.budgets_file:
            budgets.update(_read_budgets(self.budgets_file))
        budgets.update(self.budgets)
        self._resolved_budgets = budgets
        return self

    @model_validator(mode="after")
    def _no_open_api_off_loopback(self) -> AggregatorSettings:
        if self.api_tokens_file is None and not self.api_allow_unauthenticated and not is_loopback(self.api_listen):
            raise ValueError(
                "BYOK_API_LISTEN is not a loopback address and BYOK_API_TOKENS_FILE is unset: the API would "
                "serve every workspace to anyone; set BYOK_API_TOKENS_FILE (byok tokens create), or "
                "BYOK_API_ALLOW_UNAUTHENTICATED=true to mean it"
            )
        return self

    @field_validator("error_burst_codes", mode="before")
    @classmethod
    def _split_codes(cls, value: object) -> object:
        if isinstance(value, str):
            return frozenset(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("spike_min_active_hours")
    @classmethod
    def _history_fits_the_window(cls, value: int, info: ValidationInfo) -> int:
        window = info.data.get("spike_baseline_hours")
        if window is not None and value > window:
            raise ValueError("exceeds spike_baseline_hours (BYOK_SPIKE_BASELINE_HOURS)")
        return value

    @field_validator("budget_alert_ratios", mode="before")
    @classmethod
    def _split_ratios(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(sorted(float(part) for part in value.split(",") if part.strip()))
        return value

    @field_validator("budget_alert_ratios")
    @classmethod
    def _positive_ratios(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(ratio <= 0 for ratio in value):
            raise ValueError("budget alert ratios must be positive")
        return tuple(sorted(set(value)))

    def budget_for(self, workspace_id: str) -> float | None:
        """The workspace's monthly budget in USD: its own entry (``budgets`` over ``budgets_file``),
        else ``monthly_budget_usd``, else none."""
        return self._resolved_budgets.get(workspace_id, self.monthly_budget_usd)


def _read_budgets(path: str) -> dict[str, float]:
    # Raised as ValueError so that the loader reports it like any other setting (without the file's contents).
    try:
        loaded = orjson.loads(Path(path).read_bytes())
        if not isinstance(loaded, dict):
            raise ValueError
        return {str(k): float(v) for k, v in loaded.items()}
    except OSError as exc:
        raise ValueError(f"BYOK_BUDGETS_FILE cannot be read ({type(exc).__name__})") from None
    except (ValueError, TypeError):
        raise ValueError("BYOK_BUDGETS_FILE: expected a JSON object of workspace -> USD a month") from None
