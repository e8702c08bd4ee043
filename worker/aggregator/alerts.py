"""The alert message published to ``<prefix>.alerts`` (routing key ``<workspace_id>.<kind>``) and stored.

One alert per ``dedupe_key``: the key names the rule, its scope and its window, so an anomaly that
persists is reported once per window however many aggregators see it.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Any, Final, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field

from schemas.models import Identifier, UtcDatetime, utc_now

ALERT_SCHEMA: Final = "byok.alert.v1"


class AlertKind(StrEnum):
    SPIKE = "spike"
    UNEXPECTED_MODEL = "unexpected_model"
    ERROR_BURST = "error_burst"
    BUDGET = "budget"


class Severity(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


class Alert(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["byok.alert.v1"] = Field(default=ALERT_SCHEMA, alias="schema")
    alert_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    dedupe_key: str
    workspace_id: Identifier
    kind: AlertKind
    severity: Severity
    message: str
    window_start: UtcDatetime
    window_end: UtcDatetime
    created_at: UtcDatetime = Field(default_factory=utc_now)
    details: dict[str, Any] = Field(
        default_factory=dict, description="the numbers that triggered the alert, and the thresholds"
    )

    @property
    def routing_key(self) -> str:
        return f"{self.workspace_id}.{self.kind.value}"

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True))

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


def make_alert(
    kind: AlertKind,
    workspace_id: str,
    scope: str,
    window: tuple[datetime, datetime],
    message: str,
    details: dict[str, Any],
    *,
    severity: Severity = Severity.WARNING,
) -> Alert:
    """An alert whose dedupe key is ``<kind>:<workspace>:<scope>:<window start>``."""
    start, end = window
    return Alert(
        dedupe_key=f"{kind.value}:{workspace_id}:{scope}:{start.isoformat()}",
        workspace_id=workspace_id,
        kind=kind,
        severity=severity,
        message=message,
        window_start=start,
        window_end=end,
        details=details,
    )
