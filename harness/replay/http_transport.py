"""HTTP/1.1 and HTTPS legs driven by the event loop's own callbacks: no greenlet, no gevent.Timeout per leg.

A greenlet per leg costs four switches, a timer and a socket wrapper per exchange, more than the
exchange itself; at thousands of legs/s that set the ceiling of the replay. Here a leg is an `_Exchange`:
the request is written with one non-blocking send from the dispatcher (so both legs of a pair leave
microseconds apart), the answer is read by a libev io watcher's callback on the real socket and parsed
(harness.replay.wire: a quick parse of a whole plain answer, else llhttp), and deadlines are swept by one
timer per transport (every 10 ms) in send order.

TLS runs on the same non-blocking sockets through an `ssl.SSLObject` over two memory BIOs: the handshake
and the records are driven by the same callbacks, so a handshake that hangs is a timeout (the connect
deadline covers it), never a stall of the send loop. The context is harness.replay.tls's (verified by
default, ca_file, client certificate, server_name as SNI and checked name, verify: false). A TLS failure
is the `tls` error kind; a peer that closes without close_notify ends the stream as a plain close does
(as ssl's suppress_ragged_eofs), so close-delimited bodies work over TLS. At most _MAX_OPENING_TLS
connections per target are in their handshake at once; further legs wait (state _QUEUED) for one of
them or for a pooled connection. `warm(n)` opens connections before the first send (the dispatcher calls it),
and new connections resume the TLS session of the last full handshake.

What a real client gets right, here too: interim 1xx answers (100 Continue, 103 Early Hints) are skipped
for the final one; a captured `Expect: 100-continue` sends the head, then the body on 100 Continue or
after _CONTINUE_WAIT_S without one (as curl), or never when the final answer comes first; an answer that
arrives while the request body is still going out ends the leg with that answer (the connection is then
closed); close-delimited bodies end at the close; a HEAD answer ends with its headers; chunked answers.

No retries: a pooled connection the target closed is noticed by a non-blocking peek before the send; one
that breaks after it is a reset. One deadline for the whole exchange, a body cap (too_large), answers
returned with their Content-Encoding (the finisher decodes them), event streams decoded and timed per read
(`arrivals`) and kept when cut short (truncated_stream).
"""
from __future__ import annotations

import _socket
import collections
import errno
import socket
import ssl
import struct
import sys
import time
from typing import Any, Mapping
from urllib.parse import urlsplit

import gevent

from .tls import client_context
from .transport import Done, Limits
from .wire import (CHUNK, PEEK, RequestHead, SendResult, StreamBody, declared_too_large, error_result,
                   is_event_stream, new_parser, origin_form, quick_answer, request_bytes, status_kind)

__all__ = ["HttpTransport"]

_SWEEP_S = 0.01
_CONTINUE_WAIT_S = 1.0
_FRESH_IDLE_S = 0.25  # a pooled connection idle for less is reused without looking for the target's close
_TLS_SLICE = 262144  # plaintext encrypted per step: a large body is not copied whole into ciphertext at once
# TLS connections in their handshake at once, per target; further legs wait for one of them or for a pooled
# connection. A handshake costs the loop (and a co-located target) far more CPU than an exchange: opening
# one per leg while the first ones are still in their handshakes feeds on itself until every leg times out.
_MAX_OPENING_TLS = 8
_QUEUED, _CONNECTING, _HANDSHAKING, _SENDING, _CONTINUE, _READING, _OVER = range(7)
# The kernel's receive time of the bytes each plain read returns (SO_TIMESTAMPNS, Linux): an event stream's
# arrival times are when its bytes reached this machine, not when a loop busy with other legs (or a process
# the scheduler left waiting) got round to reading them. (Python names the option on no platform; 35 is its
# number in Linux on x86 and ARM.)
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if sys.platform == "linux" else None)
_STAMP_SPACE = socket.CMSG_SPACE(16)


def _peer_connected(sock: Any) -> bool:
    try:
        sock.getpeername()
    except OSError:  # ENOTCONN: the handshake is still going on (or failed)
        return False
    return True


