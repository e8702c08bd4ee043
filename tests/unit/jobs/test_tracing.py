"""``worker.jobs.tracing`` and ``worker.jobs.call_span``: when tracing is on, the GenAI attributes of a call, and
the spans of a failed call and a failed unseal (an in-memory exporter: what the SDK would export)."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode, Tracer
from pydantic import SecretStr

from schemas.models import CompletionJob, ErrorCode, Provider, TokenCounts
from worker.failures import JobFailure, KeyUnavailable
from worker.jobs.call_hooks import ProviderCall
from worker.jobs.call_span import ChatSpan, reply_attributes, usage_attributes
from worker.jobs.job_headers import carried_trace
from worker.jobs.tracing import TracedDecryptor, TracingConfigError, job_attributes, tracing_config
from worker.keys.endpoint import Endpoint
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


# ----------------------------------------------------------------- the spans themselves, in memory


def in_memory() -> tuple[Tracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider.get_tracer("test"), exporter


def a_call(model: str = "gpt-4o-mini") -> ProviderCall:
    job = CompletionJob.model_validate({
        "job_id": "j-1", "workspace_id": "ws", "model": {"provider": "mistral", "name": model,
                                                         "sealed_key": "vault:v1:c2VhbGVk"},
        "input": {"messages": [{"role": "user", "content": "the secret prompt"}], "temperature": 0.2}})
    return ProviderCall(job, "call-1", Endpoint.resolve(Provider.MISTRAL, None))


async def test_a_failed_call_has_its_error_code_status_error_and_no_message_or_exception_event() -> None:
    tracer, exporter = in_memory()
    with pytest.raises(JobFailure):
        async with ChatSpan(tracer)(a_call()):
            raise JobFailure(ErrorCode.AUTH_FAILED, "Incorrect API key provided: the secret prompt")
    (span,) = exporter.get_finished_spans()
    assert span.name == "chat gpt-4o-mini" and span.kind is SpanKind.CLIENT
    assert span.status.status_code is StatusCode.ERROR and not span.status.description
    assert span.attributes is not None and span.attributes["error.type"] == "auth_failed"
    assert dict(span.attributes) == {
        "gen_ai.operation.name": "chat", "gen_ai.provider.name": "mistral_ai", "gen_ai.request.model": "gpt-4o-mini",
        "server.address": "api.mistral.ai", "server.port": 443, "byok.call.id": "call-1",
        "gen_ai.request.temperature": 0.2, "error.type": "auth_failed"}
    assert not span.events, "no exception event: its message could repeat what the provider was sent"


async def test_an_answer_that_cannot_be_used_is_billed_and_marked_provider_error() -> None:
    tracer, exporter = in_memory()
    call = a_call()
    async with ChatSpan(tracer)(call):
        call.reply = ProviderReply(text="", finish_reason=None, usage=TokenCounts(input_tokens=3, output_tokens=2),
                                   unusable="the structured output is not valid JSON")
    (span,) = exporter.get_finished_spans()
    assert span.attributes is not None
    assert (span.attributes["error.type"], span.attributes["gen_ai.usage.output_tokens"]) == ("provider_error", 2)
    assert span.status.status_code is StatusCode.ERROR


class RefusingVault:
    async def decrypt(self, workspace_id: str, sealed: str, binding_b64: str) -> SecretStr:
        raise KeyUnavailable("the sealed key does not open")


async def test_an_unseal_that_fails_is_a_span_with_its_code_and_no_sealed_key_or_binding() -> None:
    tracer, exporter = in_memory()
    unsealer = TracedDecryptor(RefusingVault(), tracer, "https://vault.example:8200")
    with pytest.raises(KeyUnavailable):
        await unsealer.decrypt("acme", "vault:v1:c2VhbGVk", "YmluZGluZw==")
    (span,) = exporter.get_finished_spans()
    assert span.name == "unseal" and span.kind is SpanKind.CLIENT
    assert dict(span.attributes or {}) == {"server.address": "vault.example", "server.port": 8200,
                                           "byok.workspace.id": "acme", "byok.unseal.cache": "miss",
                                           "error.type": "key_unavailable"}
