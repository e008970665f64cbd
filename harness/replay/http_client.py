"""Sending one leg exactly as captured: geventhttpclient's parser and sockets without its hidden habits.

- No retries: HTTPClient retries idempotent requests when a pooled connection closes (up to pool size
  + 1 times), which would make a failing candidate look like a slow success. Here one request gets one
  socket: a pooled keep-alive connection that the target has closed is noticed before the send (a
  non-blocking peek) and replaced by a new one; a connection that breaks after the send is a reset.
- No headers of its own: no User-Agent, no Accept-Encoding; only Host and Content-Length are added
  (as geventhttpclient adds them: Host with the port unless 80/443, Content-Length for a body and for
  an empty POST/PUT/PATCH).
- No cookie jar: every leg carries exactly the captured (redacted, overridden) headers.
- Request heads are validated as geventhttpclient validates them (method and header names are tokens,
  no CR/LF in values, no whitespace in the target); an invalid one is a `harness_error`, never sent.
- One deadline for the whole exchange (gevent.Timeout), not per socket operation.
- A body cap: answers over max_response_bytes are cut and recorded as too_large.
- The answer's bytes are returned as they came (Content-Encoding undone later, by the finisher:
  harness.replay.content_encoding), so the leg's end time is when the answer was received.
- TLS verified by default (harness.replay.tls: the target's ca_file, client certificate, server_name);
  a TLS failure is the `tls` error kind.
- Event streams (`Content-Type: text/event-stream`) are read as they arrive, decoded piece by piece
  (StreamBody): each read is recorded as (decoded bytes so far, ms since the send) in `arrivals`, from
  which the protocol reader times the tokens. A
  stream whose connection ends before the HTTP message does (a chunked body without its last chunk,
  a Content-Length not reached, a reset) keeps what arrived and is recorded as truncated_stream.

The request head is built here, once per header set (`head`), and written with the body in one send;
the answer is parsed by geventhttpclient's HTTPSocketPoolResponse (llhttp). A captured
`Expect: 100-continue` takes geventhttpclient's HTTPClient.request instead, which implements the
interim answer (its retries are refused, see _OneSocketPerRequest).
"""
from __future__ import annotations

import errno
import re
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Mapping
from urllib.parse import urlsplit

import gevent
import gevent.socket
import gevent.ssl
from gevent.local import local
from geventhttpclient import HTTPClient
from geventhttpclient.header import Headers
from geventhttpclient.response import HTTPSocketPoolResponse

from ..error_kinds import exception_kind
from .content_encoding import DecodedTooLarge, EncodingError, decoder_for
from .tls import client_context

__all__ = ["TargetClient", "SendResult", "RequestHead", "StreamBody", "request_bytes", "error_result", "status_kind",
           "declared_too_large", "is_event_stream"]

