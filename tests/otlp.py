"""A real OTLP/HTTP trace receiver for tests: ``POST /v1/traces`` with an ``ExportTraceServiceRequest``
(protobuf, gzip or not), decoded with the opentelemetry-proto classes the exporter itself uses.

It runs in a thread of its own (``http.server``), so a worker in this event loop and a ``byok worker``
process export to it alike. Every request is kept as it arrived (``bodies``, for the leak scan) and as
``ReceivedSpan`` values (``spans``).
"""

from __future__ import annotations

import argparse
import gzip
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.protobuf.json_format import MessageToJson
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}
STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}


def value_of(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return tuple(value_of(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return getattr(value, kind) if kind else None


def attributes_of(pairs: Any) -> dict[str, Any]:
    return {pair.key: value_of(pair.value) for pair in pairs if isinstance(pair, KeyValue)}


@dataclass(frozen=True, slots=True)
class ReceivedSpan:
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status: str
    resource: dict[str, Any]
    scope: str
    start_ns: int


@dataclass
class OtlpReceiver:
    port: int = 0
    bodies: list[bytes] = field(default_factory=list)
    """Each export request as it arrived (decompressed)."""
    spans: list[ReceivedSpan] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    keep_bodies: bool = True
    """False (a long benchmark): requests are decoded and counted, neither bytes nor spans kept."""
    requests: int = 0
    span_count: int = 0

    @property
    def endpoint(self) -> str:
        """For ``OTEL_EXPORTER_OTLP_ENDPOINT`` (the exporter appends ``/v1/traces``)."""
        return f"http://127.0.0.1:{self.port}"

    def receive(self, path: str, body: bytes) -> None:
        request = ExportTraceServiceRequest.FromString(body)
        found = []
        for resource_spans in request.resource_spans:
            resource = attributes_of(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    found.append(ReceivedSpan(
                        name=span.name, kind=KINDS.get(span.kind, str(span.kind)), trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(), parent_span_id=span.parent_span_id.hex(),
                        attributes=attributes_of(span.attributes), status=STATUS.get(span.status.code, "?"),
                        resource=resource, scope=scope_spans.scope.name, start_ns=span.start_time_unix_nano,
                    ))
        with self.lock:
            self.requests += 1
            self.span_count += len(found)
            if self.keep_bodies:
                self.paths.append(path)
                self.bodies.append(body)
                self.spans.extend(found)

    def snapshot(self) -> list[ReceivedSpan]:
        with self.lock:
            return list(self.spans)

    def as_json(self) -> list[str]:
        """Each export request rendered by protobuf's own JSON printer (ids in base64, as OTLP/JSON has them)."""
        with self.lock:
            return [MessageToJson(ExportTraceServiceRequest.FromString(body)) for body in self.bodies]


def _handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            """``/stats``: how many export requests and spans arrived (for a receiver in another process)."""
            if self.path != "/stats":
                self.send_error(404)
                return
            with receiver.lock:
                answer = json.dumps({"requests": receiver.requests, "spans": receiver.span_count}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            if self.headers.get("content-encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path != "/v1/traces" or self.headers.get("content-type") != "application/x-protobuf":
                self.send_error(404 if self.path != "/v1/traces" else 415)
                return
            receiver.receive(self.path, body)
            answer = ExportTraceServiceResponse().SerializeToString()
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@contextmanager
def otlp_receiver(port: int = 0, *, keep_bodies: bool = True) -> Iterator[OtlpReceiver]:
    receiver = OtlpReceiver(keep_bodies=keep_bodies)
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(receiver))
    server.daemon_threads = True
    receiver.port = int(server.server_address[1])
    thread = threading.Thread(target=server.serve_forever, name="otlp-receiver", daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def trace_tree(spans: list[ReceivedSpan], trace_id: str) -> str:
    """One trace as an indented tree: name, kind, status and attributes of each span."""
    members = [s for s in spans if s.trace_id == trace_id]
    ids = {s.span_id for s in members}
    children: dict[str, list[ReceivedSpan]] = {}
    for span in sorted(members, key=lambda s: s.start_ns):
        children.setdefault(span.parent_span_id if span.parent_span_id in ids else "", []).append(span)
    services = sorted({str(s.resource.get("service.name")) for s in members})
    lines = [f"trace {trace_id} (service.name {', '.join(services)})"]

    def walk(parent: str, depth: int) -> None:
        for span in children.get(parent, []):
            parent_note = f" parent={span.parent_span_id}" if depth == 0 and span.parent_span_id else ""
            lines.append(f"{'  ' * (depth + 1)}{span.name} [{span.kind}, {span.status}] span={span.span_id}"
                         f"{parent_note}")
            for key, value in sorted(span.attributes.items()):
                lines.append(f"{'  ' * (depth + 2)}{key} = {value!r}")
            walk(span.span_id, depth + 1)

    walk("", 0)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.otlp --port N``: a receiver in a process of its own (the benchmark's), until killed."""
    parser = argparse.ArgumentParser(prog="python -m tests.otlp")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    with otlp_receiver(args.port, keep_bodies=False):
        threading.Event().wait()


if __name__ == "__main__":
    main()
