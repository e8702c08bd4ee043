from __future__ import annotations

from typing import Any

import orjson
import pytest
from jsonschema import Draft202012Validator
from pydantic import ValidationError

from schemas.generate import MODELS, SCHEMA_DIR, render
from schemas.models import CompletionJob, CompletionResult, UsageEvent
from tests.contract.tool_corpus import TOOL_INPUTS


def job(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "job_id": "j-1",
        "workspace_id": "ws_1",
        "model": {"provider": "openai", "name": "gpt-4o-mini", "sealed_key": "vault:v1:abcd"},
        "input": {"messages": [{"role": "user", "content": "hi"}]},
    }
    base.update(overrides)
    return base


@pytest.mark.parametrize("filename", sorted(MODELS))
def test_checked_in_json_schemas_are_current(filename: str) -> None:
    checked_in = (SCHEMA_DIR / filename).read_bytes()
    assert checked_in == render(MODELS[filename]), f"schemas/json/{filename} is stale: run `make schemas`"


def test_schema_defaults_to_v1_and_other_versions_are_refused() -> None:
    assert CompletionJob.model_validate(job()).schema_ == "byok.completion_job.v1"
    with pytest.raises(ValidationError):
        CompletionJob.model_validate(job(schema="byok.completion_job.v2"))


@pytest.mark.parametrize(
    "overrides",
    [
        {"workspace_id": "ws\n"},
        {"workspace_id": "ws 1"},
        {"workspace_id": "x" * 65},
        {"automation_id": "a/b"},
        {"job_id": ""},
        {"job_id": "j" * 129},
        {"model": {"provider": "openai", "name": "m"}},
        {"model": {"provider": "nope", "name": "m"}},
        {"model": {"provider": "openai", "name": "m", "sealed_key": "plain-text-key"}},
        {"model": {"provider": "openai", "name": "m", "sealed_key": "vault:v1:ab", "base_url": "ftp://x"}},
        {"input": {"messages": []}},
        {"input": {"messages": [{"role": "system", "content": "x"}]}},
        {"input": {"messages": [{"role": "user", "content": "x"}], "stop": "END"}},
        {"input": {"messages": [{"role": "user", "content": "x"}], "temperature": "hot"}},
        {"input": {"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}},
        {"tags": {f"k{i}": "v" for i in range(17)}},
        {"metadata": {"blob": "x" * 17_000}},
        {"deadline": "2026-01-01T00:00:00"},
        {"unknown_field": 1},
    ],
)
def test_invalid_jobs_are_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        CompletionJob.model_validate(job(**overrides))


def test_ollama_needs_no_key_and_deadlines_become_utc() -> None:
    parsed = CompletionJob.model_validate(
        job(model={"provider": "ollama", "name": "llama3"}, deadline="2026-01-01T02:00:00+02:00")
    )
    assert parsed.model.sealed_key is None
    assert parsed.deadline is not None
    assert parsed.deadline.isoformat() == "2026-01-01T00:00:00+00:00"


def test_results_and_usage_always_carry_their_schema() -> None:
    result = CompletionResult(job_id="j", workspace_id="w", status="failed", attempts=0, latency_ms=0,
                              finished_at="2026-01-01T00:00:00Z")  # type: ignore[arg-type]
    assert orjson.loads(result.model_dump_json(by_alias=True))["schema"] == "byok.completion_result.v1"
    event = UsageEvent(event_id="e", job_id="j", workspace_id="w", provider="openai", model="m",  # type: ignore[arg-type]
                       occurred_at="2026-01-01T00:00:00Z", latency_ms=1, status="succeeded")  # type: ignore[arg-type]
    dumped = orjson.loads(event.model_dump_json(by_alias=True))
    assert dumped["schema"] == "byok.usage_event.v1"
    assert dumped["occurred_at"].endswith("Z")


# ------------------------------------------------ JSON types are strict, as the JSON Schema says (#13)


def with_input(**fields: Any) -> dict[str, Any]:
    return job(input={"messages": [{"role": "user", "content": "x"}], **fields})


@pytest.mark.parametrize(
    "fields",
    [{"max_tokens": True}, {"max_tokens": "100"}, {"max_tokens": 1.5}, {"max_tokens": 100.0},
     {"temperature": "0.5"}, {"temperature": True}, {"top_p": "1"}, {"deadline": 1767225600},
     {"deadline": "1767225600"},
     {"response_format": {"type": "json_schema", "schema": {"type": "object"}, "strict": "true"}}],
)
def test_json_types_are_strict(fields: dict[str, Any]) -> None:
    job_level = {name: fields[name] for name in ("deadline",) if name in fields}
    input_level = {name: value for name, value in fields.items() if name not in job_level}
    with pytest.raises(ValidationError):
        CompletionJob.model_validate(with_input(**input_level) | job_level)


def test_integers_are_numbers_and_deadlines_stay_iso_strings() -> None:
    parsed = CompletionJob.model_validate(with_input(temperature=1, top_p=1, max_tokens=100) | {
        "deadline": "2026-01-01T00:00:00Z"})
    assert (parsed.input.temperature, parsed.input.top_p, parsed.input.max_tokens) == (1.0, 1.0, 100)
    assert parsed.deadline is not None


def test_a_v1_job_still_validates_and_dumps_as_before() -> None:
    parsed = CompletionJob.model_validate(job())
    assert parsed.input.model_dump(exclude_none=True) == {"messages": [{"role": "user", "content": "hi"}]}


def test_the_published_json_schema_agrees_with_the_models_on_tool_jobs() -> None:
    """What a publisher validates against schemas/json/ is what the worker accepts, and refuses alike."""
    validator = Draft202012Validator(orjson.loads((SCHEMA_DIR / "completion_job.v1.schema.json").read_bytes()))
    for spec in TOOL_INPUTS.values():
        CompletionJob.model_validate(job(input=spec))
        assert list(validator.iter_errors(job(input=spec))) == []
    for fields in ({"max_tokens": True}, {"max_tokens": "100"}, {"temperature": "0.5"},
                   {"tool_choice": "any"}, {"response_format": {"type": "text"}},
                   {"messages": [{"role": "user", "content": [{"type": "image", "media_type": "image/png"}]}]},
                   {"messages": [{"role": "user", "content": [
                       {"type": "image", "media_type": "image/png", "data": "aGk=", "url": "https://x.test/a.png"}]}]}):
        with pytest.raises(ValidationError):
            CompletionJob.model_validate(with_input(**fields))
        assert list(validator.iter_errors(with_input(**fields))) != []
