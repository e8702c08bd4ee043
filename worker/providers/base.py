"""The adapter interface every provider protocol implements, and the reply it produces.

An adapter is pure: it turns a job into an HTTP request, and an HTTP response into a reply or a
classified failure. Sending is done once for all of them in ``worker.providers.call``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas.models import CompletionJob, Provider, TokenCounts
from worker.failures import JobFailure
from worker.keys.endpoint import Endpoint


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ProviderReply:
    text: str
    finish_reason: str | None
    usage: TokenCounts | None
    """None when the response carried no usage: unknown, never silently zero."""
    raw_usage: dict[str, Any] | None = field(default=None)


class ProviderAdapter(Protocol):
    provider: Provider
    needs_key: bool

    def build_request(
        self, job: CompletionJob, endpoint: Endpoint, api_key: str | None
    ) -> ProviderRequest: ...

    def parse_response(self, body: dict[str, Any]) -> ProviderReply: ...

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> JobFailure:
        """Return (not raise) a ``JobFailure`` (a ``RetryableFailure`` when waiting may help) for a non-2xx response."""
        ...
