"""Plain-HTTP legs driven by the event loop's own callbacks: no greenlet, no gevent.Timeout per leg.

A greenlet per leg costs four switches, a timer and a socket wrapper per exchange, more than the
exchange itself; at thousands of legs/s that set the ceiling of the replay. Here a leg is an `Exchange`
object: the request is written with one non-blocking send from the dispatcher (so both legs of a pair
leave microseconds apart), the answer is read by a libev io watcher's callback on the real socket and
parsed by geventhttpclient's llhttp parser, and deadlines are swept by one timer per client (every
10 ms) in send order. The callback hands the finished `SendResult` to `done(token, result, done_at)`,
which runs in the hub and must not block.

The rules of http_client hold here too: no retries (a pooled connection the target closed is noticed by
a non-blocking peek before the send; one that breaks after it is a reset), no headers of its own, one
deadline for the whole exchange, a body cap (too_large), answers returned with their Content-Encoding (the
finisher decodes them), event streams decoded and timed per read (`arrivals`, the kernel's receive times) and kept when cut short
(truncated_stream). TLS targets, `Expect: 100-continue` and request targets that do
not start with "/" take http_client's general path.
"""
from __future__ import annotations

import _socket
import errno
import re
import socket
import struct
import sys
import time
from typing import Any, Callable

import gevent
from geventhttpclient.response import HTTPResponse

from .http_client import (_CHUNK, _PEEK, RequestHead, SendResult, StreamBody, _LowerHeaders, declared_too_large,
                          error_result, is_event_stream, request_bytes, status_kind)

__all__ = ["EventedClient", "Done"]

Done = Callable[[Any, SendResult, float], None]
_SWEEP_S = 0.01
_CONNECTING, _SENDING, _READING, _OVER = 0, 1, 2, 3
# The kernel's receive time of the bytes each read returns (SO_TIMESTAMPNS, Linux): an event stream's arrival
# times are when its bytes reached this machine, not when a loop busy with other legs (or a process the
# scheduler left waiting) got round to reading them.
# (Python names the option on no platform; 35 is its number in Linux on x86 and ARM)
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform == "linux" else None)
_STAMP_SPACE = socket.CMSG_SPACE(16)


# A whole, plain answer in one read (the usual small JSON answer): status line, headers, Content-Length body.
_QUICK_HEAD = re.compile(rb"HTTP/1\.1 ([2-5][0-9][0-9])(?: [\t\x20-\x7e]*)?\r\n"
                         rb"((?:[!#$%&'*+\-.^_`|~0-9A-Za-z]+:[\t\x20-\x7e]*\r\n)*)\r\n")


def _quick_answer(data: bytes, method: str) -> tuple[int, dict[str, str], bytes, bool] | None:
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


def _connected(sock: Any) -> bool:
    try:
        sock.getpeername()
    except OSError:  # ENOTCONN: the handshake is still going on (or failed)
        return False
    return True


class _Conn:
    """A connection; its reader watches it from connect to close (no watcher start/stop per leg), for the
    exchange it carries (`ex`) or, idle, for the target closing it."""

    __slots__ = ("sock", "reader", "writer", "ex")

    def __init__(self, sock: Any, loop: Any) -> None:
        self.sock = sock
        if _SO_TIMESTAMPNS is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            except OSError:
                pass  # no stamps: arrival times are read times
        fd = sock.fileno()
        self.reader = loop.io(fd, 1)
        self.writer = loop.io(fd, 2)
        self.ex: Exchange | None = None

    def close(self) -> None:
        self.reader.stop()
        self.writer.stop()
        self.reader.close()
        self.writer.close()
        try:
            self.sock.close()
        except OSError:
            pass


class Exchange:
    __slots__ = ("conn", "payload", "parser", "done", "token", "t0", "started", "state", "addr_i", "final",
                 "stream", "chunks", "arrivals", "sbody", "method")

    def __init__(self, method: str, payload: bytes, done: Done, token: Any, started: float) -> None:
        self.method = method
        self.conn: _Conn | None = None
        self.payload: Any = payload
        self.parser: Any = None  # llhttp, made only for an answer that _quick_answer does not take
        self.done = done
        self.token = token
        self.t0 = time.perf_counter()
        self.started = started  # monotonic, for the deadline sweep
        self.state = _SENDING
        self.addr_i = 0
        self.final = False  # headers of a final (non-1xx) answer parsed
        self.stream = False
        self.chunks: list[bytes] = []
        self.arrivals: list[tuple[int, float]] = []
        self.sbody: StreamBody | None = None  # an event stream's body: wire and decoded sizes, the decoder


