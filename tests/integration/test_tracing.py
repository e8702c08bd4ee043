"""Traces end to end: a publisher's ``traceparent`` through the worker to a real OTLP/HTTP receiver and on to
the result and usage messages, with GenAI attributes equal to what the simulator served.

Real broker, OpenBao and simulator; the worker exports over OTLP/HTTP (protobuf) to ``tests.otlp``'s receiver,
configured by the standard ``OTEL_*`` variables only. Run with ``-s`` to see one exported trace as a tree.
"""

from __future__ import annotations

import secrets
import socket
import time
from typing import Any

import aio_pika
import orjson

from schemas.models import Provider
from tests.broker import BrokerTap, byok, job_body, running
from tests.conftest import Sealer
from tests.otlp import ReceivedSpan, otlp_receiver, trace_tree
from worker.broker.names import JOB_ROUTING_KEY, Topology
from worker.jobs.call_span import ChatSpan
from worker.jobs.service import Worker
from worker.jobs.tracing import TRACE_FLUSH_S
from worker.settings import Settings
from worker.testing.simulator import ProviderSimulator

KEY = "sk-trace-" + "t" * 32
AUTH_KEY = "sk-trace-auth-" + "a" * 28
MISTRAL_KEY = "TraceMistralKey0123456789abcdefXY"
PROMPT_MARK = "zebra-lantern-prompt"
"""In every prompt: no span may carry it."""
TRACESTATE = "vendor=publisher-state"


