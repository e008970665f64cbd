"""Decoding an answer's Content-Encoding as an HTTP client does, with the decoded size capped.

gzip (also x-gzip, several members), deflate (zlib-wrapped, or raw as some servers send it), br and zstd
(several frames), and chains of them (`Content-Encoding: gzip, br` is undone right to left). Every
decompressor is asked for at most the bytes still allowed by the cap (+1, to notice the overflow), so a
compression bomb stops at `max_response_bytes` of output: `too_large` at a memory bounded by the cap, never
an out-of-memory. A coding that is unknown, or bytes that are not what the header says, raise
`EncodingError` naming the coding: the leg's `bad_encoding` error.

Decoding happens after the leg's end time is taken (the finisher decodes plain answers; event streams are
decoded as they arrive, so that token timing sees decoded bytes): latency is what a client spends
receiving the answer, not what it spends inflating it.
"""
from __future__ import annotations

import gzip
import sys
import zlib
from dataclasses import replace
from typing import Any, Callable

import brotli

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # the backport of Python 3.14's compression.zstd (PEP 784)
    from backports import zstd

__all__ = ["EncodingError", "DecodedTooLarge", "BodyDecoder", "decoder_for", "decode_answer", "decode_body", "encode_body",
           "content_codings"]

_STEP = 262144  # output per decompressor call: a bounded step between which the send schedule may go first


class EncodingError(ValueError):
    """The answer's Content-Encoding cannot be decoded (unknown coding, or bytes that are not that coding)."""


class DecodedTooLarge(Exception):
    """The decoded answer passed the cap; `decoded` is how many bytes had been decoded by then."""

    def __init__(self, decoded: int) -> None:
        super().__init__(decoded)
        self.decoded = decoded


def content_codings(header: str | None) -> list[str]:
    """The codings applied, in the order they were applied (identity dropped), lower-case."""
    if not header:
        return []
    return [c for c in (part.strip().lower() for part in header.split(",")) if c and c != "identity"]


class _Zlib:
    total = 0  # bytes this stage has put out (BodyDecoder caps it)

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self.gzip = coding in ("gzip", "x-gzip")
        self._raw_fallback = not self.gzip  # deflate: zlib-wrapped per RFC 9110, raw as some servers send it
        self._d = zlib.decompressobj(31 if self.gzip else 15)
        self._out = 0

    def steps(self, data: bytes, limit: int) -> Any:
        d = self._d
        while True:
            want = min(limit, _STEP)
            try:
                out = d.decompress(data, want)
            except zlib.error:
                if self._raw_fallback and self._out == 0:
                    self._raw_fallback = False
                    d = self._d = zlib.decompressobj(-15)
                    continue
                raise
            self._raw_fallback = False
            self._out += len(out)
            yield out
            data = d.unconsumed_tail
            if d.eof and d.unused_data:
                rest = d.unused_data
                if not self.gzip or not rest.lstrip(b"\0"):
                    return  # trailing bytes after a deflate stream, or gzip's zero padding: ignored, as zlib's users do
                d = self._d = zlib.decompressobj(31)  # the next gzip member
                data = rest
                continue
            if not data and (len(out) < want or d.eof):
                return

    def ended(self) -> bool:
        return self._d.eof


class _Brotli:
    coding = "br"
    total = 0

    def __init__(self) -> None:
        self._d = brotli.Decompressor()

    def steps(self, data: bytes, limit: int) -> Any:
        d = self._d
        yield d.process(data, output_buffer_limit=min(limit, _STEP))
        while not d.can_accept_more_data():  # output held back by the limit
            yield d.process(b"", output_buffer_limit=min(limit, _STEP))

    def ended(self) -> bool:
        return bool(self._d.is_finished())


class _Zstd:
    coding = "zstd"
    total = 0

    def __init__(self) -> None:
        self._d = zstd.ZstdDecompressor()

    def steps(self, data: bytes, limit: int) -> Any:
        d = self._d
        if d.eof:  # the last frame ended with the last piece: this piece starts the next frame
            d = self._d = zstd.ZstdDecompressor()
        while True:
            yield d.decompress(data, min(limit, _STEP))
            data = b""
            if d.eof:
                rest = d.unused_data
                if not rest:
                    return
                d = self._d = zstd.ZstdDecompressor()  # the next frame
                data = rest
            elif d.needs_input:
                return

    def ended(self) -> bool:
        return bool(self._d.eof)


def _stage(coding: str) -> Any:
    if coding in ("gzip", "x-gzip", "deflate"):
        return _Zlib(coding)
    if coding == "br":
        return _Brotli()
    if coding == "zstd":
        return _Zstd()
    raise _unsupported(coding)


def _unsupported(coding: str) -> EncodingError:
    return EncodingError(f"Content-Encoding {coding!r} is not supported (gzip, deflate, br and zstd are)")


