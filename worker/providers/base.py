"""The adapter interface every provider protocol implements, and the reply it produces.

An adapter is pure: it turns a job into an HTTP request, and an HTTP response into a reply or a
classified failure. Sending is done once for all of them in ``worker.providers.call``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas.conversation import ToolCall
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
    """What a provider answered, in the result's terms. Plain values: a scrub over a reply rebuilds it with
    ``dataclasses.replace`` (text; and each tool call's arguments, with ``ToolCall.model_copy``)."""

    text: str
    finish_reason: str | None
    """Normalised: stop | length | tool_calls | content_filter | other (``tool_calls`` exactly when
    ``tool_calls`` is not empty); None when the provider gave none."""
    usage: TokenCounts | None
    """None when the response carried no usage: unknown, never silently zero."""
    raw_usage: dict[str, Any] | None = field(default=None)
    provider_finish_reason: str | None = None
    """The provider's own finish value, as it sent it."""
    tool_calls: tuple[ToolCall, ...] = ()
    """The calls the model made, arguments parsed into JSON objects; ids made by the worker where the
    protocol has none (Ollama)."""
    parsed: dict[str, Any] | None = None
    """The structured answer, when the job asked for a ``response_format`` and the model gave it."""
    unusable: str | None = None
    """Why the answer cannot be used (tool-call arguments or structured output that do not parse): the job
    fails with ``provider_error``, and the usage still counts, since the provider billed the call."""
    response_model: str | None = None
    """The model the provider says answered (its ``model`` field), when it is a plain model name
    (``answered_model``); None otherwise. For traces (``gen_ai.response.model``), not for billing."""


MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]{0,127}")
"""What a response's ``model`` may be to be repeated: a name, never free text the endpoint chose."""


def answered_model(body: dict[str, Any]) -> str | None:
    """The ``model`` a response names (all four protocols have one), if it looks like a model name."""
    model = body.get("model")
    return model if isinstance(model, str) and MODEL_NAME.fullmatch(model) else None


class ProviderAdapter(Protocol):
    provider: Provider
    needs_key: bool

    def build_request(
        self, job: CompletionJob, endpoint: Endpoint, api_key: str | None
    ) -> ProviderRequest: ...

    def parse_response(self, body: dict[str, Any], job: CompletionJob | None = None) -> ProviderReply:
        """The reply; ``job`` tells how a structured answer is read (without it, none is parsed).

        Raises ``ValueError`` for an answer that cannot be used (``provider_error``)."""
        ...

    def classify_error(self, status: int, headers: dict[str, str], body: bytes) -> JobFailure:
        """Return (not raise) a ``JobFailure`` (a ``RetryableFailure`` when waiting may help) for a non-2xx response."""
        ...