def traceparent() -> tuple[str, str, str]:
    """A publisher's context: (header, trace id, parent span id)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-01", trace_id, span_id


async def publish(settings: Settings, jobs: list[tuple[str, bytes, dict[str, Any]]]) -> None:
    names = Topology(settings.topology_prefix)
    connection = await aio_pika.connect(settings.amqp_url.get_secret_value())
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.get_exchange(names.jobs_exchange)
        for job_id, body, headers in jobs:
            await exchange.publish(aio_pika.Message(body, content_type="application/json", message_id=job_id,
                                                    headers=headers), routing_key=JOB_ROUTING_KEY)


def parsed_traceparent(headers: dict[str, Any]) -> tuple[str, str]:
    value = headers["traceparent"]
    text = value.decode() if isinstance(value, bytes) else value
    version, trace_id, span_id, flags = text.split("-")
    assert version == "00" and int(flags, 16) & 1, f"not a sampled W3C context: {text}"
    return trace_id, span_id


def one(spans: list[ReceivedSpan], **match: Any) -> ReceivedSpan:
    found = [s for s in spans if all(getattr(s, k) == v for k, v in match.items())]
    assert len(found) == 1, f"{len(found)} spans match {match}: {[(s.name, s.trace_id) for s in spans]}"
    return found[0]


async def test_a_publishers_trace_reaches_the_workers_genai_spans_and_the_results_headers(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    ws = f"ws-trace-{secrets.token_hex(3)}"
    url = {p: simulator.base_url(p) for p in Provider}
    sealed = {p: seal(ws, KEY, p, url[p]) for p in (Provider.OPENAI, Provider.ANTHROPIC)}
    sealed[Provider.MISTRAL] = seal(ws, MISTRAL_KEY, Provider.MISTRAL, url[Provider.MISTRAL])
    auth_sealed = seal(ws, AUTH_KEY, Provider.OPENAI, url[Provider.OPENAI])

    def job(job_id: str, provider: Provider, name: str, sealed_key: str | None = None) -> bytes:
        model: dict[str, Any] = {"provider": provider.value, "name": name, "base_url": url[provider]}
        if provider is not Provider.OLLAMA:
            model["sealed_key"] = sealed_key or sealed[provider]
        prompt = f"{PROMPT_MARK} for {job_id}: summarise this ticket about a jammed printer in one line"
        return job_body(job_id, ws, model, content=prompt, automation_id="tracing")

    # job id -> (provider, model): cache and reasoning tokens (OpenAI), cache reads and writes (Anthropic),
    # plain counts (Mistral, Ollama), a refused key (auth_failed).
    cases = {
        "trace-openai": (Provider.OPENAI, "sim-cached-reasoning"),
        "trace-anthropic": (Provider.ANTHROPIC, "sim-cached"),
        "trace-mistral": (Provider.MISTRAL, "mistral-small-latest"),
        "trace-ollama": (Provider.OLLAMA, "llama3.2"),
        "trace-auth": (Provider.OPENAI, "sim-auth"),
    }
    contexts = {job_id: traceparent() for job_id in cases}
    jobs = [(job_id, job(job_id, provider, name, auth_sealed if job_id == "trace-auth" else None),
             {"traceparent": contexts[job_id][0], "tracestate": TRACESTATE})
            for job_id, (provider, name) in cases.items()]
    jobs.append(("trace-fresh", job("trace-fresh", Provider.OPENAI, "gpt-4o-mini"), {}))  # no traceparent

    names = Topology(settings.topology_prefix)
    with otlp_receiver() as receiver:
        environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_SERVICE_NAME": "byok-trace-test"}
        async with running(Worker(settings, environ=environ)) as worker:
            assert worker.tracing is not None
            assert [h for h in worker.call_hooks if isinstance(h, ChatSpan)] == [worker.call_hooks[-1]], (
                "one span hook, the innermost")
            await publish(settings, jobs)
            await tap.wait_for(lambda: len(tap.results) == len(jobs) and len(tap.usage) == len(jobs) - 1)
        # The worker stopped: its tracer provider flushed every span to the receiver on the way out.
        spans = receiver.snapshot()
        exported = b"".join(receiver.bodies)
        exported_json = "".join(receiver.as_json())

    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    assert {s.resource["service.name"] for s in spans} == {"byok-trace-test"}
    results = {c.json["job_id"]: c for c in tap.results}
    usage = {c.json["job_id"]: c for c in tap.usage}
    billed = {call.model: call for call in simulator.ledger.calls if call.billed}
    assert set(billed) == {name for job_id, (_, name) in cases.items() if job_id != "trace-auth"} | {"gpt-4o-mini"}

    for job_id, (provider, name) in cases.items():
        _, trace_id, publisher_span = contexts[job_id]
        mine = [s for s in spans if s.trace_id == trace_id]
        # One trace per job, continued from the publisher's span.
        job_span = one(mine, name=f"process {names.jobs_queue}")
        assert (job_span.kind, job_span.parent_span_id) == ("CONSUMER", publisher_span)
        assert job_span.attributes["byok.job.id"] == job_id
        assert job_span.attributes["messaging.system"] == "rabbitmq"
        assert job_span.attributes["messaging.message.id"] == job_id
        chat = one(mine, name=f"chat {name}")
        assert (chat.kind, chat.parent_span_id) == ("CLIENT", job_span.span_id)
        attributes = chat.attributes
        assert attributes["gen_ai.operation.name"] == "chat"
        assert attributes["gen_ai.provider.name"] == {
            Provider.OPENAI: "openai", Provider.ANTHROPIC: "anthropic", Provider.MISTRAL: "mistral_ai",
            Provider.OLLAMA: "ollama"}[provider]
        assert attributes["gen_ai.request.model"] == name
        assert attributes["server.address"] == "127.0.0.1" and attributes["server.port"] == simulator.port
        sends = {s.name: s for s in mine if s.kind == "PRODUCER"}
        assert all(s.parent_span_id == job_span.span_id for s in sends.values())
        # The result carries the trace on: its traceparent is the worker's send span, in the publisher's trace.
        result_send = sends[f"send {names.results_exchange}"]
        assert parsed_traceparent(results[job_id].headers) == (trace_id, result_send.span_id)
        assert results[job_id].headers["tracestate"] == TRACESTATE
        if job_id == "trace-auth":
            assert (chat.status, attributes["error.type"]) == ("ERROR", "auth_failed")
            assert (job_span.status, job_span.attributes["error.type"]) == ("ERROR", "auth_failed")
            assert job_id not in usage and f"send {names.usage_exchange}" not in sends
            assert "gen_ai.usage.input_tokens" not in attributes
            continue
        assert job_span.status == "UNSET" and "error.type" not in attributes
        # The usage the simulator served, in the convention's terms: cache inside input, reasoning inside output.
        served = billed[name].usage
        assert served is not None
        expected: dict[str, int] = {
            "gen_ai.usage.input_tokens": served.input_tokens + served.cache_read_tokens + served.cache_write_tokens,
            "gen_ai.usage.output_tokens": served.output_tokens + served.reasoning_tokens,
        }
        for attribute, count in (("gen_ai.usage.cache_read.input_tokens", served.cache_read_tokens),
                                 ("gen_ai.usage.cache_creation.input_tokens", served.cache_write_tokens),
                                 ("gen_ai.usage.reasoning.output_tokens", served.reasoning_tokens)):
            if count:
                expected[attribute] = count
        assert {k: v for k, v in attributes.items() if k.startswith("gen_ai.usage.")} == expected
        assert attributes["gen_ai.response.model"] == billed[name].model
        assert attributes["byok.call.id"] == usage[job_id].json["event_id"]
        assert parsed_traceparent(usage[job_id].headers) == (trace_id, sends[f"send {names.usage_exchange}"].span_id)

    # The providers that report them did: the attributes above covered cache reads, writes and reasoning.
    openai_chat = one(spans, name="chat sim-cached-reasoning").attributes
    anthropic_chat = one(spans, name="chat sim-cached").attributes
    assert openai_chat["gen_ai.usage.cache_read.input_tokens"] > 0
    assert openai_chat["gen_ai.usage.reasoning.output_tokens"] > 0
    assert anthropic_chat["gen_ai.usage.cache_creation.input_tokens"] > 0

    # Vault: one unseal span per sealed key (a cache miss each), in a job's trace; cache hits make none. The key
    # is unsealed before the job takes a run slot, so its span is a sibling of the job's span (same parent).
    unseals = [s for s in spans if s.name == "unseal"]
    job_parents = {(s.trace_id, s.parent_span_id) for s in spans if s.kind == "CONSUMER"}
    assert len(unseals) == 4 and all(s.kind == "CLIENT" for s in unseals)
    assert all((s.trace_id, s.parent_span_id) in job_parents for s in unseals), (unseals, job_parents)

    # A job without a traceparent starts a trace of its own, which its result carries on.
    fresh = next(s for s in spans if s.kind == "CONSUMER" and s.attributes.get("byok.job.id") == "trace-fresh")
    assert fresh.parent_span_id == "" and fresh.trace_id not in {c[1] for c in contexts.values()}
    assert parsed_traceparent(results["trace-fresh"].headers)[0] == fresh.trace_id

    # Nothing of a prompt, an answer or a key in what was exported.
    for secret in (PROMPT_MARK, "sim: ", KEY, AUTH_KEY, MISTRAL_KEY, *sealed.values(), auth_sealed):
        assert secret.encode() not in exported and secret not in exported_json, "a span carries a prompt or key"

    print("\n[trace] one exported trace, as the receiver decoded it:\n"
          + trace_tree(spans, contexts["trace-openai"][1]))
    print(f"[trace] spans exported: {len(spans)} in {len(receiver.bodies)} OTLP requests")


async def test_with_no_otel_variables_there_is_no_span_and_no_hook_and_the_job_context_is_carried_as_it_came(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    ws = f"ws-untraced-{secrets.token_hex(3)}"
    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
             "sealed_key": seal(ws, KEY, Provider.OPENAI, base_url)}
    header, trace_id, publisher_span = traceparent()
    # Only a service name: no exporter is asked for, so tracing stays off.
    async with running(Worker(settings, environ={"OTEL_SERVICE_NAME": "byok-untraced"})) as worker:
        assert worker.tracing is None and not any(isinstance(h, ChatSpan) for h in worker.call_hooks)
        await publish(settings, [("untraced", job_body("untraced", ws, model),
                                  {"traceparent": header, "tracestate": TRACESTATE})])
        await tap.wait_for(lambda: len(tap.results) == 1 and len(tap.usage) == 1)
    # No span of the worker's in between: the result and usage carry the publisher's own span as parent.
    for captured in (tap.results[0], tap.usage[0]):
        assert parsed_traceparent(captured.headers) == (trace_id, publisher_span)
        assert captured.headers["tracestate"] == TRACESTATE
    assert orjson.loads(tap.results[0].body)["status"] == "succeeded"


async def test_a_collector_that_does_not_answer_costs_no_job_and_does_not_hold_the_stop(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    ws = f"ws-nocollector-{secrets.token_hex(3)}"
    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "gpt-4o-mini", "base_url": base_url,
             "sealed_key": seal(ws, KEY, Provider.OPENAI, base_url)}
    with socket.socket() as closed:  # a port nothing listens on: every export is refused
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
    worker = Worker(settings, environ={"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint})
    async with running(worker):
        await publish(settings, [(f"lost-{i}", job_body(f"lost-{i}", ws, model), {}) for i in range(20)])
        await tap.wait_for(lambda: len(tap.results) == 20)
        stopping = time.monotonic()
    stop_s = time.monotonic() - stopping
    assert all(c.json["status"] == "succeeded" for c in tap.results)
    print(f"\n[trace] worker stop with an unreachable collector: {stop_s:.2f} s")
    assert stop_s < TRACE_FLUSH_S + 3, f"the stop waited {stop_s:.1f} s on the collector"


async def test_a_job_retried_through_a_delay_queue_stays_in_one_trace(
    settings: Settings, simulator: ProviderSimulator, tap: BrokerTap, seal: Sealer
) -> None:
    """No traceparent from the publisher: the first attempt starts the trace, and the copy that waits in a delay
    queue carries it, so the second attempt is in the same trace (one trace per job)."""
    ws = f"ws-retrace-{secrets.token_hex(3)}"
    base_url = simulator.base_url(Provider.OPENAI)
    model = {"provider": "openai", "name": "sim-flaky-1", "base_url": base_url,
             "sealed_key": seal(ws, KEY, Provider.OPENAI, base_url)}
    through_delay_queue = settings.model_copy(update={"inline_retry_max_s": 0.0})
    with otlp_receiver() as receiver:
        environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}
        async with running(Worker(through_delay_queue, environ=environ)):
            await publish(settings, [("retried", job_body("retried", ws, model), {})])
            await tap.wait_for(lambda: len(tap.results) == 1)
        spans = receiver.snapshot()
    assert len(tap.delayed) == 1 and tap.results[0].json["status"] == "succeeded"
    first, second = sorted((s for s in spans if s.kind == "CONSUMER"), key=lambda s: s.start_ns)
    assert first.parent_span_id == "" and (second.trace_id, second.parent_span_id) == (first.trace_id,
                                                                                        first.span_id)
    assert parsed_traceparent(tap.delayed[0].headers) == (first.trace_id, first.span_id)
    calls = sorted((s for s in spans if s.name == "chat sim-flaky-1"), key=lambda s: s.start_ns)
    assert [(c.parent_span_id, c.status, c.attributes.get("error.type")) for c in calls] == [
        (first.span_id, "ERROR", "provider_error"), (second.span_id, "UNSET", None)]
    assert {s.resource["service.name"] for s in spans} == {"byok-worker"}, "the default service name"
    assert parsed_traceparent(tap.results[0].headers)[0] == first.trace_id


def test_an_otel_setting_the_worker_cannot_honour_stops_it_at_start_with_exit_2(settings: Settings) -> None:
    for env, named in (({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
                       ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
                        "OTEL_EXPORTER_OTLP_PROTOCOL")):
        result = byok(settings, "worker", check=False, extra_env=env)
        assert result.returncode == 2, result.stderr.decode()[-1500:]
        assert result.stderr.decode().strip().startswith(f"byok worker: {named}:"), result.stderr.decode()[-1500:]
