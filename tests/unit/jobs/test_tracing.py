"""``worker.jobs.tracing`` and ``worker.jobs.call_span``: when tracing is on, and the GenAI attributes of a call."""

from __future__ import annotations

import pytest

from schemas.models import TokenCounts
from worker.jobs.call_span import reply_attributes, usage_attributes
from worker.jobs.job_headers import carried_trace
from worker.jobs.tracing import TracingConfigError, job_attributes, tracing_config
from worker.providers.base import ProviderReply


@pytest.mark.parametrize("environ", [
    {},
    {"OTEL_SERVICE_NAME": "byok"},
    {"OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod"},
    {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
    {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"},
])
def test_tracing_is_off_unless_an_exporter_is_asked_for(environ: dict[str, str]) -> None:
    assert tracing_config(environ) is None


def test_the_otlp_endpoint_gets_the_traces_path_and_the_traces_endpoint_is_used_as_it_is() -> None:
    config = tracing_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318/", "OTEL_SERVICE_NAME": "w-1"})
    assert config is not None
    assert (config.exporters, config.otlp_endpoint) == (("otlp",), "http://collector:4318/v1/traces")
    assert config.resource["service.name"] == "w-1"
    config = tracing_config({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://a:4318",
                             "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://b:4318/custom"})
    assert config is not None and config.otlp_endpoint == "http://b:4318/custom"


def test_an_exporter_alone_defaults_to_the_local_collector_and_the_service_name_to_byok_worker() -> None:
    config = tracing_config({"OTEL_TRACES_EXPORTER": "otlp,console",
                             "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=prod%20eu,team=llm"})
    assert config is not None
    assert config.exporters == ("otlp", "console")
    assert config.otlp_endpoint == "http://localhost:4318/v1/traces"
    assert config.resource == {"deployment.environment": "prod eu", "team": "llm", "service.name": "byok-worker"}


@pytest.mark.parametrize("environ", [
    {"OTEL_TRACES_EXPORTER": "zipkin"},
    {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
])
def test_what_the_worker_cannot_export_is_refused_at_start(environ: dict[str, str]) -> None:
    with pytest.raises(TracingConfigError):
        tracing_config(environ)


def test_usage_follows_the_convention_cache_inside_input_reasoning_inside_output() -> None:
    usage = TokenCounts(input_tokens=10, cache_read_tokens=20, cache_write_tokens=5, output_tokens=7,
                        reasoning_tokens=16)
    assert usage_attributes(usage) == {
        "gen_ai.usage.input_tokens": 35, "gen_ai.usage.output_tokens": 23,
        "gen_ai.usage.cache_read.input_tokens": 20, "gen_ai.usage.cache_creation.input_tokens": 5,
        "gen_ai.usage.reasoning.output_tokens": 16,
    }
    plain = TokenCounts(input_tokens=10, output_tokens=7)
    assert usage_attributes(plain) == {"gen_ai.usage.input_tokens": 10, "gen_ai.usage.output_tokens": 7}


def test_a_reply_gives_its_model_finish_reason_and_usage_and_never_its_text() -> None:
    reply = ProviderReply(text="the secret answer", finish_reason="stop", usage=TokenCounts(input_tokens=3,
                          output_tokens=4), raw_usage={"prompt_tokens": 3}, response_model="gpt-4o-mini-2024-07-18")
    attributes = reply_attributes(reply)
    assert attributes == {"gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                          "gen_ai.response.finish_reasons": ("stop",), "gen_ai.usage.input_tokens": 3,
                          "gen_ai.usage.output_tokens": 4}
    unknown = ProviderReply(text="", finish_reason=None, usage=None)
    assert reply_attributes(unknown) == {}, "no usage reported: no count made up"


def test_the_job_span_takes_ids_and_outcome_from_the_log_fields_only() -> None:
    fields = {"job_id": "j-1", "workspace_id": "acme", "automation_id": None, "status": "failed", "attempts": 2,
              "model": "gpt-4o-mini", "input_tokens": 5}
    assert job_attributes(fields) == {"byok.job.id": "j-1", "byok.workspace.id": "acme", "byok.job.status": "failed",
                                      "byok.job.attempts": 2}


def test_results_carry_only_the_jobs_trace_headers_within_bounds() -> None:
    headers = {"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01", "tracestate": "x" * 513, "CC": ["q"]}
    assert carried_trace(headers) == {"traceparent": headers["traceparent"]}
    assert carried_trace(None) == {}
