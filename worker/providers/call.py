"""One provider call: build the request with the job's adapter, send it, classify what came back."""

from __future__ import annotations

import httpx
import orjson

from schemas.models import CompletionJob, ErrorCode
from worker.failures import JobFailure, RetryableFailure
from worker.keys.endpoint import Endpoint
from worker.providers.base import ProviderAdapter, ProviderReply
from worker.providers.http_pool import ProviderClient, ProviderResponse
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
    except httpx.TimeoutException:
        raise RetryableFailure(ErrorCode.TIMEOUT, "the provider did not answer in time") from None
    except httpx.TransportError as exc:
        # The exception text names the URL at most; keys travel only in headers.
        raise RetryableFailure(
            ErrorCode.PROVIDER_ERROR, f"connection to the provider failed ({type(exc).__name__})"
        ) from None
    if not response.is_success:
        failure = adapter.classify_error(response.status_code, dict(response.headers), response.content)
        if api_key and isinstance(failure, JobFailure) and api_key in failure.message:
            # A provider that echoes the key back must not make us carry it into a result.
            failure.message = failure.message.replace(api_key, REDACTED)
        raise failure
    try:
        body = orjson.loads(response.content)
        if not isinstance(body, dict):
            raise ValueError("not an object")
        return adapter.parse_response(body, job)
    except (orjson.JSONDecodeError, ValueError, TypeError, KeyError) as exc:
        raise JobFailure(
            ErrorCode.PROVIDER_ERROR, f"unreadable provider response ({exc})", provider_status=response.status_code
        ) from None