class _Conn:
    """A connection; its reader watches it from connect to close (no watcher start/stop per leg), for the
    exchange it carries (`ex`) or, idle, for the target closing it. `tls`: the SSLObject of an https one;
    `wbuf`: bytes for the socket not yet written."""

    __slots__ = ("sock", "reader", "writer", "ex", "tls", "inbio", "outbio", "wbuf", "opening", "stamp", "fresh",
                 "idle_at")

    def __init__(self, sock: Any, loop: Any) -> None:
        self.sock = sock
        self.stamp: Any = None  # the ancillary data of the last plain read: its kernel receive time
        if _SO_TIMESTAMPNS is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            except OSError:
                pass  # no stamps: arrival times are read times
        fd = sock.fileno()
        self.reader = loop.io(fd, 1)
        self.writer = loop.io(fd, 2)
        self.ex: _Exchange | None = None
        self.tls: Any = None
        self.inbio: Any = None
        self.outbio: Any = None
        self.wbuf: Any = b""
        self.opening = True  # connecting, or in its TLS handshake
        self.fresh = False  # TLS: a full handshake whose session has not been offered to the transport yet
        self.idle_at = 0.0  # time.monotonic() when it last went back to the pool

    def close(self) -> None:
        self.reader.stop()
        self.writer.stop()
        self.reader.close()
        self.writer.close()
        try:
            self.sock.close()
        except OSError:
            pass


def _ignore(_token: Any, _result: SendResult, _at: float) -> None:
    """The end of a warming exchange: it carries no leg (a failure shows again in the legs that follow)."""


class _Exchange:
    __slots__ = ("conn", "payload", "later", "parser", "done", "token", "t0", "started", "state", "addr_i",
                 "final", "stream", "chunks", "arrivals", "sbody", "method", "head_out_at", "warm", "again", "reused",
                 "answered", "resent")

    def __init__(self, method: str, payload: bytes, later: bytes | None, done: Done, token: Any,
                 started: float) -> None:
        self.method = method
        self.conn: _Conn | None = None
        self.payload: Any = payload
        self.later = later  # the body of an Expect: 100-continue request, sent on 100 Continue
        self.parser: Any = None  # llhttp, made only for an answer that quick_answer does not take
        self.done = done
        self.token = token
        self.t0 = time.time()  # the wall clock, as the kernel's receive times of a stream's reads
        self.started = started  # monotonic, for the deadline sweep
        self.head_out_at = 0.0  # monotonic: when an Expect: 100-continue head was out
        self.state = _SENDING
        self.addr_i = 0
        self.final = False  # headers of a final (non-1xx) answer parsed
        self.stream = False
        self.chunks: list[bytes] = []
        self.arrivals: list[tuple[int, float]] = []
        self.sbody: StreamBody | None = None  # an event stream's body: wire and decoded sizes, the decoder
        self.warm = False  # opens a connection for the pool and sends nothing (HttpTransport.warm)
        # The request once more, for a resend (_broken); not for an Expect: 100-continue one (sent in two parts)
        self.again: bytes | None = payload if later is None else None
        self.reused = False  # on a kept-alive connection from the pool
        self.answered = False  # a byte of the answer arrived
        self.resent: str | None = None  # why it was sent a second time


