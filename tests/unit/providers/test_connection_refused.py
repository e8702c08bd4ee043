"""A provider whose port refuses connections is reported as "connection refused", not as a timeout."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from schemas.models import CompletionJob, ErrorCode, Provider
from worker.failures import RetryableFailure
from worker.keys.endpoint import Endpoint
from worker.providers import ADAPTERS
from worker.providers.call import call_provider
from worker.providers.http_pool import HttpClientPool, TransportFactory


@pytest.fixture
def refusing_port() -> Iterator[int]:
    """A loopback port bound but never listening: every connection to it is refused while the test runs."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def _httpx_transport() -> httpx.AsyncBaseTransport:
    return httpx.AsyncHTTPTransport()


@pytest.mark.parametrize("transport", [None, _httpx_transport], ids=["aiohttp", "httpx"])
async def test_a_refused_connection_says_so_and_stays_retryable(
    refusing_port: int, transport: TransportFactory | None
) -> None:
    job = CompletionJob.model_validate({
        "job_id": "refused-1", "workspace_id": "ws1",
        "model": {"provider": "openai", "name": "gpt-4o-mini", "sealed_key": "vault:v1:c2VhbGVk"},
        "input": {"messages": [{"role": "user", "content": "Hi"}]},
    })
    endpoint = Endpoint.resolve(Provider.OPENAI, f"http://127.0.0.1:{refusing_port}/v1")
    pool = HttpClientPool(connect_timeout_s=5, read_timeout_s=5, max_connections=1, transport_factory=transport)
    try:
        with pytest.raises(RetryableFailure) as caught:
            await call_provider(pool.client_for(endpoint.base_url), ADAPTERS[Provider.OPENAI], job, endpoint, "sk-x")
    finally:
        await pool.aclose()
    assert caught.value.message == "connection refused by the provider"
    assert caught.value.code is ErrorCode.PROVIDER_ERROR, "the code of every other failed connection"