class BodyDecoder:
    """Incremental decoding of one answer body: `feed` the bytes as they arrive, then `finish`."""

    def __init__(self, codings: list[str], cap: int, pace: Callable[[], None] | None = None) -> None:
        self.codings = codings
        self.cap = cap
        self.decoded_bytes = 0
        self._pace = pace
        self._stages = [_stage(c) for c in reversed(codings)]  # the last coding applied is undone first

    def feed(self, data: bytes) -> bytes:
        if not data:
            return b""
        pieces = [data]
        for stage in self._stages:  # each stage's output is capped too: an inner bomb stops as early
            out: list[bytes] = []
            for piece in pieces:
                try:
                    for chunk in stage.steps(piece, self.cap - stage.total + 1):
                        stage.total += len(chunk)
                        if stage.total > self.cap:
                            raise DecodedTooLarge(stage.total)
                        if chunk:
                            out.append(chunk)
                        if self._pace is not None:
                            self._pace()
                except (zlib.error, brotli.error, zstd.ZstdError, EOFError) as exc:
                    raise EncodingError(f"Content-Encoding {stage.coding}: the answer is not {stage.coding} "
                                        f"data ({type(exc).__name__}: {exc})"[:300]) from None
            pieces = out
        body = b"".join(pieces)
        self.decoded_bytes += len(body)
        return body

    def finish(self) -> None:
        """The body is complete: every coding's stream must have ended (a cut one is not that coding)."""
        for stage in self._stages:
            if not stage.ended():
                raise EncodingError(f"Content-Encoding {stage.coding}: the {stage.coding} data ends before its "
                                    "end marker (truncated)")


def decoder_for(headers: Any, cap: int, pace: Callable[[], None] | None = None) -> BodyDecoder | None:
    """A decoder for an answer's headers (lower-case names), or None when it is not encoded."""
    if not headers:
        return None
    codings = content_codings(headers.get("content-encoding"))
    return BodyDecoder(codings, cap, pace) if codings else None


def decode_answer(result: Any, cap: int, pace: Callable[[], None] | None = None) -> Any:
    """A SendResult with its body decoded and `decoded_bytes` set (`response_bytes` stays the bytes on the
    wire). Already decoded (streams), no answer, or an empty body: returned with decoded_bytes filled in."""
    if result.decoded_bytes is not None or result.status is None or result.error_kind == "too_large":
        return result
    encoding = result.headers.get("content-encoding") if result.body and result.headers else None
    body, decoded, kind, detail = _decode(content_codings(encoding) if encoding else [], result.body, cap, pace)
    if kind is None:
        if body is result.body:  # the common case, on every leg: no copy
            result.decoded_bytes = decoded
            return result
        return replace(result, body=body, decoded_bytes=decoded)
    if kind == "bad_encoding" and result.error_kind is not None:  # a 5xx stays a 5xx; the detail says why its
        return replace(result, body=b"", decoded_bytes=0, error_detail=detail)  # body is unreadable
    return replace(result, body=b"", error_kind=kind, error_detail=detail, decoded_bytes=decoded)


def decode_body(content_encoding: str | None, body: bytes, cap: int) -> tuple[bytes, str | None, str | None]:
    """A whole answer body decoded as a client would, for readers that get the bytes as they came (harness
    shadow, harness capture): (the decoded body, None, None), or (b"", the error kind, why) where it cannot be
    (bad_encoding, or too_large past `cap`). Never the encoded bytes as if they were the answer: read as text
    they are unreadable, and lightly compressed ones carry the answer's secrets past the redactor."""
    body, _, kind, detail = _decode(content_codings(content_encoding) if body else [], body, cap, None)
    return body, kind, detail


def encode_body(content_encoding: str | None, body: bytes) -> bytes:
    """`body` coded as the header says (codings applied left to right): decode_body's inverse, for a request
    body masked in its decoded form and sent again as it was captured."""
    for coding in content_codings(content_encoding):
        # the libraries' default levels for gzip and deflate; brotli's (11) took 1.7 s on 1.3 MB
        if coding in ("gzip", "x-gzip"):
            body = gzip.compress(body, compresslevel=6, mtime=0)
        elif coding == "deflate":
            body = zlib.compress(body)
        elif coding == "br":
            body = brotli.compress(body, quality=4)
        elif coding == "zstd":
            body = zstd.compress(body)
        else:
            raise _unsupported(coding)
    return body


def _decode(codings: list[str], body: bytes, cap: int,
            pace: Callable[[], None] | None) -> tuple[bytes, int, str | None, str | None]:
    """(decoded body, decoded byte count, error kind, why): the one way a whole body is decoded, for the replay's
    answers and for the bodies shadow and capture read. On too_large the count is how far decoding got."""
    if not codings:
        return body, len(body), None, None
    try:
        decoder = BodyDecoder(codings, cap, pace)
        decoded = decoder.feed(body)
        decoder.finish()
    except DecodedTooLarge as exc:
        return b"", exc.decoded, "too_large", f"decoded answer ({', '.join(codings)}) over the cap of {cap} bytes"
    except EncodingError as exc:
        return b"", 0, "bad_encoding", str(exc)
    return decoded, len(decoded), None, None