_CHUNK = 65536
_BLOCK = 16384
# RFC 9110 tokens and field values, as geventhttpclient checks them (client.py)
_TOKEN_RE = re.compile(r"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_FIELD_VALUE_RE = re.compile(r"\A[\t\x20-\x7e\x80-\xff]*\Z")
_REQUEST_TARGET_RE = re.compile(r"\A/[^\x00-\x20\x7f]*\Z")
_BODY_METHODS = frozenset(("POST", "PUT", "PATCH"))
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


@dataclass(slots=True)
class SendResult:
    status: int | None
    body: bytes
    error_kind: str | None
    error_detail: str | None
    response_bytes: int
    headers: dict[str, str] | None = None
    arrivals: list[tuple[int, float]] | None = None  # streams only: (decoded bytes so far, ms since the send)
    decoded_bytes: int | None = None  # None until the Content-Encoding is undone (content_encoding.decode_answer)


class RequestHead:
    """The header lines of one request as sent (without Host and Content-Length), checked once.
    `error` is set, and nothing may be sent, when a name or value would break the request head."""

    __slots__ = ("headers", "lines", "error", "expect")

    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers
        self.error: str | None = None
        self.expect = False
        parts = []
        for k, v in headers:
            if not isinstance(k, str) or not _TOKEN_RE.fullmatch(k):
                self.error = f"ValueError: invalid header field name {k!r}"
                break
            v = str(v)
            if not _FIELD_VALUE_RE.fullmatch(v):
                self.error = f"ValueError: invalid value for header field {k!r}: {v!r}"
                break
            if k.lower() == "expect":
                self.expect = True
            parts.append(f"{k}: {v}\r\n")
        self.lines = "".join(parts)


class _LowerHeaders(dict):  # type: ignore[type-arg]
    """The answer's headers for the parser: lower-case names, the last of repeated ones wins."""

    def add(self, name: str, value: str) -> None:
        self[name.lower()] = value


class _PlainPool:
    """Idle keep-alive connections to one host, newest first; no size limit of its own (the dispatcher's
    in-flight bound is the limit). The interface geventhttpclient's responses use to hand sockets back."""

    def __init__(self, host: str, port: int, connect_timeout_s: float, network_timeout_s: float) -> None:
        self.address = (host, port)
        self.connect_timeout_s = connect_timeout_s
        self.network_timeout_s = network_timeout_s
        self._idle: deque[Any] = deque()
        self._closed = False
        self._resolved: list[Any] | None = None

    def get_socket(self) -> Any:
        idle = self._idle
        while idle:
            sock = idle.pop()
            try:
                # An idle keep-alive connection has nothing to read; EOF (or stray bytes) means it is done.
                sock._sock.recv(1, _PEEK)  # noqa: SLF001 - the real socket: a non-blocking peek
            except BlockingIOError:
                return sock
            except OSError:
                pass
            sock.close()
        if self._resolved is None:
            # resolved once per replay, not per connection (gevent resolves in a thread: a GIL handoff per call)
            self._resolved = gevent.socket.getaddrinfo(*self.address, 0, socket.SOCK_STREAM)
        error: OSError | None = None
        for family, kind, proto, _, sockaddr in self._resolved:
            sock = gevent.socket.socket(family, kind, proto)
            try:
                sock.settimeout(self.connect_timeout_s)
                sock.connect(sockaddr)
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError):
                    raise
                error = error or exc
                continue
            sock.settimeout(self.network_timeout_s)
            return sock
        raise error or OSError(f"cannot connect to {self.address}")

    def return_socket(self, sock: Any) -> None:
        if self._closed:
            sock.close()
        else:
            self._idle.append(sock)

    def release_socket(self, sock: Any) -> None:
        try:
            sock.close()
        except OSError:
            pass

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()


class _OneSocketPerRequest:
    """Wraps a ConnectionPool so that one request gets one socket and no silent retry (HTTPClient path)."""

    def __init__(self, pool: object, state: local) -> None:
        self._pool = pool
        self._state = state

    def get_socket(self) -> object:
        if getattr(self._state, "taken", False):
            raise ConnectionResetError(errno.ECONNRESET, "connection closed before the answer (not retried)")
        self._state.taken = True
        return self._pool.get_socket()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._pool, name)


def _tls_connect(ctx: Any, server_hostname: str) -> Any:
    """The connect + handshake of an https connection. geventhttpclient's closes the socket when they fail
    with an OSError, not when the leg's deadline (gevent.Timeout, a BaseException) interrupts the handshake:
    that socket was left open. Here the handshake is explicit and its socket closed on any exit."""

    def connect(sock: Any, address: Any) -> Any:
        try:
            sock.connect(address)
            tls = ctx.wrap_socket(sock, server_hostname=server_hostname, do_handshake_on_connect=False)
        except BaseException:
            sock.close()
            raise
        try:
            tls.do_handshake()
        except BaseException:
            tls.close()
            raise
        return tls

    return connect


