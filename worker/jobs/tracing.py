"""The worker's traces: OpenTelemetry, on only when the standard ``OTEL_*`` variables ask for it.

``tracing_config`` returns None when no exporter is configured (no ``OTEL_TRACES_EXPORTER``, no
``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), when ``OTEL_TRACES_EXPORTER`` is
``none`` or when ``OTEL_SDK_DISABLED`` is ``true``: the worker then makes no span object and adds no call hook,
and a job costs what it cost before. Otherwise one trace per job, continued from its W3C ``traceparent`` /
``tracestate`` headers:

    process <jobs queue>         CONSUMER  one per delivery
      chat <model>               CLIENT    one per provider call (``worker.jobs.call_span``)
      send <exchange>            PRODUCER  each result, reply and usage event; its context is the
                                           ``traceparent`` header of the message it sends
    unseal                       CLIENT    a Vault transit decrypt (an unseal-cache miss only), made while
                                           the job waits for its key, before it takes a run slot: in the
                                           job's trace, a sibling of its ``process`` span

Spans carry names, ids, counts and error codes only: never a prompt, an output, a key, a token or a sealed
key. The tracer provider is the worker's own (not the process-global one), exports in batches from a thread
of its own, and is flushed and shut down when the worker stops.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer, get_current_span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from pydantic import SecretStr

from worker.broker.names import TRACE_HEADERS
from worker.failures import JobFailure
from worker.keys.transit import Decryptor

DEFAULT_SERVICE_NAME = "byok-worker"
DEFAULT_OTLP_ENDPOINT = "http://localhost:4318"
EXPORTERS = frozenset({"otlp", "console", "none"})
OTLP_PROTOCOL = "http/protobuf"
W3C = TraceContextTextMapPropagator()
TRACE_FLUSH_S = 3.0
"""How long a stopping worker waits for its last spans to be exported before it drops them."""
DEFAULT_EXCHANGE = "amq.default"
"""What messaging conventions call the nameless default exchange (a reply to a queue goes through it)."""


class TracingConfigError(ValueError):
    """An ``OTEL_*`` variable asks for something the worker cannot do (an unknown exporter, OTLP over gRPC)."""


@dataclass(frozen=True, slots=True)
class TracingConfig:
    exporters: tuple[str, ...]
    """``otlp`` and/or ``console``."""
    otlp_endpoint: str
    """The full URL spans are posted to (OTLP/HTTP, protobuf)."""
    resource: dict[str, str]


def tracing_config(environ: Mapping[str, str]) -> TracingConfig | None:
    """What the standard variables ask for; None when tracing is off."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    named = tuple(e.strip().lower() for e in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if e.strip())
    endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    if not endpoint and environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip():
        endpoint = environ["OTEL_EXPORTER_OTLP_ENDPOINT"].strip().rstrip("/") + "/v1/traces"
    if not named and not endpoint:
        return None
    exporters = tuple(e for e in (named or ("otlp",)) if e != "none")
    unknown = set(exporters) - EXPORTERS
    if unknown:
        raise TracingConfigError(f"OTEL_TRACES_EXPORTER: otlp or console, not {sorted(unknown)}")
    if not exporters:
        return None
    protocol = (environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
                or OTLP_PROTOCOL).strip()
    if "otlp" in exporters and protocol != OTLP_PROTOCOL:
        raise TracingConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: the worker exports {OTLP_PROTOCOL}, not {protocol}")
    return TracingConfig(exporters, endpoint or DEFAULT_OTLP_ENDPOINT + "/v1/traces", _resource(environ))


def _resource(environ: Mapping[str, str]) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``k=v,…``, values URL-encoded), ``service.name`` from ``OTEL_SERVICE_NAME``."""
    attributes: dict[str, str] = {}
    for pair in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip():
            attributes[key.strip()] = unquote(value.strip())
    service = environ.get("OTEL_SERVICE_NAME", "").strip()
    attributes["service.name"] = service or attributes.get("service.name") or DEFAULT_SERVICE_NAME
    return attributes


def _exporter(name: str, config: TracingConfig) -> SpanExporter:
    if name == "console":
        return ConsoleSpanExporter()
    # Headers, timeout, compression and certificates: the exporter reads their OTEL_EXPORTER_OTLP_* itself.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=config.otlp_endpoint)


def failed(span: Span, error_type: str) -> None:
    """A span that ended in failure: ``error.type`` (our error code) and status ERROR, no message (a provider's
    error text may repeat what it was sent)."""
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR))


def error_type(exc: BaseException) -> str:
    return exc.code.value if isinstance(exc, JobFailure) else type(exc).__qualname__


def _text(value: Any) -> str | None:
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value if isinstance(value, str) else None


def trace_carrier(headers: Mapping[str, Any]) -> dict[str, str]:
    """A message's ``traceparent`` / ``tracestate`` headers as text."""
    carrier = {}
    for name in TRACE_HEADERS:
        value = _text(headers.get(name))
        if value is not None:
            carrier[name] = value
    return carrier


