"""Each provider's usage object, as the provider sends it, mapped into the five non-overlapping buckets."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.models import Provider, TokenCounts
from worker.providers import ADAPTERS
from worker.providers.anthropic import anthropic_usage
from worker.providers.chat_completions import openai_usage
from worker.providers.mistral import mistral_usage


def openai_response(usage: dict[str, Any] | None, content: Any = "Hello!") -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "chatcmpl-B9MHDbslfkBeAs8l4bebGdFOJ6PeG",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "gpt-4o-2024-08-06",
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "refusal": None, "annotations": []},
            "logprobs": None,
            "finish_reason": "stop",
        }],
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035",
    }
    if usage is not None:
        body["usage"] = usage
    return body


def mistral_response(usage: dict[str, Any] | None, content: Any = "Hello!") -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "cmpl-e5cc70bb28c444948073e77776eb30ef",
        "object": "chat.completion",
        "model": "mistral-small-latest",
        "created": 1702256327,
        "choices": [{
            "index": 0,
            "message": {"content": content, "tool_calls": None, "prefix": False, "role": "assistant"},
            "finish_reason": "stop",
        }],
    }
    if usage is not None:
        body["usage"] = usage
    return body


def anthropic_response(usage: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": "Hi! My name is Claude."}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
    }
    if usage is not None:
        body["usage"] = usage
    return body


def ollama_response(**counters: int) -> dict[str, Any]:
    return {
        "model": "llama3.2",
        "created_at": "2023-12-12T14:13:43.416799Z",
        "message": {"role": "assistant", "content": "Hello! How are you today?"},
        "done": True,
        "done_reason": "stop",
        **counters,
    }


CHAT_TOOL_CALLS = [{"id": "call_Paris7xQ", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]


def tool_call_response(body: dict[str, Any], calls: list[dict[str, Any]]) -> dict[str, Any]:
    choice = body["choices"][0]
    message = {**choice["message"], "content": None, "tool_calls": calls}
    return {**body, "choices": [{**choice, "message": message, "finish_reason": "tool_calls"}]}


OLLAMA_COUNTERS = {
    "total_duration": 5191566416, "load_duration": 2154458, "prompt_eval_count": 26,
    "prompt_eval_duration": 383809000, "eval_count": 298, "eval_duration": 4799921000,
}

CASES: list[tuple[str, Provider, dict[str, Any], TokenCounts]] = [
    ("openai plain", Provider.OPENAI, openai_response({
        "prompt_tokens": 1117, "completion_tokens": 46, "total_tokens": 1163,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }), TokenCounts(input_tokens=1117, output_tokens=46)),
    ("openai cached + reasoning", Provider.OPENAI, openai_response({
        "prompt_tokens": 1843, "completion_tokens": 1234, "total_tokens": 3077,
        "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 1024, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }), TokenCounts(input_tokens=819, cache_read_tokens=1024, output_tokens=210, reasoning_tokens=1024)),
    ("openai-compatible, no details", Provider.OPENAI, openai_response(
        {"prompt_tokens": 12, "completion_tokens": 7, "total_tokens": 19}),
     TokenCounts(input_tokens=12, output_tokens=7)),
    ("openai-compatible with cache writes", Provider.OPENAI, openai_response({
        "prompt_tokens": 100, "completion_tokens": 5, "total_tokens": 105,
        "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 30},
    }), TokenCounts(input_tokens=10, cache_read_tokens=60, cache_write_tokens=30, output_tokens=5)),
    ("openai null details", Provider.OPENAI, openai_response({
        "prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12,
        "prompt_tokens_details": None, "completion_tokens_details": None,
    }), TokenCounts(input_tokens=9, output_tokens=3)),
    ("mistral", Provider.MISTRAL, mistral_response(
        {"prompt_tokens": 16, "completion_tokens": 34, "total_tokens": 50}),
     TokenCounts(input_tokens=16, output_tokens=34)),
    ("mistral cached", Provider.MISTRAL, mistral_response({
        "prompt_tokens": 2000, "completion_tokens": 30, "total_tokens": 2030,
        "prompt_tokens_details": {"cached_tokens": 1500},
    }), TokenCounts(input_tokens=500, cache_read_tokens=1500, output_tokens=30)),
    ("mistral num_cached_tokens", Provider.MISTRAL, mistral_response({
        "prompt_tokens": 40, "completion_tokens": 2, "total_tokens": 42, "num_cached_tokens": 32,
    }), TokenCounts(input_tokens=8, cache_read_tokens=32, output_tokens=2)),
    ("anthropic cache write", Provider.ANTHROPIC, anthropic_response({
        "input_tokens": 2095, "output_tokens": 503,
        "cache_creation_input_tokens": 2051, "cache_read_input_tokens": 0,
        "cache_creation": {"ephemeral_5m_input_tokens": 2051, "ephemeral_1h_input_tokens": 0},
        "service_tier": "standard",
    }), TokenCounts(input_tokens=2095, cache_write_tokens=2051, output_tokens=503)),
    ("anthropic cache read", Provider.ANTHROPIC, anthropic_response({
        "input_tokens": 12, "output_tokens": 80,
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": 2051,
    }), TokenCounts(input_tokens=12, cache_read_tokens=2051, output_tokens=80)),
    ("anthropic, older shape without cache fields", Provider.ANTHROPIC, anthropic_response(
        {"input_tokens": 10, "output_tokens": 25}), TokenCounts(input_tokens=10, output_tokens=25)),
    ("anthropic null cache fields", Provider.ANTHROPIC, anthropic_response({
        "input_tokens": 10, "output_tokens": 25,
        "cache_creation_input_tokens": None, "cache_read_input_tokens": None,
    }), TokenCounts(input_tokens=10, output_tokens=25)),
    ("ollama", Provider.OLLAMA, ollama_response(**OLLAMA_COUNTERS),
     TokenCounts(input_tokens=26, output_tokens=298)),
    ("ollama prompt from cache (no prompt_eval_count)", Provider.OLLAMA, ollama_response(eval_count=7),
     TokenCounts(output_tokens=7)),
    # Tool calls and images change nothing in the mapping: tool definitions and images are input.
    ("openai tool calls", Provider.OPENAI, tool_call_response(openai_response({
        "prompt_tokens": 1582, "completion_tokens": 61, "total_tokens": 1643,
        "prompt_tokens_details": {"cached_tokens": 1280, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
    }), CHAT_TOOL_CALLS), TokenCounts(input_tokens=302, cache_read_tokens=1280, output_tokens=61)),
    ("mistral tool calls", Provider.MISTRAL, tool_call_response(mistral_response(
        {"prompt_tokens": 94, "completion_tokens": 40, "total_tokens": 134}), CHAT_TOOL_CALLS),
     TokenCounts(input_tokens=94, output_tokens=40)),
    ("anthropic tool use", Provider.ANTHROPIC, {**anthropic_response({
        "input_tokens": 472, "output_tokens": 91, "cache_creation_input_tokens": 1024, "cache_read_input_tokens": 0,
    }), "content": [{"type": "tool_use", "id": "toolu_01A", "name": "get_weather", "input": {"city": "Paris"}}],
        "stop_reason": "tool_use"}, TokenCounts(input_tokens=472, cache_write_tokens=1024, output_tokens=91)),
    ("ollama tool calls", Provider.OLLAMA, {**ollama_response(prompt_eval_count=170, eval_count=38), "message": {
        "role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                         "arguments": {"city": "Paris"}}}]}},
     TokenCounts(input_tokens=170, output_tokens=38)),
]


@pytest.mark.parametrize(("provider", "body", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_usage_maps_into_the_five_buckets(provider: Provider, body: dict[str, Any], expected: TokenCounts) -> None:
    reply = ADAPTERS[provider].parse_response(body)
    assert reply.usage == expected
    assert (reply.finish_reason == "tool_calls") == bool(reply.tool_calls)
    assert reply.raw_usage is not None
    if provider is not Provider.OLLAMA:
        assert reply.raw_usage == body["usage"], "raw_usage is the provider's usage object as sent"


def test_ollama_raw_usage_is_its_counters() -> None:
    reply = ADAPTERS[Provider.OLLAMA].parse_response(ollama_response(**OLLAMA_COUNTERS))
    assert reply.raw_usage == OLLAMA_COUNTERS
    assert reply.text == "Hello! How are you today?"
    assert reply.finish_reason == "stop"


@pytest.mark.parametrize(
    ("provider", "body"),
    [(Provider.OPENAI, openai_response(None)), (Provider.MISTRAL, mistral_response(None)),
     (Provider.ANTHROPIC, anthropic_response(None)), (Provider.OLLAMA, ollama_response()),
     (Provider.OPENAI, {**openai_response(None), "usage": None})],
)
def test_no_usage_is_none_never_zero(provider: Provider, body: dict[str, Any]) -> None:
    reply = ADAPTERS[provider].parse_response(body)
    assert reply.usage is None
    assert reply.raw_usage is None
    assert reply.text


def test_text_and_finish_reason() -> None:
    assert ADAPTERS[Provider.ANTHROPIC].parse_response(anthropic_response(None)).text == "Hi! My name is Claude."
    chunks = [{"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]},
              {"type": "text", "text": "Paris."}]
    reply = ADAPTERS[Provider.MISTRAL].parse_response(mistral_response(None, content=chunks))
    assert (reply.text, reply.finish_reason) == ("Paris.", "stop")
    anthropic_body = anthropic_response(None)
    anthropic_body["content"] = [{"type": "thinking", "thinking": "...", "signature": "x"},
                                 {"type": "text", "text": "a"}, {"type": "text", "text": "b"}]
    anthropic_body["stop_reason"] = "max_tokens"
    reply = ADAPTERS[Provider.ANTHROPIC].parse_response(anthropic_body)
    # finish_reason is normalised (#14); the provider's own value is kept beside it.
    assert (reply.text, reply.finish_reason, reply.provider_finish_reason) == ("ab", "length", "max_tokens")


@pytest.mark.parametrize(
    ("provider", "body"),
    [(Provider.OPENAI, {"object": "chat.completion", "choices": []}),
     (Provider.ANTHROPIC, {"type": "message", "content": "not a list"}),
     (Provider.OLLAMA, {"done": True})],
)
def test_malformed_responses_are_refused(provider: Provider, body: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - call.py maps ValueError to provider_error
        ADAPTERS[provider].parse_response(body)


# ------------------------------------------------------------------ the buckets add up (property)

counts = st.integers(min_value=0, max_value=10_000_000)


@st.composite
def openai_usages(draw: st.DrawFn) -> dict[str, Any]:
    prompt, completion = draw(counts), draw(counts)
    cached = draw(st.integers(min_value=0, max_value=prompt))
    reasoning = draw(st.integers(min_value=0, max_value=completion))
    return {
        "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": reasoning, "audio_tokens": 0},
    }


@given(openai_usages())
def test_openai_buckets_add_up_to_total_tokens(raw: dict[str, Any]) -> None:
    usage = openai_usage(raw)
    assert usage.total == raw["total_tokens"]
    assert usage.cache_read_tokens == raw["prompt_tokens_details"]["cached_tokens"]
    assert usage.reasoning_tokens == raw["completion_tokens_details"]["reasoning_tokens"]


@given(counts, counts, counts, counts)
def test_openai_inconsistent_details_never_exceed_total(
    prompt: int, completion: int, cached: int, reasoning: int
) -> None:
    raw = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
           "prompt_tokens_details": {"cached_tokens": cached},
           "completion_tokens_details": {"reasoning_tokens": reasoning}}
    assert openai_usage(raw).total == prompt + completion


@given(counts, counts, st.one_of(st.none(), counts))
def test_mistral_buckets_add_up_to_total_tokens(prompt: int, completion: int, cached: int | None) -> None:
    raw: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion,
                           "total_tokens": prompt + completion}
    if cached is not None:
        raw["prompt_tokens_details"] = {"cached_tokens": min(cached, prompt)}
    usage = mistral_usage(raw)
    assert usage.total == raw["total_tokens"]
    assert usage.reasoning_tokens == 0


@given(counts, counts, counts, counts)
def test_anthropic_buckets_add_up_to_its_four_counters(inp: int, out: int, write: int, read: int) -> None:
    raw = {"input_tokens": inp, "output_tokens": out,
           "cache_creation_input_tokens": write, "cache_read_input_tokens": read}
    usage = anthropic_usage(raw)
    assert usage.total == inp + out + write + read
    assert (usage.input_tokens, usage.cache_write_tokens, usage.cache_read_tokens) == (inp, write, read)


def test_the_tool_call_fixtures_carry_their_call() -> None:
    tool_cases = [case for case in CASES if "tool" in case[0]]
    assert len(tool_cases) == 4
    for _, provider, body, _ in tool_cases:
        reply = ADAPTERS[provider].parse_response(body)
        assert [(c.name, c.arguments) for c in reply.tool_calls] == [("get_weather", {"city": "Paris"})]
        assert reply.finish_reason == "tool_calls"
