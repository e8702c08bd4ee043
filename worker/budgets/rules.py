"""What a budget is: a workspace (or one automation of it), a limit per UTC month or day, block or alert,
an optional cap on the workspace's provider calls in flight, and (workspace-wide only) its weight in the fair
share of the workers' run slots."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.models import IDENTIFIER_PATTERN

_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


MAX_WEIGHT = 100
"""A weight above this would let one workspace hold a worker's slots for that many turns in a row."""


class Period(StrEnum):
    MONTH = "month"
    DAY = "day"


class Action(StrEnum):
    BLOCK = "block"
    ALERT = "alert"


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    workspace_id: Annotated[str, Field(pattern=IDENTIFIER_PATTERN)]
    automation_id: Annotated[str, Field(pattern=IDENTIFIER_PATTERN)] | None = None
    """None: the whole workspace."""
    limit_usd: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = None
    period: Period = Period.MONTH
    action: Action = Action.BLOCK
    max_in_flight: Annotated[int, Field(ge=1)] | None = None
    weight: Annotated[int, Field(ge=1, le=MAX_WEIGHT)] | None = None
    """Turns in each round of fair share (README, "Fair share between workspaces"); None: 1."""

    @model_validator(mode="after")
    def _something_to_enforce(self) -> Budget:
        if self.limit_usd is None and self.max_in_flight is None and self.weight is None:
            raise ValueError("a budget needs a limit (limit_usd), an in-flight cap (max_in_flight) or a weight, "
                             "or several")
        if self.weight is not None and self.automation_id is not None:
            raise ValueError("a weight is the whole workspace's: set it without an automation")
        return self

    @property
    def blocks(self) -> bool:
        """Whether the worker reserves against it before each call."""
        return self.action is Action.BLOCK and self.limit_usd is not None

    @property
    def scope(self) -> str:
        return f"{self.workspace_id}/{self.automation_id}" if self.automation_id else self.workspace_id

    def applies_to(self, workspace_id: str, automation_id: str | None) -> bool:
        return self.workspace_id == workspace_id and self.automation_id in (None, automation_id)

    def period_start(self, now: datetime) -> datetime:
        return period_start(self.period, now)

    def resets_at(self, now: datetime) -> datetime:
        return period_end(self.period, now)

    def as_json(self, now: datetime | None = None) -> dict[str, Any]:
        moment = now or datetime.now(UTC)
        return {
            "workspace_id": self.workspace_id, "automation_id": self.automation_id, "limit_usd": self.limit_usd,
            "period": self.period.value, "action": self.action.value, "max_in_flight": self.max_in_flight,
            "weight": self.weight, "period_start": self.period_start(moment).isoformat(),
            "resets_at": self.resets_at(moment).isoformat(),
        }


def period_start(period: Period, now: datetime) -> datetime:
    now = now.astimezone(UTC)
    if period is Period.DAY:
        return datetime(now.year, now.month, now.day, tzinfo=UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def period_end(period: Period, now: datetime) -> datetime:
    start = period_start(period, now)
    if period is Period.DAY:
        return start + timedelta(days=1)
    return datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)


def valid_identifier(value: str) -> bool:
    return _IDENTIFIER.fullmatch(value) is not None
