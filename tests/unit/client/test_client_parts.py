"""``worker.client``'s parts that need no broker: result bindings, the job as published, its settings."""

from __future__ import annotations

import orjson
import pytest
from pydantic import ValidationError

from schemas.models import MAX_JOB_BYTES, CompletionJob
from worker.client.client import as_job, broker_settings, job_body
from worker.client.results import result_bindings
from worker.settings import InvalidSettings

JOB = {"job_id": "j-1", "workspace_id": "ws", "model": {"provider": "ollama", "name": "llama3"},
       "input": {"messages": [{"role": "user", "content": "hi"}]}}


def test_result_bindings_are_every_combination_with_a_wildcard_for_none() -> None:
    assert result_bindings(None, None, None) == ["*.*.*"]
    assert result_bindings("ws-a", None, "failed") == ["ws-a.*.failed"]
    assert result_bindings(["ws-b", "ws-a"], "auto", ("succeeded", "failed")) == [
        "ws-a.auto.failed", "ws-a.auto.succeeded", "ws-b.auto.failed", "ws-b.auto.succeeded"]


@pytest.mark.parametrize("bad", ["a.b", "*", "#", "", []])
def test_a_filter_cannot_widen_the_binding(bad: str | list[str]) -> None:
    with pytest.raises(ValueError, match="a filter is an identifier"):
        result_bindings(bad, None, None)


def test_a_job_is_published_with_the_fields_it_was_given_by_their_wire_names() -> None:
    body = orjson.loads(job_body(as_job(JOB)))
    assert body == JOB, "defaults (schema, tags) are not added: the worker assumes v1"
    typed = CompletionJob.model_validate({**JOB, "schema": "byok.completion_job.v1"})
    assert orjson.loads(job_body(as_job(typed)))["schema"] == "byok.completion_job.v1"
    with pytest.raises(ValidationError):
        as_job({**JOB, "workspace_id": "ws\n"})


def test_a_job_over_the_size_cap_is_refused_before_it_is_sent() -> None:
    big = as_job({**JOB, "input": {"messages": [{"role": "user", "content": "x" * MAX_JOB_BYTES}]}})
    with pytest.raises(ValueError, match=f"at most {MAX_JOB_BYTES} bytes"):
        job_body(big)


def test_settings_come_from_the_arguments_then_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BYOK_TOPOLOGY_PREFIX", "from-env")
    monkeypatch.setenv("BYOK_AMQP_URL", "amqp://u:secret-password@broker:5672/v")
    settings = broker_settings(None, None, 3)
    assert (settings.topology_prefix, settings.reconnect_max_s) == ("from-env", 3)
    assert settings.amqp_url.get_secret_value() == "amqp://u:secret-password@broker:5672/v"
    assert broker_settings("amqp://other:5672/", "given", None).topology_prefix == "given"
    monkeypatch.setenv("BYOK_AMQP_URL", "http://u:secret-password@broker/")
    with pytest.raises(InvalidSettings, match="BYOK_AMQP_URL") as refused:
        broker_settings(None, None, None)
    assert "secret-password" not in str(refused.value)
