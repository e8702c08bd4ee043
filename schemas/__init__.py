"""Public message models of byok-worker (DESIGN.md, "Messages")."""

from schemas.models import (
    JOB_SCHEMA,
    RESULT_SCHEMA,
    USAGE_SCHEMA,
    ChatMessage,
    CompletionInput,
    CompletionJob,
    CompletionResult,
    ErrorCode,
    ModelRef,
    Output,
    Provider,
    ResultError,
    Status,
    TokenCounts,
    UsageEvent,
)

__all__ = [
    "JOB_SCHEMA",
    "RESULT_SCHEMA",
    "USAGE_SCHEMA",
    "ChatMessage",
    "CompletionInput",
    "CompletionJob",
    "CompletionResult",
    "ErrorCode",
    "ModelRef",
    "Output",
    "Provider",
    "ResultError",
    "Status",
    "TokenCounts",
    "UsageEvent",
]
