"""worker.providers.response_body: a provider's answer read under a cap on its decoded size."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Iterable

import httpx
import pytest

from worker.providers.response_body import PIECE, Answer, ResponseTooLarge, read_capped

MIB = 1024 * 1024


def gzip_of_zeros(size: int) -> bytes:
    """``size`` zero bytes gzipped, without ever holding them (a bomb: about a thousandth of its size)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = bytes(MIB)
    parts = [packer.compress(block) for _ in range(size // MIB)]
    return b"".join([*parts, packer.flush()])


async def chunks(data: bytes, size: int = 16 * 1024) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start:start + size]


def answer(*encodings: str, length: int | None = None) -> Answer:
    return Answer(200, encodings, length)


async def httpx_decoded(body: bytes, encodings: Iterable[str]) -> bytes:
    """What httpx makes of the same answer (the behaviour read_capped keeps)."""
    response = httpx.Response(200, headers=[("content-encoding", e) for e in encodings],
                              stream=httpx.ByteStream(body))
    return await response.aread()


async def test_a_gzip_bomb_is_refused_holding_no_more_than_the_cap_and_a_piece() -> None:
    bomb = gzip_of_zeros(64 * MIB)
    assert len(bomb) < 128 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(ResponseTooLarge, match=f"larger than {MIB} bytes") as refused:
            await read_capped(Answer(200, ("gzip",), len(bomb)), chunks(bomb), MIB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert refused.value.status == 200
    # httpx's decoder turns each 16 KiB chunk of it into 16 MiB at once; here at most a piece at a time.
    assert peak < 2 * MIB + 4 * PIECE, f"peak {peak} bytes"


@pytest.mark.parametrize("encodings", [(), ("identity",), ("gzip",)])
async def test_the_cap_counts_the_decoded_body_up_to_and_including_the_limit(encodings: tuple[str, ...]) -> None:
    limit = 100_000
    exact = b"x" * limit
    encoded = gzip.compress(exact) if "gzip" in encodings else exact
    assert await read_capped(answer(*encodings), chunks(encoded), limit) == exact
    over = gzip.compress(exact + b"x") if "gzip" in encodings else exact + b"x"
    with pytest.raises(ResponseTooLarge):
        await read_capped(answer(*encodings), chunks(over), limit)


async def test_a_declared_length_over_the_cap_is_refused_before_reading() -> None:
    async def unread() -> AsyncIterator[bytes]:
        raise AssertionError("the body must not be read")
        yield b""  # pragma: no cover

    with pytest.raises(ResponseTooLarge):
        await read_capped(answer(length=MIB + 1), unread(), MIB)


async def test_an_endless_body_stops_being_read_past_the_cap() -> None:
    read = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal read
        while True:
            read += 1
            yield b"y" * 1000

    with pytest.raises(ResponseTooLarge):
        await read_capped(answer(), endless(), 10_000)
    assert read == 11


DOC = b'{"choices": [{"message": {"content": "' + b"hello " * 5000 + b'"}}]}'


@pytest.mark.parametrize(("encodings", "encode"), [
    (("gzip",), gzip.compress),
    (("deflate",), zlib.compress),
    (("deflate",), lambda d: (c := zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)).compress(d) + c.flush()),
    (("gzip, gzip",), lambda d: gzip.compress(gzip.compress(d))),
    (("deflate", "gzip"), lambda d: gzip.compress(zlib.compress(d))),
    (("GZip ",), gzip.compress),
    (("br",), lambda d: d),  # not a coding decoded here (nor by httpx without brotli): left as it is
    (("identity",), lambda d: d),
])
@pytest.mark.parametrize("chunk", [1, 7, 16 * 1024])
async def test_decoding_matches_httpx_at_any_chunking(encodings: tuple[str, ...], encode: object, chunk: int) -> None:
    assert callable(encode)
    body = encode(DOC)
    assert await read_capped(answer(*encodings), chunks(body, chunk), 10 * MIB) == DOC
    assert await httpx_decoded(body, encodings) == DOC


async def test_a_broken_stream_raises_httpx_decoding_error_as_httpx_does() -> None:
    with pytest.raises(httpx.DecodingError):
        await httpx_decoded(b"not gzip", ["gzip"])
    with pytest.raises(httpx.DecodingError):
        await read_capped(answer("gzip"), chunks(b"not gzip"), MIB)
