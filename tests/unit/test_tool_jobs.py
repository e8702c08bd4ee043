"""Jobs with tools and structured output through the real pipeline (``JobRunner``), against an in-process
Ollama-protocol answerer: invalid jobs get a reason a person can act on and ``attempts: 0``; the result
carries the tool calls (ids the worker made for Ollama, sent back as they are), the parsed answer and both
finish reasons; an unusable answer fails the job with ``provider_error``."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest

from schemas.conversation import MAX_IMAGE_BYTES
from schemas.models import CompletionResult, ErrorCode, Status, TokenCounts
from worker.jobs.metrics import WorkerMetrics
from worker.jobs.pipeline import Completed, Delivery, JobRunner
from worker.keys.unseal_cache import UnsealCache
from worker.providers.http_pool import HttpClientPool
from worker.settings import Settings

WEATHER = {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
ASK = {"role": "user", "content": "Weather in Paris?"}
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


class Answers:
    """Answers each chat call with the next body, keeping the requests."""

    def __init__(self, *bodies: dict[str, Any]) -> None:
        self.bodies = list(bodies)
        self.requests: list[dict[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(orjson.loads(request.content))
        return httpx.Response(200, json={"model": "llama3.2", "done": True, "prompt_eval_count": 9,
                                         "eval_count": 4, **self.bodies.pop(0)})


async def run(spec: dict[str, Any], answers: Answers | None = None, provider: str = "ollama") -> CompletionResult:
    return (await outcome_of(spec, answers, provider)).result


async def outcome_of(spec: dict[str, Any], answers: Answers | None = None, provider: str = "ollama") -> Completed:
    answers = answers or Answers()
    http = HttpClientPool(connect_timeout_s=1, read_timeout_s=1, max_connections=2,
                          transport_factory=lambda: httpx.MockTransport(answers))
    model: dict[str, Any] = {"provider": provider, "name": "llama3.2"}
    if provider != "ollama":
        model["sealed_key"] = "vault:v1:c2VhbGVk"
    body = orjson.dumps({"job_id": "j-1", "workspace_id": "ws", "model": model, "input": spec})
    # Nothing here needs a key: the decryptor is never asked.
    runner = JobRunner(Settings(), decryptor=None, http=http, cache=UnsealCache(ttl_s=1, max_entries=1),  # type: ignore[arg-type]
                       metrics=WorkerMetrics())
    outcome = await runner.run(Delivery(body=body))
    await http.aclose()
    assert isinstance(outcome, Completed)
    return outcome


INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("tool result without a call", {"messages": [ASK, {"role": "tool", "tool_call_id": "call_9", "content": "x"}]},
     "tool_call_id 'call_9' answers no open tool call"),
    ("tool name", {"messages": [ASK], "tools": [{**WEATHER, "name": "get weather"}]}, "input.tools.0.name"),
    ("parameters not an object schema", {"messages": [ASK], "tools": [{**WEATHER, "parameters": {"type": "string"}}]},
     'input.tools.0.parameters: Value error, must be a JSON Schema object with "type": "object"'),
    ("image over the cap", {"messages": [{"role": "user", "content": [
        {"type": "image", "media_type": "image/png", "data": "A" * (4 * (MAX_IMAGE_BYTES // 3 + 1))}]}]},
     f"over the cap of {MAX_IMAGE_BYTES} bytes"),
    ("unknown media type", {"messages": [{"role": "user", "content": [
        {"type": "image", "media_type": "image/tiff", "data": PNG}]}]}, "image.media_type"),
    ("tool_choice names an unknown tool", {"messages": [ASK], "tools": [WEATHER], "tool_choice": {"name": "nope"}},
     "input.tool_choice names 'nope', which is not in input.tools"),
    ("response schema not an object schema", {"messages": [ASK], "response_format": {
        "type": "json_schema", "name": "x", "schema": {"type": "array"}}}, "input.response_format.json_schema.schema"),
    ("more than 128 tools", {"messages": [ASK], "tools": [{"name": f"t{i}"} for i in range(129)]},
     "input.tools: List should have at most 128 items"),
    ("unanswered call", {"messages": [ASK, {"role": "assistant", "tool_calls": [
        {"id": "call_1", "name": "get_weather", "arguments": {}}]}, ASK]},
     "input.messages.2: tool call 'call_1' has no tool message answering it"),
    ("max_tokens true", {"messages": [ASK], "max_tokens": True}, "input.max_tokens"),
    ("ollama image by url", {"messages": [{"role": "user", "content": [{"type": "image", "url": "https://x.test/a.png"}]}]},
     "ollama cannot express an image by URL"),
]


@pytest.mark.parametrize(("spec", "reason"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
async def test_invalid_jobs_say_why_and_make_no_call(spec: dict[str, Any], reason: str) -> None:
    answers = Answers()
    result = await run(spec, answers)
    assert result.status is Status.FAILED
    assert result.error is not None
    assert (result.error.code, result.attempts) == (ErrorCode.INVALID_JOB, 0)
    assert reason in result.error.message
    assert answers.requests == []


async def test_tool_calls_reach_the_result_and_round_trip() -> None:
    answers = Answers(
        {"message": {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]}, "done_reason": "stop"},
        {"message": {"role": "assistant", "content": "18C in Paris."}, "done_reason": "stop"},
    )
    first = await run({"messages": [ASK], "tools": [WEATHER]}, answers)
    assert first.output is not None
    [call] = first.output.tool_calls
    assert call.id.startswith("call_") and (call.name, call.arguments) == ("get_weather", {"city": "Paris"})
    assert (first.output.finish_reason, first.output.provider_finish_reason) == ("tool_calls", "stop")
    assert first.attempts == 1

    # The result's calls go back as they are, with their result: the next turn answers.
    published = orjson.loads(first.model_dump_json(by_alias=True))["output"]
    spec = {"messages": [ASK, {"role": "assistant", "content": None, "tool_calls": published["tool_calls"]},
                         {"role": "tool", "tool_call_id": call.id, "content": "18C"}], "tools": [WEATHER]}
    second = await run(spec, answers)
    assert second.output is not None
    assert (second.output.text, second.output.finish_reason, second.output.tool_calls) == ("18C in Paris.", "stop", [])
    assert answers.requests[1]["messages"][2] == {"role": "tool", "content": "18C", "tool_name": "get_weather"}


async def test_structured_output_lands_parsed() -> None:
    answers = Answers({"message": {"role": "assistant", "content": '{"city": "Paris", "celsius": 18}'},
                       "done_reason": "stop"})
    schema = {"type": "object", "properties": {"city": {"type": "string"}, "celsius": {"type": "number"}}}
    result = await run({"messages": [ASK], "response_format": {"type": "json_schema", "name": "w", "schema": schema}},
                       answers)
    assert result.output is not None
    assert result.output.parsed == {"city": "Paris", "celsius": 18}
    assert answers.requests[0]["format"] == schema


async def test_unparseable_arguments_fail_with_provider_error_and_the_billed_call_counts() -> None:
    answers = Answers({"message": {"role": "assistant", "content": "", "tool_calls": [
        {"function": {"name": "get_weather", "arguments": "{not json"}}]}})
    outcome = await outcome_of({"messages": [ASK], "tools": [WEATHER]}, answers)
    result = outcome.result
    assert result.error is not None
    assert (result.status, result.error.code, result.attempts) == (Status.FAILED, ErrorCode.PROVIDER_ERROR, 1)
    assert (result.error.provider_status, result.error.retryable) == (200, False)
    assert "arguments of tool call 'get_weather' are not valid JSON" in result.error.message
    assert result.output is None
    assert outcome.dead_letter is not None and outcome.dead_letter.code is ErrorCode.PROVIDER_ERROR
    # The provider billed the call: the usage event goes out all the same, and the result shows it.
    assert outcome.usage is not None
    assert (outcome.usage.status, outcome.usage.input_tokens, outcome.usage.output_tokens) == (Status.FAILED, 9, 4)
    assert result.usage == TokenCounts(input_tokens=9, output_tokens=4)
