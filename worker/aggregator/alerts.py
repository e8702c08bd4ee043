"""The alert message published to ``<prefix>.alerts`` (routing key ``<workspace_id>.<kind>``) and stored.

One alert per ``dedupe_key``: the key names the rule, its scope and its window, so an anomaly that
persists is reported once per window however many aggregators see it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from schemas.models import ALERT_SCHEMA, Alert, AlertKind, Severity

__all__ = ["ALERT_SCHEMA", "Alert", "AlertKind", "Severity", "make_alert"]

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
