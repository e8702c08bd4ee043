"""What the simulator served and billed (``GET /_sim/ledger``), and every HTTP request it received."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from schemas.models import TOKEN_BUCKETS, Provider, TokenCounts

AUTH_HEADERS = ("authorization", "x-api-key")
"""The credential headers of the four protocols (bearer key; Anthropic's ``x-api-key``)."""



def key_fingerprint(key: str | None) -> str | None:
    return hashlib.sha256(key.encode()).hexdigest()[:12] if key else None


@dataclass(frozen=True, slots=True)
class ServedToolCall:
    id: str | None
    """The id the protocol gave the call; None for Ollama, whose tool calls carry no id."""
    name: str
    arguments: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "name": self.name, "arguments": self.arguments}


@dataclass(frozen=True, slots=True)
class InputShape:
    """How the input tokens of a call were counted: what the request offered besides its text."""

    tools: int = 0
    tool_tokens: int = 0
    images: int = 0
    image_tokens: int = 0

    def as_json(self) -> dict[str, int]:
        return {"tools": self.tools, "tool_tokens": self.tool_tokens, "images": self.images,
                "image_tokens": self.image_tokens}


@dataclass(frozen=True, slots=True)
class LedgerCall:
    protocol: Provider
    model: str
    behavior: str
    status: int
    usage: TokenCounts | None
    """Billed buckets; None when the call was not billed (an error status, or an answer without usage). A
    call whose client left before the answer (status 499) is billed when its answer carried usage."""
    key_fingerprint: str | None
    at: float
    text: str | None = None
    """The answer's text as served (a JSON text for structured output); None when no answer was served."""
    tool_calls: tuple[ServedToolCall, ...] = ()
    input_shape: InputShape = field(default_factory=InputShape)

    @property
    def billed(self) -> bool:
        return self.usage is not None

    def as_json(self) -> dict[str, Any]:
        return {
            "protocol": self.protocol.value,
            "model": self.model,
            "behavior": self.behavior,
            "status": self.status,
            "billed": self.billed,
            "usage": self.usage.model_dump() if self.usage is not None else None,
            "key_fingerprint": self.key_fingerprint,
            "at": self.at,
            "text": self.text,
            "tool_calls": [call.as_json() for call in self.tool_calls],
            "input_shape": self.input_shape.as_json(),
        }


@dataclass(frozen=True, slots=True)
class SeenRequest:
    """One HTTP request as the server received it, whatever its path: never a header value or the query."""

    method: str
    path: str
    protocol: Provider | None
    """The protocol route it matched (method and path), or None: a control route or a path not served."""
    has_auth: bool
    """Whether it carried a non-empty credential header (one of ``AUTH_HEADERS``)."""
    at: float

    def as_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "path": self.path,
            "protocol": self.protocol.value if self.protocol is not None else None,
            "has_auth": self.has_auth,
            "at": self.at,
        }


@dataclass(slots=True)
class Ledger:
    calls: list[LedgerCall] = field(default_factory=list)
    """Requests on the protocol routes, answered (billed or not)."""
    seen: list[SeenRequest] = field(default_factory=list)
    """Every HTTP request received, on any path, in arrival order."""
    in_flight: dict[str, int] = field(default_factory=dict)
    """Protocol requests being answered now, per key fingerprint (``"-"`` for keyless ones)."""
    peak_in_flight: dict[str, int] = field(default_factory=dict)
    """The most protocol requests answered at once, per key fingerprint, since the last reset."""

    def call_started(self, fingerprint: str | None) -> None:
        name = fingerprint or "-"
        self.in_flight[name] = self.in_flight.get(name, 0) + 1
        self.peak_in_flight[name] = max(self.peak_in_flight.get(name, 0), self.in_flight[name])

    def call_ended(self, fingerprint: str | None) -> None:
        name = fingerprint or "-"
        self.in_flight[name] -= 1

    def record(self, call: LedgerCall) -> None:
        self.calls.append(call)

    def record_request(self, request: SeenRequest) -> None:
        self.seen.append(request)

    def reset(self) -> None:
        self.calls.clear()
        self.seen.clear()
        self.peak_in_flight.clear()

    def requests(self) -> list[SeenRequest]:
        """Every request the server received since the last reset, on any path (a copy)."""
        return list(self.seen)

    def arrived(self, protocol: Provider | None = None) -> int:
        """Requests received on the protocol routes (of ``protocol``, if given), answered or still running."""
        return sum(1 for seen in self.seen if seen.protocol is not None and protocol in (None, seen.protocol))

    def billed(self) -> list[LedgerCall]:
        return [call for call in self.calls if call.usage is not None]

    def totals(self) -> dict[str, int]:
        """``requests`` = billed calls, and the sum of each of the five buckets over them."""
        totals = dict.fromkeys(TOKEN_BUCKETS, 0)
        billed = self.billed()
        for call in billed:
            usage = call.usage
            assert usage is not None
            for name in TOKEN_BUCKETS:
                totals[name] += getattr(usage, name)
        return {"requests": len(billed), **totals}

    def as_json(self) -> dict[str, Any]:
        return {
            "calls": [call.as_json() for call in self.calls],
            "totals": self.totals(),
            "requests": [seen.as_json() for seen in self.seen],
            "peak_in_flight": dict(self.peak_in_flight),
        }
