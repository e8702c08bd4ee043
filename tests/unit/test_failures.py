"""Failures are immutable: a changed failure is a new instance."""

from __future__ import annotations

import httpx
import pytest

from schemas.models import CompletionJob, ErrorCode, Provider
from worker.failures import JobFailure, RetryableFailure, VaultUnavailable
from worker.keys.endpoint import Endpoint
from worker.providers import adapter_for
from worker.providers.call import call_provider
from worker.redaction import REDACTED


@pytest.mark.parametrize("field", ["code", "message", "provider_status", "retry_after_s", "attempts", "billed_call"])
def test_a_raised_failure_cannot_be_changed(field: str) -> None:
    failure = RetryableFailure(ErrorCode.RATE_LIMITED, "slow down", provider_status=429, retry_after_s=3.0)
    with pytest.raises(AttributeError, match="immutable"):
        setattr(failure, field, None)
    assert (failure.code, failure.message, failure.provider_status, failure.retry_after_s) == (
        ErrorCode.RATE_LIMITED, "slow down", 429, 3.0)


def test_with_message_is_a_new_failure_of_the_same_kind() -> None:
    original = RetryableFailure(ErrorCode.PROVIDER_ERROR, "bad key sk-123", provider_status=503, retry_after_s=1.5)
    changed = original.with_message("bad key [REDACTED]")
    assert type(changed) is RetryableFailure and changed is not original
    assert (changed.code, changed.provider_status, changed.retry_after_s) == (ErrorCode.PROVIDER_ERROR, 503, 1.5)
    assert changed.message == str(changed) == "bad key [REDACTED]"
    assert original.message == str(original) == "bad key sk-123"


def test_with_message_keeps_a_subclass_with_its_own_constructor() -> None:
    changed = VaultUnavailable("Vault answered 503").with_message("Vault answered 502")
    assert isinstance(changed, VaultUnavailable) and changed.retryable
    assert (changed.code, changed.message) == (ErrorCode.KEY_UNAVAILABLE, "Vault answered 502")


def _fail_from(cause: Exception) -> None:
    failure = JobFailure(ErrorCode.PROVIDER_ERROR, "outer")
    failure.add_note("a note")
    raise failure from cause


def test_a_failure_still_raises_with_cause_and_notes() -> None:
    with pytest.raises(JobFailure) as caught:
        _fail_from(ValueError("inner"))
    assert isinstance(caught.value.__cause__, ValueError) and caught.value.__notes__ == ["a note"]
    assert caught.value.__traceback__ is not None


async def test_a_key_echoed_by_the_provider_leaves_neither_message_nor_text_of_the_failure() -> None:
    key = "plainletterskey"  # nothing the generic scrubbers recognise as a key: only call_provider's replace
    job = CompletionJob.model_validate({"job_id": "j", "workspace_id": "ws", "model": {
        "provider": "openai", "name": "m", "sealed_key": "vault:v1:c2VhbGVk"},
        "input": {"messages": [{"role": "user", "content": "hi"}]}})

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": {"message": f"Incorrect API key provided: {key}"}})

    async with httpx.AsyncClient(transport=httpx.MockTransport(echo)) as client:
        with pytest.raises(JobFailure) as caught:
            await call_provider(client, adapter_for(Provider.OPENAI), job, Endpoint.resolve(Provider.OPENAI, None), key)
    assert caught.value.code is ErrorCode.AUTH_FAILED
    assert caught.value.message == str(caught.value) == f"Incorrect API key provided: {REDACTED}"
