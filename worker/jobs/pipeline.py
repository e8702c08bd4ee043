"""One job, start to finish: validate, check the deadline, unseal, call the provider with retries.

``JobRunner.run`` never raises for a bad job or a failed call: it returns an ``Outcome`` that says what
must be published and how the message is settled. The consumer (``worker.jobs.consumer``) carries it out.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
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
)
from worker.failures import InvalidJob, JobFailure, RetryableFailure
from worker.jobs.metrics import WorkerMetrics
from worker.jobs.retry import backoff_delay
from worker.keys.endpoint import Endpoint, EndpointError, binding_b64, check_destination
from worker.keys.transit import TransitDecryptor
from worker.keys.unseal_cache import UnsealCache
from worker.providers import adapter_for
from worker.providers.base import ProviderAdapter, ProviderReply
from worker.providers.call import call_provider
from worker.providers.http_pool import HttpClientPool
from worker.settings import Settings

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


def routing_ids(raw: Any) -> tuple[str, str, str | None] | None:
    """job_id, workspace_id, automation_id of a body that failed validation, if it can still be routed."""
    if not isinstance(raw, dict):
        return None
    job_id, workspace_id, automation_id = raw.get("job_id"), raw.get("workspace_id"), raw.get("automation_id")
    if not (isinstance(job_id, str) and 1 <= len(job_id) <= 128):
        return None
    if not (isinstance(workspace_id, str) and _IDENTIFIER.fullmatch(workspace_id)):
        return None
    if not (isinstance(automation_id, str) and _IDENTIFIER.fullmatch(automation_id)):
        automation_id = None
    return job_id, workspace_id, automation_id


class JobRunner:
    def __init__(
        self,
        settings: Settings,
        *,
        decryptor: TransitDecryptor,
        http: HttpClientPool,
        cache: UnsealCache,
        metrics: WorkerMetrics,
    ) -> None:
        self._settings = settings
        self._decryptor = decryptor
        self._http = http
        self._cache = cache
        self._metrics = metrics

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
            if wait_s > self._settings.inline_retry_max_s:
                return RetryLater(wait_s, delivery.attempts_before, first_seen, "provider's retry-after")
            await asyncio.sleep(max(wait_s, 0.0))
        try:
            return await self._execute(job, delivery, first_seen, started)
        except JobFailure as failure:
            attempts = failure.attempts if failure.attempts is not None else delivery.attempts_before
            return self._failed(job, failure, attempts, started)

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
        if job.deadline is not None and job.deadline <= datetime.now(UTC):
            raise JobFailure(ErrorCode.EXPIRED, "the job's deadline passed before it was attempted")
        adapter = adapter_for(job.model.provider)
        if adapter is None:
            raise InvalidJob(f"provider {job.model.provider.value} is not supported")
        try:
            endpoint = Endpoint.resolve(job.model.provider, job.model.base_url)
            check_destination(endpoint, self._settings.allowed_hosts, carries_key=adapter.needs_key)
        except EndpointError as exc:
            code = ErrorCode.KEY_UNAVAILABLE if adapter.needs_key else ErrorCode.INVALID_JOB
            raise JobFailure(code, str(exc)) from None
        attempts = delivery.attempts_before
        transient_failures = 0
        while True:
            try:
                api_key = await self._unseal(job, endpoint) if adapter.needs_key else None
                call_started = time.perf_counter()
                reply = await self._call(adapter, job, endpoint, api_key)
            except RetryableFailure as failure:
                attempts += 1 if failure.billed_call else 0
                transient_failures += 1
                failure.attempts = attempts
                self._metrics.retry(job.model.provider.value, failure.code.value)
                delay = self._retry_delay(job, failure, max(attempts, transient_failures), first_seen)
                if delay <= self._settings.inline_retry_max_s:
                    await asyncio.sleep(delay)
                    continue
                return RetryLater(delay, attempts, first_seen, short_reason(failure.message))
            except JobFailure as failure:
                if failure.provider_status is not None or failure.code is ErrorCode.TIMEOUT:
                    attempts += 1
                failure.attempts = attempts
                if failure.code is ErrorCode.AUTH_FAILED and job.model.sealed_key:
                    self._cache.evict(binding_b64(job.workspace_id, endpoint), job.model.sealed_key)
                raise
            attempts += 1
            return self._succeeded(job, reply, attempts, started, call_started)

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
        except RetryableFailure as failure:
            failure.billed_call = False
            raise
        finally:
            self._metrics.unseal(hit=self._cache.misses == before)

    async def _call(
        self, adapter: ProviderAdapter, job: CompletionJob, endpoint: Endpoint, api_key: SecretStr | None
    ) -> ProviderReply:
        client = self._http.client_for(endpoint.base_url)
        secret = api_key.get_secret_value() if api_key is not None else None
        remaining = None if job.deadline is None else (job.deadline - datetime.now(UTC)).total_seconds()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(None if remaining is None else max(remaining, 0.001)):
                return await call_provider(client, adapter, job, endpoint, secret)
        except TimeoutError:
            raise JobFailure(ErrorCode.TIMEOUT, "the job's deadline passed during the provider call") from None
        finally:
            self._metrics.provider_call(job.model.provider.value, time.perf_counter() - started)

    def _retry_delay(self, job: CompletionJob, failure: RetryableFailure, tries: int, first_seen: datetime) -> float:
        """The wait before the next try, or ``failure`` raised when no try is left.

        Provider calls are bounded by ``max_attempts``; Vault outages only by the deadline or retry window.
        """
        settings = self._settings
        if failure.billed_call and (failure.attempts or 0) >= settings.max_attempts:
            raise failure
        delay = backoff_delay(
            tries, base_s=settings.retry_base_delay_s, max_s=settings.retry_max_delay_s, hint_s=failure.retry_after_s,
        )
        now = datetime.now(UTC)
        if job.deadline is not None and (job.deadline - now).total_seconds() <= delay:
            raise failure
        if job.deadline is None and (now - first_seen).total_seconds() + delay > settings.max_retry_window_s:
            raise failure
        return delay

    def _succeeded(
        self, job: CompletionJob, reply: ProviderReply, attempts: int, started: float, call_started: float
    ) -> Completed:
        finished = datetime.now(UTC)
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        usage = UsageEvent(
            event_id=str(uuid.uuid4()),
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
            **(reply.usage or TokenCounts()).model_dump(),
        )
        if reply.unusable is not None:
            # Unparseable tool calls or structured output: the job fails, but the provider billed the call.
            unusable = JobFailure(ErrorCode.PROVIDER_ERROR, reply.unusable, provider_status=200)
            failed = self._failed(job, unusable, attempts, started)
            return Completed(failed.result.model_copy(update={"usage": reply.usage}), usage, failed.dead_letter)
        result = CompletionResult(
            job_id=job.job_id,
            workspace_id=job.workspace_id,
            automation_id=job.automation_id,
            status=Status.SUCCEEDED,
            provider=job.model.provider,
            model=job.model.name,
            output=Output(
                text=reply.text, finish_reason=reply.finish_reason, provider_finish_reason=reply.provider_finish_reason,
                tool_calls=list(reply.tool_calls), parsed=reply.parsed,
            ),
            usage=reply.usage,
            attempts=attempts,
            latency_ms=latency_ms,
            finished_at=finished,
            metadata=job.metadata,
        )
        return Completed(result, usage, None)

    def _failed(self, job: CompletionJob, failure: JobFailure, attempts: int, started: float) -> Completed:
        message = short_reason(failure.message)
        result = CompletionResult(
            job_id=job.job_id,
            workspace_id=job.workspace_id,
            automation_id=job.automation_id,
            status=Status.FAILED,
            provider=job.model.provider,
            model=job.model.name,
            error=ResultError(
                code=failure.code, message=message, retryable=failure.retryable,
                provider_status=failure.provider_status,
            ),
            attempts=attempts,
            latency_ms=round((time.perf_counter() - started) * 1000, 3),
            finished_at=datetime.now(UTC),
            metadata=job.metadata,
        )
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
