"""The public message contract (schemas/CONTRACT.md): jobs in; results, usage events and alerts out.

JSON Schema files in ``schemas/json/`` are generated from these models (``python -m schemas.generate``)
and checked in; a test fails when they are stale.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

import orjson
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    field_validator,
    model_validator,
)

from schemas.conversation import (
    MAX_TOOLS,
    ChatMessage,
    ResponseFormat,
    Tool,
    ToolCall,
    ToolChoice,
    check_response_tool,
    check_tool_pairing,
    check_tools,
)

JOB_SCHEMA: Final = "byok.completion_job.v1"
RESULT_SCHEMA: Final = "byok.completion_result.v1"
USAGE_SCHEMA: Final = "byok.usage_event.v1"
ALERT_SCHEMA: Final = "byok.alert.v1"
PROVIDER_CALL_SCHEMA: Final = "byok.provider_call.v1"

MAX_JOB_BYTES = 1024 * 1024
MAX_METADATA_BYTES = 16 * 1024
MAX_TAGS = 16

# pydantic validates with Rust regex, where $ matches only at the very end: "ws\n" is rejected.
IDENTIFIER_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
# A Vault/OpenBao transit ciphertext as transit writes it: "vault:v", the key version (from 1), ":", standard
# base64 (padding only at the end).
SEALED_KEY_PATTERN = r"^vault:v[1-9][0-9]{0,9}:[A-Za-z0-9+/]+={0,2}$"
# The non-overlapping usage buckets, in the order of TokenCounts' fields (schemas/CONTRACT.md).
TOKEN_BUCKETS: Final = ("input_tokens", "cache_read_tokens", "cache_write_tokens", "output_tokens", "reasoning_tokens")
NUL_REFUSED = "must not contain a NUL character (\\u0000): the consumption store cannot hold it"


def storable(text: str) -> bool:
    """Whether the consumption store can hold ``text``: PostgreSQL text and jsonb cannot hold U+0000."""
    return "\x00" not in text


def _storable(text: str) -> str:
    if not storable(text):
        raise ValueError(NUL_REFUSED)
    return text


StoredText = Annotated[str, AfterValidator(_storable)]
"""A string that reaches the consumption store (through a usage event or a failed result)."""

Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN)]
JobId = Annotated[StoredText, StringConstraints(min_length=1, max_length=128)]


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


UtcDatetime = Annotated[AwareDatetime, AfterValidator(_utc)]


def _date_time_text(value: Any) -> Any:
    """A job's times are JSON Schema ``date-time`` strings: pydantic alone would take a number of seconds."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str) or value.strip().replace(".", "", 1).lstrip("+-").isdigit():
        raise ValueError("must be an ISO-8601 date-time string with a UTC offset")
    return value


JobDatetime = Annotated[UtcDatetime, BeforeValidator(_date_time_text)]


class Provider(StrEnum):
    OPENAI = "openai"
    ANTHROPIC = "anthropic"
    MISTRAL = "mistral"
    OLLAMA = "ollama"


KEYLESS_PROVIDERS = frozenset({Provider.OLLAMA})


