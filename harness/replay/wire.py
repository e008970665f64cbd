"""HTTP/1.1 on the wire, shared by every HTTP transport: the request as written, the answer as read.

- The request head is built once per header set (`RequestHead`) and written with the body in one send.
  No headers of harness's own (no User-Agent, no Accept-Encoding): only Host and Content-Length are added,
  as geventhttpclient adds them (Host with the port unless 80/443; Content-Length for a body and for an
  empty POST/PUT/PATCH). Method, header names and values and the request target are checked as
  geventhttpclient checks them: an invalid one is a `harness_error`, never sent.
- The answer's head is parsed by `quick_answer` when it arrived whole and plain (the usual small JSON
  answer), else by geventhttpclient's llhttp parser (`new_parser`); its header names are lower-case, the
  last of repeated ones wins.
- `SendResult` is what every transport hands back for one leg; the answer's bytes as they came
  (Content-Encoding is undone after the leg's end time, by harness.content_encoding).
- Event streams (`Content-Type: text/event-stream`) are decoded piece by piece as they arrive
  (`StreamBody`), so that arrival times refer to decoded bytes.
"""
from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any

from geventhttpclient.response import HTTPResponse

from ..error_kinds import exception_kind, status_kind
from ..traffic.http_fields import TOKEN_RE, header_problem, wire_value
from ..content_encoding import DecodedTooLarge, EncodingError, decoder_for

__all__ = ["SendResult", "RequestHead", "StreamBody", "request_bytes", "origin_form", "error_result", "status_kind",
           "declared_too_large", "is_event_stream", "quick_answer", "new_parser", "CHUNK", "PEEK"]

CHUNK = 65536
PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT
# RFC 9110 tokens and field values, as geventhttpclient checks them (client.py)
_REQUEST_TARGET_RE = re.compile(r"\A/[^\x00-\x20\x7f]*\Z")
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))


@dataclass(slots=True)
class SendResult:
    """One leg's outcome, from any transport. `status` None: no answer (then `error_kind` says why)."""

    status: int | None
    body: bytes
    error_kind: str | None
    error_detail: str | None
    response_bytes: int
    headers: dict[str, str] | None = None
    arrivals: list[tuple[int, float]] | None = None  # streams only: (decoded bytes so far, ms since the send)
    decoded_bytes: int | None = None  # None until the Content-Encoding is undone (content_encoding.decode_answer)
    sent_at: float | None = None  # epoch time of the send where the transport hands the leg on (gRPC): else start()'s


class RequestHead:
    """The header lines of one request as sent (without Host and Content-Length), checked once.
    `error` is set, and nothing may be sent, when a name or value would break the request head."""

    __slots__ = ("headers", "lines", "error", "expect")

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers
        self.error: str | None = None
        self.expect = False  # Expect: 100-continue: the body waits for the interim answer
        parts = []
        for k, v in headers:
            problem = header_problem(k, v)
            if problem is not None:
                self.error = f"ValueError: {problem}"
                break
            v = wire_value(str(v))
            if k.lower() == "expect" and v.strip().lower() == "100-continue":
                self.expect = True
            parts.append(f"{k}: {v}\r\n")
        self.lines = "".join(parts)


def origin_form(uri: str, base_url: str) -> str:
    """The request target as geventhttpclient writes it: "/" put before a relative one, an absolute URL of
    this target cut to its path (`base_url`: scheme://host[:port]/); an absolute URL of another host is a
    ValueError."""
    if uri.startswith("/"):
        return uri
    if not uri.startswith("http"):
        return "/" + uri
    if uri.startswith(base_url):
        return uri[len(base_url) - 1:]
    raise ValueError(f"invalid request URI {uri!r}: another host than {base_url}")


def request_bytes(method: str, uri: str, head: RequestHead, body: bytes, host_line: str, *,
                  with_body: bool = True) -> bytes:
    """The request as written on the wire (method upper-cased by the caller); ValueError, and nothing is
    sent, where geventhttpclient would refuse the request. `with_body` False: the head alone (its
    Content-Length still the body's), for a body that waits for 100 Continue."""
    if head.error is not None:
        raise ValueError(head.error.partition(": ")[2])
    if not TOKEN_RE.fullmatch(method):
        raise ValueError(f"invalid HTTP method {method!r}")
    if not _REQUEST_TARGET_RE.fullmatch(uri) or uri.startswith("//"):
        raise ValueError(f"invalid request URI {uri!r}")
    length = f"Content-Length: {len(body)}\r\n" if body or method in _BODY_METHODS else ""
    data = f"{method} {uri} HTTP/1.1\r\n{head.lines}{host_line}{length}\r\n".encode("latin-1")
    return data + body if body and with_body else data


class LowerHeaders(dict):  # type: ignore[type-arg]
    """The answer's headers for the parser: lower-case names, the last of repeated ones wins."""

    def add(self, name: str, value: str) -> None:
        self[name.lower()] = value


