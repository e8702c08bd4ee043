"""A NUL in any string of a job that reaches the consumption store is refused at validation, naming the field;
the same characters elsewhere (the prompt, which only the provider sees) are the owner's business."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schemas.models import NUL_REFUSED, CompletionJob, UsageEvent, storable
from worker.jobs.pipeline import routing_ids, validation_reason

JOB: dict[str, Any] = {"job_id": "j-1", "workspace_id": "ws", "model": {"provider": "ollama", "name": "llama3"},
                       "input": {"messages": [{"role": "user", "content": "hi"}]}}


@pytest.mark.parametrize(("field", "patch"), [
    ("job_id", {"job_id": "j\x00"}),
    ("model.name", {"model": {"provider": "ollama", "name": "llama\x003"}}),
    ("model.base_url", {"model": {"provider": "ollama", "name": "m", "base_url": "http://h/\x00"}}),
    ("tags", {"tags": {"k\x00": "v"}}),
    ("tags", {"tags": {"k": "v\x00"}}),
    ("metadata", {"metadata": {"deep": [{"x": "\x00"}]}}),
    ("workspace_id", {"workspace_id": "ws\x00"}),
    ("automation_id", {"automation_id": "a\x00"}),
])
def test_a_nul_in_a_stored_string_is_refused_naming_the_field(field: str, patch: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as raised:
        CompletionJob.model_validate({**JOB, **patch})
    reason = validation_reason(raised.value)
    assert reason.startswith(f"{field}: ")
    assert "\x00" not in reason


def test_a_nul_in_the_prompt_is_the_providers_business() -> None:
    job = CompletionJob.model_validate({**JOB, "input": {"messages": [{"role": "user", "content": "a\x00b"}]}})
    assert job.input.messages[0].content == "a\x00b"


def test_a_nul_job_id_is_not_routable() -> None:
    assert routing_ids({"job_id": "j\x00", "workspace_id": "ws"}) is None
    assert routing_ids({"job_id": "j", "workspace_id": "ws"}) == ("j", "ws", None)


def test_usage_events_refuse_a_nul_job_id_too() -> None:
    assert not storable("a\x00") and storable("a")
    with pytest.raises(ValidationError, match="NUL"):
        UsageEvent.model_validate({"event_id": "e", "job_id": "j\x00", "workspace_id": "ws", "provider": "openai",
                                   "model": "m", "occurred_at": "2026-12-04T12:00:00Z", "latency_ms": 1,
                                   "status": "succeeded"})
    assert "NUL" in NUL_REFUSED
