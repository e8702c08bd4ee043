"""Each protocol's error status and body, as the real providers send them."""

from __future__ import annotations

from typing import Any

from schemas.models import Provider

RETRY_AFTER_S = 1

# kind -> (status, OpenAI error.type, OpenAI error.code, message)
_OPENAI_ERRORS: dict[str, tuple[int, str, str | None, str]] = {
    "auth": (
        401,
        "invalid_request_error",
        "invalid_api_key",
        "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.",
    ),
    "missing_key": (
        401,
        "invalid_request_error",
        None,
        "You didn't provide an API key. You need to provide your API key in an Authorization header "
        "using Bearer auth.",
    ),
    "rate": (
        429,
        "requests",
        "rate_limit_exceeded",
        "Rate limit reached for requests per min (RPM). Please try again in 1s.",
    ),
    "quota": (
        429,
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota, please check your plan and billing details.",
    ),
    "overloaded": (503, "server_error", None, "The engine is currently overloaded, please try again later."),
    "error": (
        500,
        "server_error",
        None,
        "The server had an error while processing your request. Sorry about that!",
    ),
    "bad_request": (400, "invalid_request_error", None, "Invalid request."),
}

# kind -> (status, Anthropic error.type, message). Anthropic reports an empty credit balance as a 400.
_ANTHROPIC_ERRORS: dict[str, tuple[int, str, str]] = {
    "auth": (401, "authentication_error", "invalid x-api-key"),
    "missing_key": (401, "authentication_error", "x-api-key header is required"),
    "rate": (
        429,
        "rate_limit_error",
        "This request would exceed the rate limit for your organization of 50 requests per minute.",
    ),
    "quota": (
        400,
        "invalid_request_error",
        "Your credit balance is too low to access the Anthropic API. "
        "Please go to Plans & Billing to upgrade or purchase credits.",
    ),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "error": (500, "api_error", "Internal server error"),
    "bad_request": (400, "invalid_request_error", "Invalid request."),
}

# kind -> (status, Mistral type, code, message)
_MISTRAL_ERRORS: dict[str, tuple[int, str, str | None, str]] = {
    "rate": (429, "rate_limited", "1300", "Requests rate limit exceeded"),
    "quota": (
        429,
        "insufficient_quota",
        "3505",
        "Monthly usage limit exceeded. Raise your limit in the billing settings of your workspace.",
    ),
    "overloaded": (503, "service_unavailable", "3000", "Service unavailable, please retry later."),
    "error": (500, "internal_server_error", "3000", "Internal server error"),
    "bad_request": (422, "invalid_request_error", None, "Invalid request."),
}

_OLLAMA_ERRORS: dict[str, tuple[int, str]] = {
    "auth": (401, "unauthorized"),
    "missing_key": (401, "unauthorized"),
    "rate": (429, "too many requests, please retry later"),
    "quota": (429, "you have reached your usage limit, upgrade for higher limits"),
    "overloaded": (503, "server busy, please try again.  maximum pending requests exceeded"),
    "error": (500, "an unknown error was encountered while running the model"),
    "bad_request": (400, "invalid request"),
}


def error_payload(protocol: Provider, kind: str, detail: str | None = None) -> tuple[int, dict[str, Any]]:
    """The provider's error status and body for ``kind``: a behaviour, ``missing_key`` or ``bad_request``."""
    if protocol is Provider.OPENAI:
        status, etype, code, message = _OPENAI_ERRORS[kind]
        return status, {"error": {"message": detail or message, "type": etype, "param": None, "code": code}}
    if protocol is Provider.ANTHROPIC:
        status, etype, message = _ANTHROPIC_ERRORS[kind]
        return status, {
            "type": "error",
            "error": {"type": etype, "message": detail or message},
            "request_id": "req_sim",
        }
    if protocol is Provider.MISTRAL:
        if kind in ("auth", "missing_key"):
            return 401, {"message": "Unauthorized", "request_id": "sim"}
        status, etype, code, message = _MISTRAL_ERRORS[kind]
        return status, {
            "object": "error",
            "message": detail or message,
            "type": etype,
            "param": None,
            "code": code,
        }
    status, message = _OLLAMA_ERRORS[kind]
    return status, {"error": detail or message}


def error_headers(kind: str) -> dict[str, str]:
    if kind == "rate":
        return {"retry-after": str(RETRY_AFTER_S), "retry-after-ms": str(RETRY_AFTER_S * 1000)}
    return {}