class TargetClient:
    def __init__(self, url: str, *, timeout_s: float, connect_timeout_s: float, concurrency: int,
                 max_response_bytes: int, tls: Mapping[str, Any] | None = None) -> None:
        parts = urlsplit(url)
        self.base_path = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self._timeout_detail = f"no complete answer within {timeout_s:g} s"
        self._state = local()
        host = parts.hostname or "127.0.0.1"
        https = parts.scheme == "https"
        tls_kw: dict[str, Any] = {}
        if https:  # verified unless the target says verify: false (see harness.replay.tls)
            ctx = client_context(tls, gevent.ssl)
            tls_kw = {"ssl_context_factory": lambda *_a, **_k: ctx, "insecure": not ctx.check_hostname}
        self._client = HTTPClient(host, port=parts.port, ssl=https, connection_timeout=connect_timeout_s,
                                  network_timeout=timeout_s, concurrency=concurrency, headers=Headers(), **tls_kw)
        self._client.default_headers = Headers()
        ghc_pool = self._client._connection_pool
        if https:
            ghc_pool._connect_socket = _tls_connect(  # type: ignore[method-assign]
                ctx, (tls or {}).get("server_name") or host)
        self._client._connection_pool = _OneSocketPerRequest(ghc_pool, self._state)  # type: ignore[assignment]
        port = self._client.port
        # Host as geventhttpclient writes it: brackets for IPv6, the port unless it is 80 or 443.
        host_port = f"[{host}]" if ":" in host and not host.startswith("[") else host
        self._host_line = f"Host: {host_port}{'' if port in (80, 443) else f':{port}'}\r\n"
        self._plain = not self._client.ssl
        self._pool: Any = _PlainPool(host, port, connect_timeout_s, timeout_s) if self._plain else ghc_pool

    def evented(self) -> Any:
        """An EventedClient for this target's plain-HTTP legs (None for TLS): see harness.replay.evented."""
        if not self._plain:
            return None
        from .evented import EventedClient

        return EventedClient(*self._pool.address, self._host_line, timeout_s=self.timeout_s,
                             connect_timeout_s=self._pool.connect_timeout_s, max_response_bytes=self.max_response_bytes)

    def close(self) -> None:
        if isinstance(self._pool, _PlainPool):
            self._pool.close()
        self._client.close()

    def send(self, method: str, path: str, head: RequestHead | list[tuple[str, str]], body: bytes) -> SendResult:
        t0 = time.perf_counter()
        if not isinstance(head, RequestHead):
            head = RequestHead(head)
        timeout = gevent.Timeout._start_new_or_dummy(self.timeout_s)  # noqa: SLF001 - one deadline, one timer
        try:
            uri = self.base_path + path
            if head.expect or not uri.startswith("/"):  # 100-continue; a target geventhttpclient rewrites
                return self._via_httpclient(method, uri, head.headers, body, t0)
            return self._exchange(method, uri, head, body, t0)
        except gevent.Timeout as exc:
            if exc is not timeout:
                raise
            return SendResult(None, b"", "timeout", self._timeout_detail, 0)
        except Exception as exc:  # noqa: BLE001 - mapped to an error kind, never raised
            return error_result(exc)
        finally:
            timeout.close()

    def _exchange(self, method: str, uri: str, head: RequestHead, body: bytes, t0: float) -> SendResult:
        method = method.upper()
        payload = request_bytes(method, uri, head, body, self._host_line)
        pool = self._pool
        sock = pool.get_socket()
        try:
            sent = 0
            if self._plain:  # one non-blocking send on the real socket: the whole request, nearly always
                try:
                    sent = sock._sock.send(payload)  # noqa: SLF001
                except BlockingIOError:
                    sent = 0
            if sent < len(payload):
                sock.sendall(memoryview(payload)[sent:])
        except BaseException:
            pool.release_socket(sock)
            raise
        # reads the status line and headers (and what came with them); hands the socket back when complete
        response = HTTPSocketPoolResponse(sock, pool, block_size=_BLOCK, method=method, headers_type=_LowerHeaders)
        return self._answer(response, response._headers_index, t0)  # noqa: SLF001 - our own _LowerHeaders

    def _via_httpclient(self, method: str, uri: str, headers: list[tuple[str, str]], body: bytes,
                        t0: float) -> SendResult:
        self._state.taken = False
        hdrs = Headers()
        for k, v in headers:
            hdrs.add(k, v)
        response = self._client.request(method, uri, body=body, headers=hdrs)
        return self._answer(response, {k.lower(): v for k, v in response.items()}, t0)

    def _answer(self, response: Any, resp_headers: dict[str, str], t0: float) -> SendResult:
        status = response.status_code
        refused = declared_too_large(status, resp_headers, self.max_response_bytes)
        if refused is not None:
            self._drop(response)
            return refused
        if is_event_stream(resp_headers):
            return self._read_stream(response, status, resp_headers, t0)
        if response.message_complete:  # the whole answer came with the headers: the common case
            body = bytes(response._body_buffer)  # noqa: SLF001
            del response._body_buffer[:]  # noqa: SLF001
            size = len(body)
            if size > self.max_response_bytes:
                return self._over_cap(response, status, size, "body", resp_headers)
            response.release()
            return SendResult(status, body, status_kind(status), None, size, resp_headers)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_response_bytes:
                return self._over_cap(response, status, size, "body", resp_headers)
            chunks.append(chunk)
        response.release()
        return SendResult(status, b"".join(chunks), status_kind(status), None, size, resp_headers)

    def _read_stream(self, response: Any, status: int, resp_headers: dict[str, str], t0: float) -> SendResult:
        chunks: list[bytes] = []
        arrivals: list[tuple[int, float]] = []
        stream = StreamBody(resp_headers, self.max_response_bytes)
        kind = status_kind(status)
        detail = None
        while True:
            try:
                piece = _read_available(response)
            except (gevent.Timeout, TimeoutError):
                self._drop(response)
                raise  # the deadline, not the stream, ended it: send() records a timeout
            except Exception as exc:  # noqa: BLE001 - resets and geventhttpclient's parse errors alike
                kind = "truncated_stream"
                detail = f"the stream ended before the answer did: {type(exc).__name__}: {exc}"[:300]
                self._drop(response)
                break
            if piece is None:
                break
            if not piece:
                continue
            at_ms = (time.perf_counter() - t0) * 1000.0
            refused = stream.add(piece, status, resp_headers)
            if refused is not None:
                self._drop(response)
                return refused
            if stream.last:
                chunks.append(stream.last)
                arrivals.append((stream.decoded, at_ms))
        ended = stream.end(status, resp_headers) if kind != "truncated_stream" else None
        if ended is not None:
            return ended
        return SendResult(status, b"".join(chunks), kind, detail, stream.wire, resp_headers, arrivals, stream.decoded)

    def _over_cap(self, response: Any, status: int, size: int, what: str,
                  resp_headers: dict[str, str]) -> SendResult:
        self._drop(response)
        return SendResult(status, b"", "too_large", f"{what} over the cap of {self.max_response_bytes} bytes", size,
                          resp_headers)

    @staticmethod
    def _drop(response: Any) -> None:
        # The rest of an oversized body is never read: the connection cannot be reused.
        pool, sock = getattr(response, "_pool", None), getattr(response, "_sock", None)
        if pool is not None and sock is not None:
            pool.release_socket(sock)  # closes it and frees its slot in the pool
        response._sock = response._pool = None