class EventedClient:
    def __init__(self, host: str, port: int, host_line: str, *, timeout_s: float, connect_timeout_s: float,
                 max_response_bytes: int) -> None:
        self.address = (host, port)
        self.host_line = host_line
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_response_bytes = max_response_bytes
        self._timeout_detail = f"no complete answer within {timeout_s:g} s"
        self._loop = gevent.get_hub().loop
        self._idle: list[_Conn] = []
        self._inflight: dict[Exchange, None] = {}  # in start order: deadlines sweep from the front
        # still connecting: few, swept whole (the sweep of _inflight stops at the first leg younger than the
        # whole timeout, never walking every open stream older than the connect timeout)
        self._connecting: dict[Exchange, None] = {}
        self._resolved: list[Any] | None = None
        self._resolve_error: OSError | None = None
        self._sweeper = self._loop.timer(_SWEEP_S, _SWEEP_S, ref=False)
        self._sweeper.start(self._sweep)
        self._closed = False

    def resolve(self) -> None:
        """Resolve the target once, before the first intended send (gevent resolves in a thread). A failure is
        kept: every leg then fails with it at once, and the send schedule never waits for a lookup again."""
        if self._resolved is None and self._resolve_error is None:
            try:
                self._resolved = [(f, k, p, a) for f, k, p, _, a in
                                  socket.getaddrinfo(*self.address, 0, socket.SOCK_STREAM)]
            except OSError as exc:
                self._resolve_error = exc
                raise

    def start(self, method: str, uri: str, head: RequestHead, body: bytes, done: Done, token: Any) -> None:
        """Send now; `done` is called once, later (or now, for a request that cannot be sent)."""
        try:
            method = method.upper()
            payload = request_bytes(method, uri, head, body, self.host_line)
        except ValueError as exc:
            done(token, error_result(exc), time.time())
            return
        ex = Exchange(method, payload, done, token, time.monotonic())
        self._inflight[ex] = None
        conn = self._pooled()
        if conn is None:
            self._connect(ex)
        else:
            # The connection's reader is still on: from here on it reads for this exchange (a target that
            # answers or closes before the request is all out must end this leg, not look like an idle close).
            ex.conn, conn.ex = conn, ex
            self._send(ex)

    # -- connections -------------------------------------------------------------------------------------
    def _pooled(self) -> _Conn | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.sock.fileno() < 0:  # closed while idle
                continue
            try:
                conn.sock.recv(1, _PEEK)  # an idle keep-alive connection has nothing to read: EOF means closed
            except BlockingIOError:
                return conn
            except OSError:
                pass
            conn.close()
        return None

    def _connect(self, ex: Exchange) -> None:
        if self._resolved is None:
            try:
                self.resolve()
            except OSError:
                pass
            if self._resolve_error is not None:
                self._finish(ex, error_result(self._resolve_error))
                return
        assert self._resolved is not None
        family, kind, proto, addr = self._resolved[ex.addr_i]
        try:
            sock = _socket.socket(family, kind, proto)
        except OSError as exc:
            self._finish(ex, error_result(exc))
            return
        sock.setblocking(False)
        conn = ex.conn = _Conn(sock, self._loop)
        conn.ex = ex
        ex.state = _CONNECTING
        self._connecting[ex] = None
        err = sock.connect_ex(addr)
        if err == 0:
            ex.state = _SENDING
            self._connecting.pop(ex, None)
            self._send(ex)
        elif err in (errno.EINPROGRESS, errno.EAGAIN):
            conn.writer.start(self._on_connected, ex)
        else:
            self._connect_failed(ex, err)

    def _on_connected(self, ex: Exchange) -> None:
        conn = ex.conn
        if ex.state != _CONNECTING or conn is None:
            return
        conn.writer.stop()
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(ex, err)
            return
        ex.state = _SENDING
        self._connecting.pop(ex, None)
        self._send(ex)

    def _connect_failed(self, ex: Exchange, err: int) -> None:
        assert ex.conn is not None and self._resolved is not None
        ex.conn.close()
        ex.conn = None
        if ex.addr_i + 1 < len(self._resolved):  # the next address of the name, as socket.create_connection does
            ex.addr_i += 1
            self._connect(ex)
            return
        cls = ConnectionRefusedError if err == errno.ECONNREFUSED else OSError
        self._finish(ex, error_result(cls(err, f"[Errno {err}] {errno.errorcode.get(err, '')}: cannot connect to "
                                               f"{self.address[0]}:{self.address[1]}")))

    # -- the exchange ------------------------------------------------------------------------------------
    def _send(self, ex: Exchange) -> None:
        conn = ex.conn
        assert conn is not None
        try:
            n = conn.sock.send(ex.payload)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            self._broken(ex, exc)
            return
        if n < len(ex.payload):
            ex.payload = memoryview(ex.payload)[n:]
            conn.writer.start(self._on_writable, ex)
            return
        ex.payload = None
        ex.state = _READING
        # Arrival times count from here, the request's last byte handed to the kernel: a connection still
        # being set up, or a loop late to write, is not time the server took to its first token.
        ex.t0 = time.perf_counter()
        if not conn.reader.active:
            conn.reader.start(self._on_readable, conn)

    def _on_writable(self, ex: Exchange) -> None:
        if ex.state != _SENDING or ex.conn is None:
            return
        ex.conn.writer.stop()
        self._send(ex)

    def _on_readable(self, conn: _Conn) -> None:
        ex = conn.ex
        if ex is None:  # idle: the target closed it (or sent bytes nobody asked for)
            conn.close()
            return
        if ex.state != _READING:  # an answer before the request is out: read once it is
            conn.reader.stop()
            return
        try:
            data, stamp, _, _ = conn.sock.recvmsg(_CHUNK, _STAMP_SPACE)
        except BlockingIOError:
            return
        except OSError as exc:
            self._broken(ex, exc)
            return
        parser = ex.parser
        if parser is None:
            quick = _quick_answer(data, ex.method)
            if quick is not None and len(quick[2]) <= self.max_response_bytes:
                status, headers, body, reuse = quick
                self._release(ex, reuse=reuse)
                self._finish(ex, SendResult(status, body, status_kind(status), None, len(body), headers))
                return
            parser = ex.parser = HTTPResponse(method=ex.method, headers_type=_LowerHeaders)
        try:
            parser.feed(data)  # b"" at EOF: completes a close-delimited body, else raises
        except Exception as exc:  # noqa: BLE001 - llhttp's parse errors
            self._broken(ex, exc)
            return
        if not data and not parser.message_complete:
            self._broken(ex, ConnectionResetError(errno.ECONNRESET, "connection closed before the end of the answer"))
            return
        if not ex.final:
            if not parser.headers_complete or parser.get_code() < 200:  # an interim 1xx: the final one follows
                if not data:
                    self._broken(ex, ConnectionResetError(errno.ECONNRESET, "connection closed after an interim answer"))
                return
            ex.final = True
            if self._headers_read(ex):
                return
        buf = parser._body_buffer  # noqa: SLF001 - the parser's body so far
        if ex.stream:
            if buf:
                at_ms = (time.perf_counter() - ex.t0) * 1000.0
                if stamp and stamp[0][1] == _SO_TIMESTAMPNS:  # minus how long the bytes waited in the kernel
                    sec, nsec = struct.unpack_from("qq", stamp[0][2])
                    waited = time.time() - (sec + nsec * 1e-9)
                    if waited > 0:
                        at_ms = max(at_ms - waited * 1000.0, 0.0)
                piece = bytes(buf)
                del buf[:]
                sbody = ex.sbody
                assert sbody is not None
                refused = sbody.add(piece, parser.get_code(), parser._headers_index)  # noqa: SLF001
                if refused is not None:
                    self._release(ex, reuse=False)
                    self._finish(ex, refused)
                    return
                if sbody.last:
                    ex.chunks.append(sbody.last)
                    ex.arrivals.append((sbody.decoded, at_ms))
        elif len(buf) > self.max_response_bytes:
            self._over_cap(ex, len(buf), "body")
            return
        if parser.message_complete:
            self._complete(ex)

    def _headers_read(self, ex: Exchange) -> bool:
        """The final answer's headers are in: True when that already ended the exchange (too large)."""
        headers = ex.parser._headers_index  # noqa: SLF001 - our own _LowerHeaders
        refused = declared_too_large(ex.parser.get_code(), headers, self.max_response_bytes)
        if refused is not None:
            self._release(ex, reuse=False)
            self._finish(ex, refused)
            return True
        ex.stream = is_event_stream(headers)
        if ex.stream:
            ex.sbody = StreamBody(headers, self.max_response_bytes)
        return False

    def _complete(self, ex: Exchange) -> None:
        parser = ex.parser
        status = parser.get_code()
        self._release(ex, reuse=not parser.should_close())
        headers = parser._headers_index  # noqa: SLF001
        if ex.sbody is not None:
            ended = ex.sbody.end(status, headers)
            self._finish(ex, ended or SendResult(status, b"".join(ex.chunks), status_kind(status), None, ex.sbody.wire,
                                                 headers, ex.arrivals, ex.sbody.decoded))
            return
        body = bytes(parser._body_buffer)  # noqa: SLF001
        self._finish(ex, SendResult(status, body, status_kind(status), None, len(body), headers))

    def _broken(self, ex: Exchange, exc: BaseException) -> None:
        """The connection failed or closed early. A stream keeps what arrived (truncated_stream)."""
        self._release(ex, reuse=False)
        if ex.sbody is not None and ex.final:
            detail = f"the stream ended before the answer did: {type(exc).__name__}: {exc}"[:300]
            self._finish(ex, SendResult(ex.parser.get_code(), b"".join(ex.chunks), "truncated_stream", detail,
                                        ex.sbody.wire, ex.parser._headers_index, ex.arrivals,  # noqa: SLF001
                                        ex.sbody.decoded))
        else:
            self._finish(ex, error_result(exc))

    def _over_cap(self, ex: Exchange, size: int, what: str) -> None:
        # The rest of an oversized body is never read: the connection cannot be reused.
        self._release(ex, reuse=False)
        self._finish(ex, SendResult(ex.parser.get_code(), b"", "too_large",
                                    f"{what} over the cap of {self.max_response_bytes} bytes", size,
                                    ex.parser._headers_index))  # noqa: SLF001

    def _release(self, ex: Exchange, reuse: bool) -> None:
        conn, ex.conn = ex.conn, None
        if conn is None:
            return
        conn.ex = None
        if reuse and not self._closed:
            conn.writer.stop()
            self._idle.append(conn)
        else:
            conn.close()

    def _finish(self, ex: Exchange, result: SendResult) -> None:
        if ex.state == _OVER:
            return
        ex.state = _OVER
        self._inflight.pop(ex, None)
        self._connecting.pop(ex, None)
        ex.done(ex.token, result, time.time())

    def _sweep(self) -> None:
        now = time.monotonic()
        expired = []
        for ex in self._inflight:  # start order: nothing later can have expired once one is young enough
            if ex.started + self.timeout_s > now:
                break
            expired.append((ex, self._timeout_detail))
        for ex in self._connecting:
            if ex.started + self.connect_timeout_s <= now < ex.started + self.timeout_s:
                if ex.conn is not None and _connected(ex.conn.sock):
                    continue  # the kernel finished the handshake; a loop late to notice is no connect timeout
                expired.append((ex, f"no connection within {self.connect_timeout_s:g} s"))
        for ex, detail in expired:
            self._release(ex, reuse=False)
            self._finish(ex, SendResult(None, b"", "timeout", detail, 0))

    def close(self) -> None:
        """Stop the sweep and close every connection; exchanges still open end as timeouts."""
        self._closed = True
        for ex in list(self._inflight):
            self._release(ex, reuse=False)
            self._finish(ex, SendResult(None, b"", "timeout", self._timeout_detail, 0))
        self._sweeper.stop()
        self._sweeper.close()
        while self._idle:
            self._idle.pop().close()
