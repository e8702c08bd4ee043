"""Call hooks wrap each provider call in the order given: entered before the request, left after the answer
with the reply in hand, left on a failure with the failure passing through, and able to refuse the call;
the usage event's id is the call's id."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import orjson

from schemas.models import ErrorCode, Status
from worker.failures import JobFailure
from worker.jobs.call_hooks import CallHook, ProviderCall
from worker.jobs.metrics import WorkerMetrics
from worker.jobs.pipeline import Completed, Delivery, JobRunner
from worker.jobs.retry import RetryPolicy
from worker.keys.unseal_cache import UnsealCache
from worker.providers.http_pool import HttpClientPool
from worker.settings import Settings

HOSTS = frozenset({"127.0.0.1:11434"})
JOB = orjson.dumps({"job_id": "j-1", "workspace_id": "ws", "model": {"provider": "ollama", "name": "llama3.2"},
                    "input": {"messages": [{"role": "user", "content": "hi"}]}})


def recording(name: str, log: list[tuple[str, str, Any]], refuse: bool = False) -> CallHook:
    @asynccontextmanager
    async def hook(call: ProviderCall) -> AsyncIterator[None]:
        log.append(("enter", name, call.call_id))
        if refuse:
            raise JobFailure(ErrorCode.BUDGET_EXCEEDED, "refused by the hook")
        try:
            yield
        except JobFailure as failure:
            log.append(("failed", name, failure.code))
            raise
        log.append(("left", name, call.reply.usage.input_tokens if call.reply and call.reply.usage else None))
    return hook


async def run(hooks: list[CallHook], answer: httpx.Response) -> tuple[Completed, int]:
    calls = 0

    def provider(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return answer

    http = HttpClientPool(connect_timeout_s=1, read_timeout_s=1, max_connections=2,
                          transport_factory=lambda: httpx.MockTransport(provider))
    policy = RetryPolicy.from_settings(Settings(max_attempts=1))
    runner = JobRunner(policy, allowed_hosts=HOSTS, decryptor=None,  # type: ignore[arg-type]
                       http=http, cache=UnsealCache(ttl_s=1, max_entries=1), metrics=WorkerMetrics(),
                       call_hooks=hooks)
    outcome = await runner.run(Delivery(body=JOB))
    await http.aclose()
    assert isinstance(outcome, Completed)
    return outcome, calls


OK = httpx.Response(200, json={"model": "llama3.2", "done": True, "prompt_eval_count": 9, "eval_count": 4,
                               "message": {"role": "assistant", "content": "hello"}, "done_reason": "stop"})


async def test_hooks_wrap_the_call_in_order_and_see_the_reply() -> None:
    log: list[tuple[str, str, Any]] = []
    outcome, calls = await run([recording("outer", log), recording("inner", log)], OK)
    assert calls == 1
    call_id = log[0][2]
    assert log == [("enter", "outer", call_id), ("enter", "inner", call_id), ("left", "inner", 9), ("left", "outer", 9)]
    assert outcome.usage is not None and outcome.usage.event_id == call_id


async def test_a_failed_call_passes_through_every_hook() -> None:
    log: list[tuple[str, str, Any]] = []
    outcome, calls = await run([recording("outer", log), recording("inner", log)],
                               httpx.Response(401, json={"error": "no"}))
    assert calls == 1
    assert [entry[:2] for entry in log] == [("enter", "outer"), ("enter", "inner"), ("failed", "inner"),
                                            ("failed", "outer")]
    assert outcome.result.status is Status.FAILED


async def test_a_hook_refuses_the_call_before_it_is_sent() -> None:
    log: list[tuple[str, str, Any]] = []
    outcome, calls = await run([recording("outer", log), recording("refuser", log, refuse=True)], OK)
    assert calls == 0
    assert [entry[:2] for entry in log] == [("enter", "outer"), ("enter", "refuser"), ("failed", "outer")]
    assert outcome.result.error is not None and outcome.result.error.code is ErrorCode.BUDGET_EXCEEDED