def request_bytes(method: str, uri: str, head: RequestHead, body: bytes, host_line: str) -> bytes:
    """The request as written on the wire (method upper-cased by the caller); ValueError, and nothing is
    sent, where geventhttpclient would refuse the request."""
    if head.error is not None:
        raise ValueError(head.error.partition(": ")[2])
    if not _TOKEN_RE.fullmatch(method):
        raise ValueError(f"invalid HTTP method {method!r}")
    if not _REQUEST_TARGET_RE.fullmatch(uri) or uri.startswith("//"):
        raise ValueError(f"invalid request URI {uri!r}")
    length = f"Content-Length: {len(body)}\r\n" if body or method in _BODY_METHODS else ""
    data = f"{method} {uri} HTTP/1.1\r\n{head.lines}{host_line}{length}\r\n".encode("latin-1")
    return data + body if body else data


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


def _read_available(response: Any) -> bytes | None:
    """What the answer has delivered so far, waiting for one socket read if nothing is buffered; None once
    the HTTP message is complete. geventhttpclient's read(n) waits for n bytes, which would hide when
    each event arrived."""
    buf: bytearray = response._body_buffer
    if not buf:
        if response.message_complete:
            return None
        sock = response._sock
        if sock is None:
            raise ConnectionError("connection closed before the end of the answer")
        data = sock.recv(_CHUNK)
        response.feed(data)  # b"" at EOF: completes a close-delimited body, else raises
        if not data and not response.message_complete:
            raise ConnectionError("connection closed before the end of the answer")
    out = bytes(buf)
    del buf[:]
    return out


def status_kind(status: int) -> str | None:
    return "http_5xx" if status >= 500 else "http_4xx" if status >= 400 else None
