"""Failures as types that carry their decision: a result code, and whether waiting could help."""

from __future__ import annotations

from schemas.models import ErrorCode


class JobFailure(Exception):
    """The job ends ``failed`` with this code; retrying the same job will not change that."""

    retryable = False

    def __init__(self, code: ErrorCode, message: str, *, provider_status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.provider_status = provider_status
        self.attempts: int | None = None
        """Provider calls made for the job when it ended here; set by the pipeline."""


class RetryableFailure(JobFailure):
    """Waiting may help (rate limit, overload, 5xx, network, Vault unreachable).

    ``retry_after_s`` is the provider's own hint, if it gave one.
    """

    retryable = True

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        provider_status: int | None = None,
        retry_after_s: float | None = None,
        billed_call: bool = True,
    ) -> None:
        super().__init__(code, message, provider_status=provider_status)
        self.retry_after_s = retry_after_s
        # False when no provider call was made (Vault unreachable): it must not count as an attempt.
        self.billed_call = billed_call


class InvalidJob(JobFailure):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_JOB, message)


class KeyUnavailable(JobFailure):
    """The sealed key does not open for this workspace and endpoint (or Vault refuses)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.KEY_UNAVAILABLE, message)


class VaultUnavailable(RetryableFailure):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.KEY_UNAVAILABLE, message, billed_call=False)