class Status(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ErrorCode(StrEnum):
    INVALID_JOB = "invalid_job"
    KEY_UNAVAILABLE = "key_unavailable"
    AUTH_FAILED = "auth_failed"
    QUOTA_EXHAUSTED = "quota_exhausted"
    RATE_LIMITED = "rate_limited"
    PROVIDER_ERROR = "provider_error"
    TIMEOUT = "timeout"
    EXPIRED = "expired"
    BUDGET_EXCEEDED = "budget_exceeded"


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelRef(_Message):
    provider: Provider
    name: Annotated[StoredText, StringConstraints(min_length=1, max_length=256)]
    base_url: Annotated[StoredText, StringConstraints(min_length=1, max_length=2048)] | None = None
    sealed_key: Annotated[str, StringConstraints(pattern=SEALED_KEY_PATTERN)] | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.lower().startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL")
        return value

    @model_validator(mode="after")
    def _key_when_needed(self) -> ModelRef:
        if self.provider not in KEYLESS_PROVIDERS and self.sealed_key is None:
            raise ValueError(f"sealed_key is required for provider {self.provider.value}")
        return self


class CompletionInput(_Message):
    # Numbers are Strict: JSON's true or "100" is not an integer, as the published JSON Schema says
    # (a strict float still takes an integer, as JSON Schema's number does).
    system: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_tokens: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] | None = None
    temperature: Annotated[float, Strict(), Field(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Strict(), Field(gt=0.0, le=1.0)] | None = None
    stop: Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(max_length=4)] | None = None
    # -- tools, structured output (schemas/conversation.py)
    tools: Annotated[list[Tool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: ToolChoice | None = None
    response_format: ResponseFormat | None = None
    cache: Literal["auto", "off"] | None = Field(
        default=None,
        description="auto (the default when absent): the worker marks the stable prefix (tools, system "
        "prompt) for the provider's prompt cache where the protocol takes a marker (Anthropic cache_control, "
        "once the prefix reaches the model's minimum cacheable length) and sends OpenAI a prompt_cache_key of "
        "workspace + automation; off: neither",
    )

    @model_validator(mode="after")
    def _conversation(self) -> CompletionInput:
        check_tools(self.tools, self.tool_choice)
        check_response_tool(self.tools, self.response_format)
        check_tool_pairing(self.messages)
        return self


class CompletionJob(_Message):
    schema_: Literal["byok.completion_job.v1"] = Field(default=JOB_SCHEMA, alias="schema")
    job_id: JobId
    workspace_id: Identifier
    automation_id: Identifier | None = None
    tags: Annotated[dict[Annotated[str, StringConstraints(max_length=64)],
                         Annotated[str, StringConstraints(max_length=256)]],
                    Field(max_length=MAX_TAGS)] = Field(default_factory=dict)
    model: ModelRef
    input: CompletionInput
    deadline: JobDatetime | None = None
    metadata: dict[str, Any] | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("tags")
    @classmethod
    def _storable_tags(cls, value: dict[str, str]) -> dict[str, str]:
        # Checked as a whole: a key's own validation error would carry the key (and its NUL) in its location.
        if not all(storable(key) and storable(text) for key, text in value.items()):
            raise ValueError(NUL_REFUSED)
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return value
        serialized = orjson.dumps(value)
        if len(serialized) > MAX_METADATA_BYTES:
            raise ValueError(f"metadata is larger than {MAX_METADATA_BYTES} bytes serialized")
        if b"\\u0000" in serialized:  # echoed in the result, which the aggregator stores when it failed
            raise ValueError(NUL_REFUSED)
        return value


class TokenCounts(_Message):
    """Non-overlapping buckets: their sum is what the provider billed."""

    input_tokens: Annotated[int, Field(ge=0)] = 0
    cache_read_tokens: Annotated[int, Field(ge=0)] = 0
    cache_write_tokens: Annotated[int, Field(ge=0)] = 0
    output_tokens: Annotated[int, Field(ge=0)] = 0
    reasoning_tokens: Annotated[int, Field(ge=0)] = 0

    @property
    def total(self) -> int:
        return (self.input_tokens + self.cache_read_tokens + self.cache_write_tokens
                + self.output_tokens + self.reasoning_tokens)


class Output(_Message):
    text: str
    finish_reason: str | None = Field(
        default=None,
        description="normalised: stop | length | tool_calls | content_filter | other (tool_calls whenever "
        "tool_calls is not empty)",
    )
    provider_finish_reason: str | None = Field(default=None, description="the provider's own value")
    tool_calls: list[ToolCall] = Field(default_factory=list)
    parsed: dict[str, Any] | None = Field(
        default=None, description="the structured answer, when the job asked for a response_format"
    )


class ResultError(_Message):
    code: ErrorCode
    message: str
    retryable: bool
    provider_status: int | None = None


class CompletionResult(_Message):
    schema_: Literal["byok.completion_result.v1"] = Field(default=RESULT_SCHEMA, alias="schema")
    job_id: JobId
    workspace_id: Identifier
    automation_id: Identifier | None = None
    status: Status
    provider: Provider | None = None
    model: str | None = None
    output: Output | None = None
    usage: TokenCounts | None = None
    error: ResultError | None = None
    attempts: Annotated[int, Field(ge=0)]
    latency_ms: Annotated[float, Field(ge=0)]
    finished_at: UtcDatetime
    metadata: dict[str, Any] | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class UsageShape(_Message):
    """The size of what a call sent, never its text: what the drivers report estimates shares from."""

    system_chars: Annotated[int, Field(ge=0)] = Field(description="characters of the system prompt")
    input_chars: Annotated[int, Field(ge=0)] = Field(
        description="characters of all text input: system prompt, messages, tool calls and results, tool definitions"
    )
    messages: Annotated[int, Field(ge=0)] = Field(description="messages in input.messages")
    tools: Annotated[int, Field(ge=0)] = Field(description="tools offered")
    images: Annotated[int, Field(ge=0)] = Field(description="images in the messages")
    system_fingerprint: Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{16}$")] | None = Field(
        default=None, description="the first 16 hex digits of the SHA-256 of the system prompt; null without one"
    )


class UsageEvent(TokenCounts):
    schema_: Literal["byok.usage_event.v1"] = Field(default=USAGE_SCHEMA, alias="schema")
    event_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    job_id: JobId
    workspace_id: Identifier
    automation_id: Identifier | None = None
    tags: dict[str, str] = Field(default_factory=dict)
    provider: Provider
    model: str
    occurred_at: UtcDatetime
    latency_ms: Annotated[float, Field(ge=0)]
    status: Status
    usage_reported: bool = Field(
        default=True,
        description="False when the provider's response carried no usage: the counts are unknown, not zero.",
    )
    raw_usage: dict[str, Any] | None = None
    shape: UsageShape | None = Field(
        default=None, description="sizes of what the call sent (no prompt text); absent from older events"
    )

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class CallState(StrEnum):
    STARTED = "started"
    NOT_BILLED = "not_billed"


class ProviderCallRecord(_Message):
    """A provider call that may be billed, published (confirmed) before the request is sent.

    Its ``call_id`` is the ``event_id`` of the usage event that completes it. A call that ends with an answer
    the provider does not bill (an error status, or a request refused before it was sent) is closed by a
    second record with ``state: not_billed``. A call that neither reports nor closes (the worker died, or the
    broker connection dropped before the usage event was confirmed) shows as ``unreported_calls``. No prompt,
    output or key is carried.
    """

    schema_: Literal["byok.provider_call.v1"] = Field(default=PROVIDER_CALL_SCHEMA, alias="schema")
    call_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    job_id: JobId
    workspace_id: Identifier
    automation_id: Identifier | None = None
    provider: Provider
    model: StoredText
    started_at: UtcDatetime
    state: CallState = CallState.STARTED
    ended_at: UtcDatetime | None = Field(default=None, description="when a not_billed call ended")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def utc_now() -> datetime:
    return datetime.now(UTC)


class AlertKind(StrEnum):
    SPIKE = "spike"
    UNEXPECTED_MODEL = "unexpected_model"
    ERROR_BURST = "error_burst"
    BUDGET = "budget"


class Severity(StrEnum):
    WARNING = "warning"
    CRITICAL = "critical"


class Alert(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    schema_: Literal["byok.alert.v1"] = Field(default=ALERT_SCHEMA, alias="schema")
    alert_id: str = Field(default_factory=lambda: str(uuid.uuid4()))
    dedupe_key: str
    workspace_id: Identifier
    kind: AlertKind
    severity: Severity
    message: str
    window_start: UtcDatetime
    window_end: UtcDatetime
    created_at: UtcDatetime = Field(default_factory=utc_now)
    details: dict[str, Any] = Field(
        default_factory=dict, description="the numbers that triggered the alert, and the thresholds"
    )

    @property
    def routing_key(self) -> str:
        return f"{self.workspace_id}.{self.kind.value}"

    def to_json(self) -> bytes:
        return orjson.dumps(self.model_dump(mode="json", by_alias=True))

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)
