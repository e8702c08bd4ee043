"""The worker's fast paths (BENCHMARKS.md, changes 1 and 4) against the library paths they replaced."""

from __future__ import annotations

import pytest

from tests import equivalence


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_provider_calls_match_httpx_over_the_aiohttp_transport(host: str) -> None:
    assert await equivalence.provider_calls(host) == []


async def test_published_messages_match_aio_pika_messages() -> None:
    assert await equivalence.publishing() == []