class HttpTransport:
    """The transport (harness.replay.transport) of an http:// or https:// target."""

    def __init__(self, url: str, limits: Limits, tls: Mapping[str, Any] | None = None) -> None:
        parts = urlsplit(url)
        https = parts.scheme.lower() == "https"
        host = parts.hostname or "127.0.0.1"
        port = parts.port or (443 if https else 80)
        self.address = (host, port)
        self.base_path = parts.path.rstrip("/")
        # Host as geventhttpclient writes it: brackets for IPv6, the port unless it is 80 or 443.
        host_port = f"[{host}]" if ":" in host and not host.startswith("[") else host
        authority = f"{host_port}{'' if port in (80, 443) else f':{port}'}"
        self.host_line = f"Host: {authority}\r\n"
        self._base_url = f"{parts.scheme.lower()}://{authority}/"
        self._tls_context: ssl.SSLContext | None = client_context(tls) if https else None
        self._session: ssl.SSLSession | None = None  # resumed by new connections (_keep_session)
        self._server_name = (tls or {}).get("server_name") or host
        self.timeout_s = limits.timeout_s
        self.connect_timeout_s = limits.connect_timeout_s
        self.max_response_bytes = limits.max_response_bytes
        self._timeout_detail = f"no complete answer within {limits.timeout_s:g} s"
        self._loop = gevent.get_hub().loop
        self._idle: list[_Conn] = []
        self._inflight: dict[_Exchange, None] = {}  # in start order: deadlines sweep from the front
        self._continues: dict[_Exchange, None] = {}  # heads out, waiting for 100 Continue
        # Legs that opened a connection, for the connect timeout: few at a time, swept whole, so the sweep of
        # _inflight can stop at the first leg younger than the answer timeout (with long streams open, a
        # sweep of every leg older than the connect timeout walked them all every 10 ms).
        self._connecting: dict[_Exchange, None] = {}
        self._opening = 0  # connections connecting or in their TLS handshake
        self._max_opening = _MAX_OPENING_TLS if https else 1 << 30
        self._waiting: collections.deque[_Exchange] = collections.deque()  # legs waiting for a connection
        self._drain_due = False
        self._resolved: list[Any] | None = None
        self._resolve_error: OSError | None = None
        self._sweeper = self._loop.timer(_SWEEP_S, _SWEEP_S, ref=False)
        self._sweeper.start(self._sweep)
        self._closed = False

    def prepare(self) -> None:
        """Resolve the target once, before the first intended send (gevent resolves in a thread). A failure is
        kept: every leg then fails with it at once, and the send schedule never waits for a lookup again."""
        if self._resolved is None and self._resolve_error is None:
            try:
                self._resolved = [(f, k, p, a) for f, k, p, _, a in
                                  socket.getaddrinfo(*self.address, 0, socket.SOCK_STREAM)]
            except OSError as exc:
                self._resolve_error = exc

    def warm(self, connections: int) -> None:
        """Open `connections` connections for the pool ahead of the first send, nothing sent on them: over TLS
        each costs a handshake (about 1 ms of CPU here and as much at the target), and a schedule that starts
        with an empty pool opens dozens at once in its first milliseconds, each on the send path (send lag
        p99 of 3-5 ms at 600 pairs/s came from that burst). At most _MAX_OPENING_TLS handshake at once, as
        for legs; a failure is dropped (the legs that follow meet it and record it). The first send takes
        the pool as it is: warming connections not yet started are dropped then. Plain HTTP is not warmed:
        a plain connect costs tens of microseconds, and its start was not measured to need it."""
        if self._tls_context is None:
            return
        for _ in range(connections):
            ex = _Exchange("", b"", None, _ignore, None, time.monotonic())
            ex.warm = True
            self._inflight[ex] = None
            if self._opening >= self._max_opening:
                ex.state = _QUEUED
                self._waiting.append(ex)
            else:
                self._connect(ex)

    def _stop_warming(self) -> None:
        """The first leg is due: warming connections that have not started their connect give way to it."""
        kept = collections.deque(ex for ex in self._waiting if not ex.warm)
        for ex in self._waiting:
            if ex.warm:
                ex.state = _OVER
                self._inflight.pop(ex, None)
        self._waiting = kept

    def start(self, method: str, path: str, head: RequestHead, body: bytes, done: Done, token: Any) -> None:
        """Send now; `done` is called once, later (or now, for a request that cannot be sent)."""
        if self._waiting and self._waiting[0].warm:
            self._stop_warming()
        try:
            method = method.upper()
            uri = origin_form(self.base_path + path, self._base_url)
            later = body if head.expect and body else None
            payload = request_bytes(method, uri, head, body, self.host_line, with_body=later is None)
        except ValueError as exc:
            done(token, error_result(exc), time.time())
            return
        ex = _Exchange(method, payload, later, done, token, time.monotonic())
        self._inflight[ex] = None
        conn = self._pooled(resendable=later is None)
        if conn is None:
            if self._opening >= self._max_opening:
                ex.state = _QUEUED
                self._waiting.append(ex)
                return
            self._connect(ex)
        else:
            # The connection's reader is still on: from here on it reads for this exchange (a target that
            # answers or closes before the request is all out ends this leg, not an idle close).
            ex.conn, conn.ex, ex.reused = conn, ex, True
            self._send(ex)

    # -- connections -------------------------------------------------------------------------------------
    def _pooled(self, resendable: bool = True) -> _Conn | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.sock.fileno() < 0:  # closed while idle
                continue
            if resendable and time.monotonic() - conn.idle_at < _FRESH_IDLE_S:
                # Back in the pool a moment ago: a target's own idle close (its keep-alive timeout, a 408 before
                # it) comes after seconds, and a close right after an answer is what the resend is for (an
                # Expect: 100-continue request is never resent: it always looks). The check below is a syscall
                # and an exception, a few percent of a leg at thousands a second.
                return conn
            try:
                # an idle keep-alive connection has nothing to read: EOF means closed
                peeked = conn.sock.recv(1, PEEK)
            except BlockingIOError:
                return conn
            except OSError:
                peeked = b""
            if peeked and self._idle_ok(conn):
                return conn
            conn.close()
        return None

    def _idle_ok(self, conn: _Conn) -> bool:
        """Bytes arrived on an idle connection: still usable when they were TLS records without application
        data (TLS 1.3 session tickets arrive after the answer); stray bytes or a close end it."""
        if conn.tls is None:
            return False
        try:
            data = conn.sock.recv(CHUNK)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not data:
            return False
        conn.inbio.write(data)
        try:
            conn.tls.read(1)
        except ssl.SSLWantReadError:
            self._keep_session(conn)
            return True
        except (ssl.SSLError, OSError):
            return False
        return False

    def _connect(self, ex: _Exchange) -> None:
        if self._resolved is None:
            self.prepare()
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
        ex.reused = False
        self._opening += 1
        conn.ex = ex
        ex.state = _CONNECTING
        self._connecting[ex] = None
        err = sock.connect_ex(addr)
        if err == 0:
            self._connected(ex)
        elif err in (errno.EINPROGRESS, errno.EAGAIN):
            conn.writer.start(self._on_connected, ex)
        else:
            self._connect_failed(ex, err)

    def _on_connected(self, ex: _Exchange) -> None:
        conn = ex.conn
        if ex.state != _CONNECTING or conn is None:
            return
        conn.writer.stop()
        err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            self._connect_failed(ex, err)
            return
        self._connected(ex)

    def _connected(self, ex: _Exchange) -> None:
        conn = ex.conn
        assert conn is not None
        conn.reader.start(self._on_readable, conn)
        if self._tls_context is None:
            self._opened(conn)
            ex.state = _SENDING
            self._send(ex)
            return
        conn.inbio, conn.outbio = ssl.MemoryBIO(), ssl.MemoryBIO()
        try:
            conn.tls = self._tls_context.wrap_bio(conn.inbio, conn.outbio, server_hostname=self._server_name,
                                                  session=self._session)
        except (ssl.SSLError, ValueError) as exc:
            self._release(ex, reuse=False)
            self._finish(ex, error_result(exc))
            return
        ex.state = _HANDSHAKING
        self._handshake(ex)

    def _handshake(self, ex: _Exchange) -> None:
        conn = ex.conn
        assert conn is not None
        try:
            conn.tls.do_handshake()
        except ssl.SSLWantReadError:
            conn.wbuf = conn.outbio.read()
            try:
                self._flush(ex)
            except OSError as exc:
                self._broken(ex, exc)
            return
        except (ssl.SSLError, OSError) as exc:
            self._broken(ex, exc)
            return
        conn.wbuf = conn.outbio.read()
        conn.fresh = not conn.tls.session_reused
        self._opened(conn)
        ex.state = _SENDING
        self._send(ex)

    def _keep_session(self, conn: _Conn) -> None:
        """Offer the session of a full handshake for resumption by the connections opened after it, once it
        carries a ticket (TLS 1.3 sends tickets after the handshake). A resumed handshake costs the client
        about a sixth of a full one (0.2 against 1.4 ms of CPU here, no certificate chain to verify) and the
        target its signature; a target that refuses the session gets a full handshake, whose session then
        replaces it."""
        if conn.fresh:
            session = conn.tls.session
            if session is not None and session.has_ticket:
                conn.fresh = False
                self._session = session

    def _connect_failed(self, ex: _Exchange, err: int) -> None:
        assert ex.conn is not None and self._resolved is not None
        self._opened(ex.conn)
        ex.conn.close()
        ex.conn = None
        if ex.addr_i + 1 < len(self._resolved):  # the next address of the name, as socket.create_connection does
            ex.addr_i += 1
            self._connect(ex)
            return
        cls = ConnectionRefusedError if err == errno.ECONNREFUSED else OSError
        self._finish(ex, error_result(cls(err, f"[Errno {err}] {errno.errorcode.get(err, '')}: cannot connect to "
                                               f"{self.address[0]}:{self.address[1]}")))

    def _opened(self, conn: _Conn) -> None:
        """The connection is out of its connect and handshake (ready, failed or closed)."""
        if conn.opening:
            conn.opening = False
            self._opening -= 1
            self._drain_soon()

    def _drain_soon(self) -> None:
        if self._waiting and not self._drain_due:
            self._drain_due = True
            self._loop.run_callback(self._drain)

    def _drain(self) -> None:
        """Legs waiting for a connection: a pooled one, or a new one while fewer than the limit are opening."""
        self._drain_due = False
        waiting = self._waiting
        while waiting:
            ex = waiting[0]
            if ex.state != _QUEUED:  # ended meanwhile (its deadline)
                waiting.popleft()
                continue
            # a warm-up opens its own connection; a resend too: a pooled one may be as stale as the first
            conn = None if ex.warm or ex.resent is not None else self._pooled(resendable=ex.again is not None)
            if conn is None and self._opening >= self._max_opening:
                return
            waiting.popleft()
            if conn is None:
                self._connect(ex)
            else:
                ex.conn, conn.ex, ex.reused = conn, ex, True
                ex.state = _SENDING
                self._send(ex)

    # -- writing -----------------------------------------------------------------------------------------
    def _flush(self, ex: _Exchange) -> bool:
        """Write the connection's pending bytes; False (and the writer on) when the socket is full."""
        conn = ex.conn
        assert conn is not None
        wbuf = conn.wbuf
        if not wbuf:
            return True
        # Arrival times count from just before the request's last bytes go to the kernel: read after the send,
        # the clock waits for the GIL the send released whenever another thread (the recorder's) is running.
        ex.t0 = time.time()
        try:
            n = conn.sock.send(wbuf)
        except BlockingIOError:
            n = 0
        if n < len(wbuf):
            conn.wbuf = memoryview(wbuf)[n:]
            conn.writer.start(self._on_writable, ex)
            return False
        conn.wbuf = b""
        return True

    def _send(self, ex: _Exchange) -> None:
        conn = ex.conn
        assert conn is not None
        try:
            while True:
                payload = ex.payload
                if payload and conn.tls is None:
                    conn.wbuf, ex.payload = payload, None  # (a plain connection has nothing pending here)
                elif payload and len(conn.wbuf) < _TLS_SLICE:
                    # Encrypted behind what is pending (a handshake's last flight): one write, so that the
                    # request never waits behind a small write for its ACK (Nagle, delayed ACK: 40 ms).
                    piece = payload[:_TLS_SLICE]
                    conn.tls.write(piece)
                    ex.payload = memoryview(payload)[len(piece):]
                    pending = conn.wbuf
                    conn.wbuf = bytes(pending) + conn.outbio.read() if pending else conn.outbio.read()
                if not self._flush(ex):
                    return
                if not ex.payload:
                    break
        except OSError as exc:  # ssl.SSLError included
            self._broken(ex, exc)
            return
        ex.payload = None
        if ex.warm:  # handshake done and flushed: the connection goes to the pool, no leg was carried
            ex.state = _READING
            self._release(ex, reuse=True)
            ex.state = _OVER
            self._inflight.pop(ex, None)
            self._connecting.pop(ex, None)
            return
        if ex.later is not None:
            ex.state = _CONTINUE
            ex.head_out_at = time.monotonic()
            self._continues[ex] = None
        else:
            # Arrival times count from the request's last send (_flush): a connection still being set up, or a
            # loop late to write, is not time the server took to its first token.
            ex.state = _READING

    def _send_body(self, ex: _Exchange) -> None:
        """The body of an Expect: 100-continue request: on 100 Continue, or when none came in time."""
        self._continues.pop(ex, None)
        ex.payload, ex.later = ex.later, None
        ex.state = _SENDING
        self._send(ex)

    def _on_writable(self, ex: _Exchange) -> None:
        conn = ex.conn
        if conn is None or conn.ex is not ex:
            return
        conn.writer.stop()
        if ex.state == _SENDING:
            self._send(ex)
            return
        try:  # TLS bytes of the handshake, or for the peer while reading (a key update)
            self._flush(ex)
        except OSError as exc:
            self._broken(ex, exc)

    # -- reading -----------------------------------------------------------------------------------------
    def _recv(self, conn: _Conn) -> tuple[bytes, bool]:
        """What arrived (plaintext) and whether the peer closed. BlockingIOError: nothing yet."""
        if conn.tls is None:
            data, conn.stamp, _, _ = conn.sock.recvmsg(CHUNK, _STAMP_SPACE)
            return data, not data
        data = conn.sock.recv(CHUNK)
        if data:
            conn.inbio.write(data)
        else:
            conn.inbio.write_eof()
        out = []
        eof = False
        while True:
            try:
                out.append(conn.tls.read(CHUNK))
            except ssl.SSLWantReadError:
                break
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                eof = True
                break
            if not out[-1]:
                eof = True
                break
        if conn.outbio.pending:  # a key update for the peer
            conn.wbuf = bytes(conn.wbuf) + conn.outbio.read()
            if conn.ex is not None and conn.ex.state != _SENDING:  # a send flushes it anyway
                self._flush(conn.ex)
        return b"".join(out), eof

    def _on_readable(self, conn: _Conn) -> None:
        ex = conn.ex
        if ex is None:  # idle: the target closed it, sent bytes nobody asked for, or (TLS) a session ticket
            if not self._idle_ok(conn):
                conn.close()
            return
        if ex.state == _HANDSHAKING:
            try:
                data = conn.sock.recv(CHUNK)
            except BlockingIOError:
                return
            except OSError as exc:
                self._broken(ex, exc)
                return
            if data:
                conn.inbio.write(data)
            else:
                conn.inbio.write_eof()
            self._handshake(ex)
            return
        try:
            data, eof = self._recv(conn)
        except BlockingIOError:
            return
        except OSError as exc:  # ssl.SSLError included
            self._broken(ex, exc)
            return
        if not data and not eof:  # TLS records without application data (session tickets)
            return
        if data:
            ex.answered = True
        parser = ex.parser
        if parser is None:
            quick = quick_answer(data, ex.method) if not eof else None
            if quick is not None and len(quick[2]) <= self.max_response_bytes:
                status, headers, body, reuse = quick
                self._release(ex, reuse=reuse)
                self._finish(ex, SendResult(status, body, status_kind(status), None, len(body), headers))
                return
            parser = ex.parser = new_parser(ex.method)
        try:
            if data:
                parser.feed(data)
            if eof:
                parser.feed(b"")  # completes a close-delimited body, else raises
        except Exception as exc:  # noqa: BLE001 - llhttp's parse errors
            self._broken(ex, exc)
            return
        if eof and not parser.message_complete:
            self._broken(ex, ConnectionResetError(errno.ECONNRESET, "connection closed before the end of the answer"))
            return
        if not ex.final:
            if not parser.headers_complete or parser.get_code() < 200:  # an interim 1xx: the final one follows
                if eof:
                    self._broken(ex, ConnectionResetError(errno.ECONNRESET, "connection closed after an interim answer"))
                elif ex.state == _CONTINUE and parser.headers_complete and parser.get_code() == 100:
                    self._send_body(ex)
                return
            ex.final = True
            if self._headers_read(ex):
                return
        buf = parser._body_buffer  # noqa: SLF001 - the parser's body so far
        if ex.stream:
            if buf:
                stamp = conn.stamp
                if stamp and stamp[0][1] == _SO_TIMESTAMPNS:  # when the bytes reached the kernel, not the read
                    sec, nsec = struct.unpack_from("qq", stamp[0][2])
                    at_ms = max((sec + nsec * 1e-9 - ex.t0) * 1000.0, 0.0)
                else:
                    at_ms = (time.time() - ex.t0) * 1000.0
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

    def _headers_read(self, ex: _Exchange) -> bool:
        """The final answer's headers are in: True when that already ended the exchange (too large)."""
        headers = ex.parser._headers_index  # noqa: SLF001 - wire.LowerHeaders
        refused = declared_too_large(ex.parser.get_code(), headers, self.max_response_bytes)
        if refused is not None:
            self._release(ex, reuse=False)
            self._finish(ex, refused)
            return True
        ex.stream = is_event_stream(headers)
        if ex.stream:
            ex.sbody = StreamBody(headers, self.max_response_bytes)
        return False

    def _complete(self, ex: _Exchange) -> None:
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

    def _broken(self, ex: _Exchange, exc: BaseException) -> None:
        """The connection failed or closed early. A stream keeps what arrived (truncated_stream)."""
        self._release(ex, reuse=False)
        if ex.reused and not ex.answered and ex.again is not None and not self._closed:
            self._resend(ex, exc)
            return
        if ex.sbody is not None and ex.final:
            detail = f"the stream ended before the answer did: {type(exc).__name__}: {exc}"[:300]
            self._finish(ex, SendResult(ex.parser.get_code(), b"".join(ex.chunks), "truncated_stream", detail,
                                        ex.sbody.wire, ex.parser._headers_index, ex.arrivals,  # noqa: SLF001
                                        ex.sbody.decoded))
        else:
            self._finish(ex, error_result(exc))

    def _resend(self, ex: _Exchange, exc: BaseException) -> None:
        """Once more, for a request whose kept-alive connection failed before a byte of the answer came: the
        target closed it while idle (its keep-alive timeout) just as the request left, so the request was never
        read. Browsers resend in this case, whatever the method; without it, a candidate behind a server with a
        short keep-alive timeout (uvicorn's 5 s, say) shows resets that production clients never see. The leg's
        latency still counts from its intended time, and its error_detail says it was resent."""
        ex.payload, ex.again, ex.parser, ex.final, ex.reused = ex.again, None, None, False, False
        ex.resent = f"resent once on a new connection: the kept-alive one failed first ({type(exc).__name__})"
        ex.state = _QUEUED
        self._waiting.appendleft(ex)
        self._drain_soon()

    def _over_cap(self, ex: _Exchange, size: int, what: str) -> None:
        # The rest of an oversized body is never read: the connection cannot be reused.
        self._release(ex, reuse=False)
        self._finish(ex, SendResult(ex.parser.get_code(), b"", "too_large",
                                    f"{what} over the cap of {self.max_response_bytes} bytes", size,
                                    ex.parser._headers_index))  # noqa: SLF001

    def _release(self, ex: _Exchange, reuse: bool) -> None:
        conn, ex.conn = ex.conn, None
        if conn is None:
            return
        conn.ex = None
        self._opened(conn)
        # A request not all out (an early answer, or one to a 100-continue head) leaves the connection unusable.
        if reuse and not self._closed and ex.state == _READING and not conn.wbuf:
            conn.writer.stop()
            if conn.fresh:
                self._keep_session(conn)
            conn.idle_at = time.monotonic()
            self._idle.append(conn)
            self._drain_soon()
        else:
            conn.close()

    def _finish(self, ex: _Exchange, result: SendResult) -> None:
        if ex.state == _OVER:
            return
        ex.state = _OVER
        self._inflight.pop(ex, None)
        self._continues.pop(ex, None)
        self._connecting.pop(ex, None)
        if ex.resent is not None:
            result.error_detail = ex.resent if result.error_detail is None else f"{ex.resent}; {result.error_detail}"
        ex.done(ex.token, result, time.time())

    def _sweep(self) -> None:
        now = time.monotonic()
        for ex in [e for e in self._continues if e.head_out_at + _CONTINUE_WAIT_S <= now]:
            self._send_body(ex)  # no 100 Continue in time: the body goes anyway, as curl sends it
        expired: dict[_Exchange, str] = {}
        for ex in list(self._connecting):
            if ex.state not in (_CONNECTING, _HANDSHAKING):
                del self._connecting[ex]  # connected (or over): the answer timeout alone applies now
            elif ex.started + self.connect_timeout_s <= now:
                if (ex.state == _CONNECTING and ex.started + self.timeout_s > now and ex.conn is not None
                        and _peer_connected(ex.conn.sock)):
                    continue  # the kernel finished the handshake; a loop late to notice is no connect timeout
                what = "connection" if ex.state == _CONNECTING else "TLS handshake"
                expired[ex] = f"no {what} within {self.connect_timeout_s:g} s"
        for ex in self._inflight:  # start order: nothing later can have expired once one is young enough
            if ex.started + self.timeout_s > now:
                break
            expired.setdefault(ex, self._timeout_detail)
        for ex, detail in expired.items():
            self._release(ex, reuse=False)
            self._finish(ex, SendResult(None, b"", "timeout", detail, 0))

    def close(self) -> None:
        """Stop the sweep and close every connection; exchanges still open end as timeouts."""
        self._closed = True
        for ex in list(self._inflight):
            self._release(ex, reuse=False)
            self._finish(ex, SendResult(None, b"", "timeout", self._timeout_detail, 0))
        self._waiting.clear()
        self._sweeper.stop()
        self._sweeper.close()
        while self._idle:
            self._idle.pop().close()
