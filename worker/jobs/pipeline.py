"""One job, start to finish: validate, check the deadline, unseal, call the provider with retries.

``JobRunner.run`` never raises for a bad job or a failed call: it returns an ``Outcome`` that says what
must be published and how the message is settled. The consumer (``worker.jobs.consumer``) carries it out.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import structlog
from pydantic import SecretStr, ValidationError

from schemas.models import (
    IDENTIFIER_PATTERN,
    MAX_JOB_BYTES,
    CompletionJob,
    CompletionResult,
    ErrorCode,
    Output,
    ResultError,
    Status,
    TokenCounts,
    UsageEvent,
    storable,
)
from worker.failures import CallDeferred, InvalidJob, JobFailure, RetryableFailure
from worker.jobs.call_hooks import CallHook, ProviderCall
from worker.jobs.call_shape import call_shape
from worker.jobs.metrics import WorkerMetrics
from worker.jobs.retry import DelayQueue, GiveUp, RetryPolicy, WaitInline, decide
from worker.keys.endpoint import Endpoint, EndpointError, binding_b64, check_destination, check_public
from worker.keys.transit import Decryptor
from worker.keys.unseal_cache import UnsealCache
from worker.providers import adapter_for
from worker.providers.base import ProviderAdapter, ProviderReply
from worker.providers.call import call_provider
from worker.providers.http_pool import HttpClientPool

log = structlog.get_logger("byok.worker")

MAX_REASON = 240
_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


@dataclass(frozen=True, slots=True)
class Delivery:
    """What the pipeline needs from a broker message."""

    body: bytes
    attempts_before: int = 0
    first_seen: datetime | None = None
    not_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    code: ErrorCode
    reason: str


@dataclass(frozen=True, slots=True)
class Completed:
    """A final result: publish it (and the usage event), dead-letter it if it failed, then ack."""

    result: CompletionResult
    usage: UsageEvent | None
    dead_letter: DeadLetter | None


@dataclass(frozen=True, slots=True)
class Unroutable:
    """Not even a job id and workspace to route a result to: dead-letter only, then ack."""

    dead_letter: DeadLetter


@dataclass(frozen=True, slots=True)
class RetryLater:
    """A wait too long to hold a consumer slot: through the delay queue, then ack."""

    delay_s: float
    attempts: int
    first_seen: datetime
    reason: str


Outcome = Completed | Unroutable | RetryLater


def short_reason(text: str) -> str:
    return " ".join(text.split())[:MAX_REASON]


def validation_reason(error: ValidationError) -> str:
    # Only locations and messages: pydantic's input echo could carry anything the publisher sent.
    parts = [f"{'.'.join(str(p) for p in e['loc']) or 'job'}: {e['msg']}" for e in error.errors()[:3]]
    return short_reason("; ".join(parts))


def made_call(failure: JobFailure) -> bool:
    """Whether a failure from the provider step followed a call that reached the provider (and counts as an
    attempt): every retryable one, a timeout, and any with a provider status. A request refused before it
    was sent (``InvalidJob`` from the adapter) made none."""
    return failure.retryable or failure.provider_status is not None or failure.code is ErrorCode.TIMEOUT


def routing_ids(raw: Any) -> tuple[str, str, str | None] | None:
    """job_id, workspace_id, automation_id of a body that failed validation, if it can still be routed."""
    if not isinstance(raw, dict):
        return None
    job_id, workspace_id, automation_id = raw.get("job_id"), raw.get("workspace_id"), raw.get("automation_id")
    if not (isinstance(job_id, str) and 1 <= len(job_id) <= 128 and storable(job_id)):
        return None
    if not (isinstance(workspace_id, str) and _IDENTIFIER.fullmatch(workspace_id)):
        return None
    if not (isinstance(automation_id, str) and _IDENTIFIER.fullmatch(automation_id)):
        automation_id = None
    return job_id, workspace_id, automation_id


class JobRunner:
    def __init__(
        self,
        policy: RetryPolicy,
        *,
        allowed_hosts: frozenset[str] | None,
        decryptor: Decryptor,
        http: HttpClientPool,
        cache: UnsealCache,
        metrics: WorkerMetrics,
        call_timeout_s: float = 300.0,
        call_hooks: Sequence[CallHook] = (),
    ) -> None:
        self._policy = policy
        self._allowed_hosts = allowed_hosts
        self._call_timeout_s = call_timeout_s
        """One provider call, request to last byte (``BYOK_PROVIDER_CALL_TIMEOUT_S``)."""
        self._decryptor = decryptor
        self._http = http
        self._cache = cache
        self._metrics = metrics
        self._call_hooks = tuple(call_hooks)

    async def run(self, delivery: Delivery) -> Outcome:
        started = time.perf_counter()
        first_seen = delivery.first_seen or datetime.now(UTC)
        parsed = self._parse(delivery.body)
        if isinstance(parsed, Unroutable | Completed):
            return parsed
        job = parsed
        if delivery.not_before is not None:
            # Back early from the longest delay queue: wait the rest, without a provider call.
            wait_s = (delivery.not_before - datetime.now(UTC)).total_seconds()
            if wait_s > self._policy.inline_max_s:
                return RetryLater(wait_s, delivery.attempts_before, first_seen, "provider's retry-after")
            await asyncio.sleep(max(wait_s, 0.0))
        try:
            return await self._execute(job, delivery, first_seen, started)
        except JobFailure as failure:
            return self._failed(job, failure, delivery.attempts_before, started)

    def _parse(self, body: bytes) -> CompletionJob | Completed | Unroutable:
        if len(body) > MAX_JOB_BYTES:
            return Unroutable(DeadLetter(ErrorCode.INVALID_JOB, f"job is larger than {MAX_JOB_BYTES} bytes"))
        try:
            raw = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            return Unroutable(DeadLetter(ErrorCode.INVALID_JOB, short_reason(f"body is not JSON: {exc}")))
        try:
            return CompletionJob.model_validate(raw)
        except ValidationError as exc:
            reason = validation_reason(exc)
        ids = routing_ids(raw)
        if ids is None:
            return Unroutable(DeadLetter(ErrorCode.INVALID_JOB, reason))
        job_id, workspace_id, automation_id = ids
        result = CompletionResult(
            job_id=job_id,
            workspace_id=workspace_id,
            automation_id=automation_id,
            status=Status.FAILED,
            error=ResultError(code=ErrorCode.INVALID_JOB, message=reason, retryable=False),
            attempts=0,
            latency_ms=0.0,
            finished_at=datetime.now(UTC),
        )
        return Completed(result, None, DeadLetter(ErrorCode.INVALID_JOB, reason))

    async def _execute(
        self, job: CompletionJob, delivery: Delivery, first_seen: datetime, started: float
    ) -> Outcome:
        """Failures before the first try are raised; the retry loop returns every outcome itself."""
        if job.deadline is not None and job.deadline <= datetime.now(UTC):
            raise JobFailure(ErrorCode.EXPIRED, "the job's deadline passed before it was attempted")
        adapter = adapter_for(job.model.provider)
        try:
            endpoint = Endpoint.resolve(job.model.provider, job.model.base_url)
            check_destination(endpoint, self._allowed_hosts, carries_key=adapter.needs_key)
            check_public(endpoint, self._allowed_hosts)
        except EndpointError as exc:
            code = ErrorCode.KEY_UNAVAILABLE if adapter.needs_key else ErrorCode.INVALID_JOB
            raise JobFailure(code, str(exc)) from None
        attempts = delivery.attempts_before
        transient_failures = 0
        while True:
            unsealed = False
            try:
                api_key = await self._unseal(job, endpoint) if adapter.needs_key else None
                unsealed = True
                call_started = time.perf_counter()
                call = ProviderCall(job, str(uuid.uuid4()), endpoint)
                reply = await self._hooked_call(call, adapter, api_key)
            except CallDeferred as deferred:
                # A hook held the call back (in-flight cap, budget store unreachable): no call, no attempt.
                return RetryLater(deferred.delay_s, attempts, first_seen, short_reason(deferred.reason))
            except JobFailure as failure:
                # A failure while unsealing made no provider call: it is not an attempt.
                called = unsealed and made_call(failure)
                if called:
                    attempts += 1
                if failure.retryable:
                    transient_failures += 1
                self._forget_refused_key(job, endpoint, failure)
                decision = decide(
                    failure, provider_called=called, attempts=attempts,
                    transient_failures=transient_failures, now=datetime.now(UTC), deadline=job.deadline,
                    first_seen=first_seen, policy=self._policy,
                )
                if not isinstance(decision, GiveUp):
                    # A retry is a failure tried again; the one that ends the job is counted in byok_jobs_total.
                    self._metrics.retry(job.model.provider.value, failure.code.value)
                match decision:
                    case WaitInline(delay_s):
                        await asyncio.sleep(delay_s)
                        continue
                    case DelayQueue(delay_s):
                        return RetryLater(delay_s, attempts, first_seen, short_reason(failure.message))
                    case GiveUp():
                        return self._failed(job, failure, attempts, started)
            attempts += 1
            return self._succeeded(call, reply, attempts, started, call_started)

    def _forget_refused_key(self, job: CompletionJob, endpoint: Endpoint, failure: JobFailure) -> None:
        """A key the provider refused (revoked, rotated) is unsealed again next time, not served from cache."""
        if failure.code is ErrorCode.AUTH_FAILED and job.model.sealed_key:
            self._cache.evict(binding_b64(job.workspace_id, endpoint), job.model.sealed_key)

    async def _unseal(self, job: CompletionJob, endpoint: Endpoint) -> SecretStr:
        sealed = job.model.sealed_key
        if sealed is None:
            raise InvalidJob(f"provider {job.model.provider.value} needs a sealed_key")
        before = self._cache.misses
        binding = binding_b64(job.workspace_id, endpoint)
        try:
            # Cached per binding (workspace + provider + base URL), never per workspace alone: a key unsealed
            # for its own endpoint must not serve a job that pairs the same sealed key with another endpoint.
            return await self._cache.get(
                binding, sealed, lambda: self._decryptor.decrypt(job.workspace_id, sealed, binding)
            )
        finally:
            self._metrics.unseal(hit=self._cache.misses == before)

    async def _hooked_call(
        self, call: ProviderCall, adapter: ProviderAdapter, api_key: SecretStr | None
    ) -> ProviderReply:
        if not self._call_hooks:
            return await self._call(adapter, call.job, call.endpoint, api_key)
        async with AsyncExitStack() as hooks:
            for hook in self._call_hooks:
                await hooks.enter_async_context(hook(call))
            call.reply = await self._call(adapter, call.job, call.endpoint, api_key)
        return call.reply

    async def _call(
        self, adapter: ProviderAdapter, job: CompletionJob, endpoint: Endpoint, api_key: SecretStr | None
    ) -> ProviderReply:
        client = self._http.client_for(endpoint.base_url)
        secret = api_key.get_secret_value() if api_key is not None else None
        budget_s, deadline_bound = self._call_budget(job)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(budget_s):
                return await call_provider(client, adapter, job, endpoint, secret)
        except TimeoutError:
            raise self._call_timed_out(deadline_bound) from None
        finally:
            self._metrics.provider_call(job.model.provider.value, time.perf_counter() - started)

    def _call_budget(self, job: CompletionJob) -> tuple[float, bool]:
        """How long one provider call may take, request to last byte (a slow endpoint trickling bytes must not
        hold a slot read timeout after read timeout), and whether the job's deadline is what bounds it."""
        limit_s = self._call_timeout_s
        if job.deadline is None:
            return limit_s, False
        remaining_s = (job.deadline - datetime.now(UTC)).total_seconds()
        return (max(remaining_s, 0.001), True) if remaining_s < limit_s else (limit_s, False)

    def _call_timed_out(self, deadline_bound: bool) -> JobFailure:
        if deadline_bound:
            return JobFailure(ErrorCode.TIMEOUT, "the job's deadline passed during the provider call")
        return RetryableFailure(
            ErrorCode.TIMEOUT,
            f"the provider call took longer than {self._call_timeout_s:g} s "
            "(BYOK_PROVIDER_CALL_TIMEOUT_S)",
        )

    def _succeeded(
        self, call: ProviderCall, reply: ProviderReply, attempts: int, started: float, call_started: float
    ) -> Completed:
        job = call.job
        finished = datetime.now(UTC)
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        usage = UsageEvent(
            event_id=call.call_id,
            job_id=job.job_id,
            workspace_id=job.workspace_id,
            automation_id=job.automation_id,
            tags=dict(job.tags),
            provider=job.model.provider,
            model=job.model.name,
            occurred_at=finished,
            latency_ms=round((time.perf_counter() - call_started) * 1000, 3),
            status=Status.SUCCEEDED if reply.unusable is None else Status.FAILED,
            usage_reported=reply.usage is not None,
            raw_usage=reply.raw_usage,
            shape=call_shape(job.input),
            **(reply.usage or TokenCounts()).model_dump(),
        )
        if reply.unusable is not None:
            # Unparseable tool calls or structured output: the job fails, but the provider billed the call.
            unusable = JobFailure(ErrorCode.PROVIDER_ERROR, reply.unusable, provider_status=200)
            failed = self._failed(job, unusable, attempts, started)
            return Completed(failed.result.model_copy(update={"usage": reply.usage}), usage, failed.dead_letter)
        output = Output(
            text=reply.text, finish_reason=reply.finish_reason, provider_finish_reason=reply.provider_finish_reason,
            tool_calls=list(reply.tool_calls), parsed=reply.parsed,
        )
        result = _job_result(job, Status.SUCCEEDED, attempts, latency_ms, finished, output=output, usage=reply.usage)
        return Completed(result, usage, None)

    def _failed(self, job: CompletionJob, failure: JobFailure, attempts: int, started: float) -> Completed:
        message = short_reason(failure.message)
        error = ResultError(
            code=failure.code, message=message, retryable=failure.retryable, provider_status=failure.provider_status,
        )
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        result = _job_result(job, Status.FAILED, attempts, latency_ms, datetime.now(UTC), error=error)
        return Completed(result, None, DeadLetter(failure.code, message))


__all__ = [
    "Completed",
    "DeadLetter",
    "Delivery",
    "JobRunner",
    "Outcome",
    "RetryLater",
    "Unroutable",
]


def _job_result(
    job: CompletionJob, status: Status, attempts: int, latency_ms: float, finished: datetime, **outcome: Any
) -> CompletionResult:
    """A final result of ``job``: what every result carries from the job, and the outcome's own fields."""
    return CompletionResult(
        job_id=job.job_id, workspace_id=job.workspace_id, automation_id=job.automation_id, status=status,
        provider=job.model.provider, model=job.model.name, attempts=attempts, latency_ms=latency_ms,
        finished_at=finished, metadata=job.metadata, **outcome,
    )
