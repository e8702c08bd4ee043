"""Failures as types that carry their decision: a result code, and whether waiting could help.

A failure is immutable once raised: its fields are set in ``__init__`` and a changed copy is a new
instance (``with_message``). Whether to retry it is decided in one place, ``worker.jobs.retry.decide``.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self

from schemas.models import ErrorCode


class CallDeferred(Exception):
    """Not a failure: the provider call must wait (a workspace at its in-flight cap, the budget store out of
    reach). The job goes through the delay queue for ``delay_s`` and no attempt is counted."""

    def __init__(self, reason: str, *, delay_s: float = 1.0) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay_s = delay_s


class JobFailure(Exception):
    """The job ends ``failed`` with this code; retrying the same job will not change that."""

    retryable: ClassVar[bool] = False
    code: ErrorCode
    message: str
    provider_status: int | None

    def __init__(self, code: ErrorCode, message: str, *, provider_status: int | None = None) -> None:
        super().__init__(message)
        self._set(code=code, message=message, provider_status=provider_status)

    def _set(self, **fields: Any) -> None:
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: Any) -> None:
        # Python itself sets the dunder attributes (__traceback__, __cause__, __notes__…) on raise.
        if name.startswith("__") and name.endswith("__"):
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"{type(self).__name__} is immutable: make a new one (with_message)")

    def with_message(self, message: str) -> Self:
        """The same failure with another message (a provider's echo of the key scrubbed from it)."""
        clone = type(self).__new__(type(self))
        Exception.__init__(clone, message)
        clone._set(**{**vars(self), "message": message})
        return clone


class RetryableFailure(JobFailure):
    """Waiting may help (rate limit, overload, 5xx, network, Vault unreachable).

    ``retry_after_s`` is the provider's own hint, if it gave one.
    """

    retryable: ClassVar[bool] = True
    retry_after_s: float | None

    def __init__(
        self,
        code: ErrorCode,
        message: str,
        *,
        provider_status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(code, message, provider_status=provider_status)
        self._set(retry_after_s=retry_after_s)


class InvalidJob(JobFailure):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.INVALID_JOB, message)


class KeyUnavailable(JobFailure):
    """The sealed key does not open for this workspace and endpoint (or Vault refuses)."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.KEY_UNAVAILABLE, message)


class VaultUnavailable(RetryableFailure):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorCode.KEY_UNAVAILABLE, message)
