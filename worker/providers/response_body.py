"""A provider's answer read under a byte cap, decoded as it arrives.

The cap counts decoded bytes: 140 KB of gzip once became a 146 MB result. httpx's decoders inflate a whole
chunk at once (16 KiB of a gzip bomb is 16 MiB), so gzip and deflate are inflated here at most ``PIECE``
bytes at a time, with httpx's rules otherwise: the codings of ``content-encoding`` undone last-applied first,
unknown ones left as they are, raw deflate accepted, a broken stream raising ``httpx.DecodingError``.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import httpx

ACCEPT_ENCODING = "gzip, deflate"
"""The codings decoded here: what a provider call advertises."""
PIECE = 64 * 1024


class ResponseTooLarge(Exception):
    def __init__(self, limit: int, status: int) -> None:
        super().__init__(f"the provider's answer is larger than {limit} bytes")
        self.limit = limit
        self.status = status


class _Inflater:
    """One gzip or deflate layer."""

    def __init__(self, coding: str) -> None:
        self._zlib = zlib.decompressobj(zlib.MAX_WBITS | 16) if coding == "gzip" else None
        self._head = b""

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._zlib is None:
            # "deflate" is zlib-wrapped or, from some servers, raw (httpx's DeflateDecoder takes both): the
            # first two bytes tell, however the body is cut into chunks.
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            self._zlib = zlib.decompressobj(zlib.MAX_WBITS if _is_zlib_header(data) else -zlib.MAX_WBITS)
        while True:
            try:
                piece = self._zlib.decompress(data, PIECE)
            except zlib.error as exc:
                raise httpx.DecodingError(str(exc)) from exc
            data = self._zlib.unconsumed_tail
            if piece:
                yield piece
            elif not data:
                return

    def finish(self) -> bytes:
        if self._zlib is None:
            return b""
        try:
            return self._zlib.flush()
        except zlib.error as exc:
            raise httpx.DecodingError(str(exc)) from exc


def _is_zlib_header(head: bytes) -> bool:
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == zlib.DEFLATED and cmf >> 4 <= 7 and (cmf * 256 + flg) % 31 == 0


def _layers(content_encodings: Iterable[str]) -> list[_Inflater]:
    codings = [c.strip().lower() for value in content_encodings for c in value.split(",")]
    return [_Inflater(c) for c in reversed(codings) if c in ("gzip", "deflate")]


def _decode(layers: Sequence[_Inflater], data: bytes) -> Iterator[bytes]:
    if not layers:
        yield data
        return
    for piece in layers[0].feed(data):
        yield from _decode(layers[1:], piece)


def _finish(layers: Sequence[_Inflater]) -> Iterator[bytes]:
    for index, layer in enumerate(layers):
        tail = layer.finish()
        if tail:
            yield from _decode(layers[index + 1:], tail)


@dataclass(frozen=True, slots=True)
class Answer:
    """What arrives before the body: its status (for the error) and headers."""

    status: int
    content_encodings: Sequence[str]
    content_length: int | None


async def read_capped(answer: Answer, chunks: AsyncIterable[bytes], limit: int) -> bytes:
    """The decoded body, or ``ResponseTooLarge`` as soon as it (or what arrives) passes ``limit`` bytes.

    Never holds more than ``limit`` plus one piece of the answer.
    """
    if answer.content_length is not None and answer.content_length > limit:
        raise ResponseTooLarge(limit, answer.status)
    layers = _layers(answer.content_encodings)
    body = bytearray()
    received = 0
    async for chunk in chunks:
        received += len(chunk)
        if received > limit:
            raise ResponseTooLarge(limit, answer.status)
        _append(body, _decode(layers, chunk), limit, answer.status)
    _append(body, _finish(layers), limit, answer.status)
    return bytes(body)


def _append(body: bytearray, pieces: Iterable[bytes], limit: int, status: int) -> None:
    for piece in pieces:
        body += piece
        if len(body) > limit:
            raise ResponseTooLarge(limit, status)


__all__ = ["ACCEPT_ENCODING", "Answer", "ResponseTooLarge", "read_capped"]
