"""What a hostile endpoint's reply can carry into a result: the job's own key (scrubbed from every part of
the reply) and time (one provider call is bounded, request to last byte)."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from schemas.models import Provider
from tests.unit.providers.test_adapters import KEY, OPAQUE_KEY, endpoint, make_job
from worker.jobs.metrics import WorkerMetrics
from worker.jobs.pipeline import Completed, Delivery, JobRunner
from worker.jobs.retry import RetryPolicy
from worker.keys.unseal_cache import UnsealCache
from worker.providers import ADAPTERS
from worker.providers.base import ProviderReply
from worker.providers.call import call_provider, scrub_reply
from worker.providers.http_pool import HttpClientPool
from worker.redaction import REDACTED
from worker.settings import Settings


@dataclasses.dataclass(frozen=True)
class ToolCall:
    """The shape a tool call will likely take in a reply: a name and JSON arguments."""

    name: str
    arguments: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ReplyWithTools(ProviderReply):
    tool_calls: tuple[ToolCall, ...] = ()


def test_the_key_is_scrubbed_from_every_string_of_the_reply() -> None:
    reply = ReplyWithTools(
        text=f"your key is {OPAQUE_KEY}, again: {OPAQUE_KEY}", finish_reason=f"stop {OPAQUE_KEY}", usage=None,
        raw_usage={"prompt_tokens": 3, "note": [f"k={OPAQUE_KEY}"], OPAQUE_KEY: 1},
        tool_calls=(ToolCall(f"fn_{OPAQUE_KEY}", {"q": {"deep": f"Bearer {OPAQUE_KEY}"}, "n": 2}),),
    )
    scrubbed = scrub_reply(reply, OPAQUE_KEY)
    assert OPAQUE_KEY not in repr(scrubbed)
    assert isinstance(scrubbed, ReplyWithTools)
    assert scrubbed.text == f"your key is {REDACTED}, again: {REDACTED}"
    assert scrubbed.finish_reason == f"stop {REDACTED}"
    assert scrubbed.raw_usage == {"prompt_tokens": 3, "note": [f"k={REDACTED}"], REDACTED: 1}
    assert scrubbed.tool_calls == (ToolCall(f"fn_{REDACTED}", {"q": {"deep": f"Bearer {REDACTED}"}, "n": 2}),)


def test_a_reply_without_the_key_is_left_as_it_is() -> None:
    reply = ProviderReply(text="hello", finish_reason="stop", usage=None, raw_usage={"prompt_tokens": 1})
    assert scrub_reply(reply, OPAQUE_KEY) == reply
    assert scrub_reply(reply, None) is reply


@pytest.mark.parametrize("key", [KEY, OPAQUE_KEY])
async def test_a_key_echoed_by_the_endpoint_never_reaches_the_reply(key: str) -> None:
    def echo(request: httpx.Request) -> httpx.Response:
        sent = request.headers["authorization"].removeprefix("Bearer ")
        return httpx.Response(200, json={
            "choices": [{"message": {"role": "assistant", "content": f"you sent {sent}"}, "finish_reason": sent}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3, "echo": sent},
        })

    async with httpx.AsyncClient(transport=httpx.MockTransport(echo)) as client:
        reply = await call_provider(client, ADAPTERS[Provider.OPENAI], make_job(Provider.OPENAI),  # type: ignore[arg-type]
                                    endpoint(Provider.OPENAI), key)
    assert key not in repr(reply)
    assert reply.text == f"you sent {REDACTED}" and reply.provider_finish_reason == REDACTED
    assert reply.finish_reason == "other", "an unknown finish value is normalised; the scrubbed one is kept beside it"
    assert reply.raw_usage is not None and reply.raw_usage["echo"] == REDACTED


# -- one provider call, request to last byte -----------------------------------------------------------


def ollama_job(job_id: str, **extra: Any) -> bytes:
    return orjson.dumps({"job_id": job_id, "workspace_id": "ws-slow", "model": {"provider": "ollama",
                         "name": "llama3"}, "input": {"messages": [{"role": "user", "content": "hi"}]}, **extra})


def stalled_runner(calls: list[httpx.Request], **settings: Any) -> JobRunner:
    async def never_answers(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    http = HttpClientPool(connect_timeout_s=1, read_timeout_s=600, max_connections=4,
                          transport_factory=lambda: httpx.MockTransport(never_answers))
    chosen = Settings(allowed_hosts=frozenset({"127.0.0.1:11434"}), max_attempts=2, retry_base_delay_s=0.01,
                      **settings)
    return JobRunner(RetryPolicy.from_settings(chosen), allowed_hosts=chosen.allowed_hosts,
                     call_timeout_s=chosen.provider_call_timeout_s,
                     decryptor=None, http=http, cache=UnsealCache(ttl_s=1, max_entries=1),  # type: ignore[arg-type]
                     metrics=WorkerMetrics())


@pytest.mark.timeout(30)
async def test_a_call_that_never_ends_times_out_at_the_call_timeout_and_is_retried() -> None:
    calls: list[httpx.Request] = []
    outcome = await stalled_runner(calls, provider_call_timeout_s=0.1).run(Delivery(ollama_job("slow-1")))
    assert isinstance(outcome, Completed)
    error = outcome.result.error
    assert error is not None and error.code == "timeout" and error.retryable
    assert "BYOK_PROVIDER_CALL_TIMEOUT_S" in error.message
    assert len(calls) == 2 and outcome.result.attempts == 2, "retried as a timeout is, up to max_attempts"


@pytest.mark.timeout(30)
async def test_a_deadline_sooner_than_the_call_timeout_bounds_the_call() -> None:
    calls: list[httpx.Request] = []
    deadline = (datetime.now(UTC) + timedelta(seconds=0.3)).isoformat()
    outcome = await stalled_runner(calls, provider_call_timeout_s=600).run(
        Delivery(ollama_job("slow-2", deadline=deadline)))
    assert isinstance(outcome, Completed)
    error = outcome.result.error
    assert error is not None and error.code == "timeout" and not error.retryable
    assert "deadline" in error.message and len(calls) == 1