class Tracing:
    """The worker's tracer provider and the spans of a job (``worker.jobs.call_span`` makes the provider call's)."""

    def __init__(self, provider: TracerProvider, exporters: tuple[SpanExporter, ...] = ()) -> None:
        self._provider = provider
        self._exporters = exporters
        self.tracer: Tracer = provider.get_tracer("byok.worker")

    @classmethod
    def start(cls, config: TracingConfig) -> Tracing:
        """The tracer provider and its export thread: what ``shutdown`` stops."""
        provider = TracerProvider(resource=Resource.create(config.resource))
        exporters = tuple(_exporter(name, config) for name in config.exporters)
        for exporter in exporters:
            provider.add_span_processor(BatchSpanProcessor(exporter))
        return cls(provider, exporters)

    def shutdown(self, flush_s: float = TRACE_FLUSH_S) -> None:
        """Export what is still queued and stop the export thread (blocking: call it off the event loop).

        A collector that does not answer would hold the stop for the exporter's retries (up to its 10 s timeout,
        and the SDK's flush takes no time limit): after ``flush_s`` the exporters are shut, which ends their
        retrying, and what is left is dropped."""
        cut_off = threading.Timer(flush_s, self._stop_exporting)
        cut_off.daemon = True
        cut_off.start()
        try:
            self._provider.shutdown()
        finally:
            cut_off.cancel()

    def _stop_exporting(self) -> None:
        for exporter in self._exporters:
            exporter.shutdown()

    @contextmanager
    def consuming(self, headers: Mapping[str, Any], queue: str, message_id: str | None,
                  body_size: int) -> Iterator[Span]:
        """The job's span, the current one while the job runs: a child of the publisher's ``traceparent``."""
        parent = W3C.extract(trace_carrier(headers))
        attributes: dict[str, str | int] = {
            "messaging.system": "rabbitmq", "messaging.operation.type": "process",
            "messaging.operation.name": "process", "messaging.destination.name": queue,
            "messaging.message.body.size": body_size,
        }
        if message_id:
            attributes["messaging.message.id"] = message_id
        with self.tracer.start_as_current_span(
            f"process {queue}", context=parent, kind=SpanKind.CONSUMER, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except BaseException as exc:
                failed(span, error_type(exc))
                raise

    @contextmanager
    def sending(self, exchange: str, routing_key: str, message_id: str | None) -> Iterator[dict[str, Any]]:
        """A PRODUCER span around one publish; yields the headers that carry its context on the message."""
        destination = exchange or DEFAULT_EXCHANGE
        attributes = {
            "messaging.system": "rabbitmq", "messaging.operation.type": "send", "messaging.operation.name": "send",
            "messaging.destination.name": destination, "messaging.rabbitmq.destination.routing_key": routing_key,
        }
        if message_id:
            attributes["messaging.message.id"] = message_id
        with self.tracer.start_as_current_span(
            f"send {destination}", kind=SpanKind.PRODUCER, attributes=attributes,
            record_exception=False, set_status_on_exception=False,
        ) as span:
            headers: dict[str, Any] = {}
            W3C.inject(headers)
            try:
                yield headers
            except BaseException as exc:
                failed(span, error_type(exc))
                raise

    @staticmethod
    def job_outcome(fields: Mapping[str, Any], error_code: str | None) -> None:
        """The current job span's ids and outcome (from a settled job's log fields)."""
        span = get_current_span()
        span.set_attributes(job_attributes(fields))
        if error_code is not None:
            failed(span, error_code)

    @staticmethod
    @contextmanager
    def continued(headers: Mapping[str, Any]) -> Iterator[None]:
        """The publisher's context current, without a span of its own: what a job does before its ``process``
        span starts (its key's unseal) lands in the job's trace."""
        token = otel_context.attach(W3C.extract(trace_carrier(headers)))
        try:
            yield
        finally:
            otel_context.detach(token)

    @staticmethod
    def carry_current(headers: dict[str, Any]) -> None:
        """The current span's context on a message that has no ``traceparent`` of its own (a job retried
        through a delay queue comes back into the same trace)."""
        if "traceparent" not in headers:
            W3C.inject(headers)

    def traced_decryptor(self, inner: Decryptor, vault_addr: str) -> Decryptor:
        return TracedDecryptor(inner, self.tracer, vault_addr)


def job_attributes(fields: Mapping[str, Any]) -> dict[str, str | int]:
    """The job span's ids and outcome, from a settled job's log fields (ids, status, code, attempts)."""
    names = {"job_id": "byok.job.id", "workspace_id": "byok.workspace.id", "automation_id": "byok.automation.id",
             "status": "byok.job.status", "attempts": "byok.job.attempts"}
    return {attribute: fields[key] for key, attribute in names.items() if isinstance(fields.get(key), str | int)}


class TracedDecryptor:
    """A decryptor whose every call is an ``unseal`` span. The unseal cache calls it on a miss only, so a
    cached key costs no span."""

    def __init__(self, inner: Decryptor, tracer: Tracer, vault_addr: str) -> None:
        self._inner = inner
        self._tracer = tracer
        parts = urlsplit(vault_addr)
        self._server: dict[str, str | int] = {"server.address": parts.hostname or ""}
        if parts.port is not None:
            self._server["server.port"] = parts.port

    async def decrypt(self, workspace_id: str, sealed: str, binding_b64: str) -> SecretStr:
        attributes = {**self._server, "byok.workspace.id": workspace_id, "byok.unseal.cache": "miss"}
        with self._tracer.start_as_current_span(
            "unseal", kind=SpanKind.CLIENT, attributes=attributes, record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                return await self._inner.decrypt(workspace_id, sealed, binding_b64)
            except BaseException as exc:
                failed(span, error_type(exc))
                raise


__all__ = ["Tracing", "TracingConfig", "TracingConfigError", "job_attributes", "trace_carrier", "tracing_config"]