def new_parser(method: str) -> Any:
    """geventhttpclient's llhttp answer parser, for one exchange. It reads interim 1xx answers as complete
    messages and starts over for the final one; a HEAD answer ends with its headers; b"" fed at EOF ends a
    close-delimited body (else raises)."""
    # the parser only calls the headers' add(): a dict with lower-case keys is cheaper than its Headers
    return HTTPResponse(method=method, headers_type=LowerHeaders)  # type: ignore[arg-type]


# A whole, plain answer in one read (the usual small JSON answer): status line, headers, Content-Length body.
_QUICK_HEAD = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9])(?: [\t\x20-\x7e]*)?\r\n"
                         rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e]*\r\n)*)\r\n")


def quick_answer(data: bytes, method: str) -> tuple[int, dict[str, str], bytes, bool] | None:
    """(status, headers, body, keep-alive) of an answer that arrived whole in `data` and needs none of the
    parser's cases: HTTP/1.1, a final status with a body, one Content-Length that the body matches, no
    Transfer-Encoding, not an event stream, ASCII headers. Anything else: None, and llhttp parses it."""
    m = _QUICK_HEAD.match(data)
    if m is None or method == "HEAD":
        return None
    status = int(m.group(1))
    if status in (204, 304):
        return None
    headers: dict[str, str] = {}
    for line in m.group(2).decode("ascii").split("\r\n")[:-1]:  # the pattern let only ASCII through
        name, _, value = line.partition(":")
        name = name.lower()
        if name == "transfer-encoding" or (name == "content-length" and name in headers):
            return None
        headers[name] = value.strip(" \t")
    length = headers.get("content-length")
    if length is None or not length.isdigit() or int(length) != len(data) - m.end():
        return None
    if is_event_stream(headers):
        return None
    connection = headers.get("connection", "").lower()
    return status, headers, data[m.end():], "close" not in connection


class StreamBody:
    """An event stream's body as it arrives: bytes on the wire counted, decoded piece by piece (so that the
    arrival times refer to decoded bytes), the cap on the decoded size. `add` and `end` return the leg's
    result when they end it (too_large, bad_encoding), else None; `last` is the decoded piece just added."""

    __slots__ = ("cap", "wire", "decoded", "last", "_decoder", "_error")

    def __init__(self, headers: Any, cap: int) -> None:
        self.cap = cap
        self.wire = self.decoded = 0
        self.last = b""
        self._error: str | None = None
        try:
            self._decoder = decoder_for(headers, cap)
        except EncodingError as exc:
            self._decoder, self._error = None, str(exc)

    def add(self, piece: bytes, status: int, headers: Any) -> SendResult | None:
        self.wire += len(piece)
        if self._error is not None:
            return self._bad(status, headers)
        if self._decoder is not None:
            try:
                piece = self._decoder.feed(piece)
            except DecodedTooLarge as exc:
                return self._too_large(status, headers, exc.decoded)
            except EncodingError as exc:
                self._error = str(exc)
                return self._bad(status, headers)
        self.decoded += len(piece)
        if self.wire > self.cap or self.decoded > self.cap:
            return self._too_large(status, headers, self.decoded)
        self.last = piece
        return None

    def end(self, status: int, headers: Any) -> SendResult | None:
        if self._error is None and self._decoder is not None:
            try:
                self._decoder.finish()
            except EncodingError as exc:
                self._error = str(exc)
        return self._bad(status, headers) if self._error is not None else None

    def _too_large(self, status: int, headers: Any, decoded: int) -> SendResult:
        return SendResult(status, b"", "too_large", f"stream over the cap of {self.cap} bytes", self.wire, headers,
                          None, decoded)

    def _bad(self, status: int, headers: Any) -> SendResult:
        return SendResult(status, b"", status_kind(status) or "bad_encoding", self._error, self.wire, headers, None, 0)


def declared_too_large(status: int, headers: Any, cap: int) -> SendResult | None:
    """The answer refused on its headers alone: a declared Content-Length over the cap (None otherwise)."""
    try:
        declared = int(headers.get("content-length", "-1"))
    except ValueError:
        return None
    if declared <= cap:
        return None
    return SendResult(status, b"", "too_large", f"Content-Length {declared} > cap {cap}", declared, headers)


def is_event_stream(headers: Any) -> bool:
    """Content-Type text/event-stream: read as it arrives, each read timed (lower-case header names)."""
    ctype = headers.get("content-type")
    return ctype is not None and ctype.split(";")[0].strip().lower() == "text/event-stream"


def error_result(exc: BaseException) -> SendResult:
    """An exchange that failed before an answer, as its error kind (by type: error_kinds.exception_kind)."""
    return SendResult(None, b"", exception_kind(exc), f"{type(exc).__name__}: {exc}"[:300], 0)
