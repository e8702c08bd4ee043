"""One provider call: build the request with the job's adapter, send it, classify what came back."""

from __future__ import annotations

import dataclasses
from typing import Any

import httpx
import orjson

from schemas.models import CompletionJob, ErrorCode
from worker.failures import JobFailure, RetryableFailure
from worker.keys.endpoint import Endpoint, NonPublicAddress
from worker.providers.base import ProviderAdapter, ProviderReply
from worker.providers.http_pool import ProviderClient, ProviderResponse
from worker.providers.response_body import ResponseTooLarge
from worker.redaction import REDACTED


async def call_provider(
    client: ProviderClient,
    adapter: ProviderAdapter,
    job: CompletionJob,
    endpoint: Endpoint,
    api_key: str | None,
) -> ProviderReply:
    request = adapter.build_request(job, endpoint, api_key)
    response: httpx.Response | ProviderResponse
    try:
        # ``AiohttpOrigin.post`` takes the same arguments as ``httpx.AsyncClient.post`` (worker.providers.http_pool).
        response = await client.post(
            endpoint.base_url + request.path, content=orjson.dumps(request.body), headers=request.headers
        )
    except httpx.TransportError as exc:
        if _refused(exc):
            raise RetryableFailure(ErrorCode.PROVIDER_ERROR, "connection refused by the provider") from None
        if isinstance(exc, httpx.TimeoutException):
            raise RetryableFailure(ErrorCode.TIMEOUT, "the provider did not answer in time") from None
        # The exception text names the URL at most; keys travel only in headers.
        raise RetryableFailure(
            ErrorCode.PROVIDER_ERROR, f"connection to the provider failed ({type(exc).__name__})"
        ) from None
    except NonPublicAddress as exc:
        # The host name resolved to an address the worker does not call: refused as check_destination refuses.
        code = ErrorCode.KEY_UNAVAILABLE if adapter.needs_key else ErrorCode.INVALID_JOB
        raise JobFailure(code, str(exc)) from None
    except ResponseTooLarge as exc:
        raise JobFailure(ErrorCode.PROVIDER_ERROR, str(exc), provider_status=exc.status) from None
    except httpx.DecodingError:
        raise JobFailure(ErrorCode.PROVIDER_ERROR, "the provider's answer does not decode") from None
    if not response.is_success:
        failure = adapter.classify_error(response.status_code, dict(response.headers), response.content)
        if api_key and api_key in failure.message:
            # A provider that echoes the key back must not make us carry it into a result.
            failure = failure.with_message(failure.message.replace(api_key, REDACTED))
        raise failure
    try:
        body = orjson.loads(response.content)
        if not isinstance(body, dict):
            raise ValueError("not an object")
        return scrub_reply(adapter.parse_response(body, job), api_key)
    except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
        raise JobFailure(
            ErrorCode.PROVIDER_ERROR, f"unreadable provider response ({exc})", provider_status=response.status_code
        ) from None


def _refused(exc: BaseException) -> bool:
    """Whether the connection was refused. httpx_aiohttp maps aiohttp's refused connect to ``ConnectTimeout``:
    the ``ConnectionRefusedError`` it came from is further down the exception's chain."""
    seen: BaseException | None = exc
    for _ in range(8):  # a chain is a few links long; never loop on a cyclic one
        if seen is None:
            return False
        if isinstance(seen, ConnectionRefusedError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def scrub_reply(reply: ProviderReply, api_key: str | None) -> ProviderReply:
    """``reply`` with every occurrence of the job's own key replaced, in every string it holds (text, finish
    reason, raw usage, and whatever a reply grows later): an endpoint that echoes the key back must not put it
    into a result or a usage event."""
    if not api_key:
        return reply
    scrubbed: ProviderReply = _without(reply, api_key)
    return scrubbed


def _without(value: Any, api_key: str) -> Any:
    if isinstance(value, str):
        return value.replace(api_key, REDACTED) if api_key in value else value
    if isinstance(value, dict):
        return {_without(k, api_key): _without(v, api_key) for k, v in value.items()}
    if isinstance(value, list):
        return [_without(v, api_key) for v in value]
    if isinstance(value, tuple):
        return tuple(_without(v, api_key) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {f.name: _without(getattr(value, f.name), api_key) for f in dataclasses.fields(value)}
        return dataclasses.replace(value, **changes)
    return value
