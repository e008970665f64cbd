"""A lean HTTP/1.1 reverse proxy on asyncio Protocols, parsed by httptools (llhttp, the parser uvicorn
uses). Shared by `harness capture` and `harness shadow`: it is their serving path.

Why not a framework: per request aiohttp's server and client cost about 330 us of CPU (request and
response objects, routing, a task, timers, three or four socket writes), most of it outside what a
proxy needs (benchmarks/proxy_overhead.py, docs/benchmarks.md). Here a request is parsed straight
into a `Request`, forwarded on a pooled keep-alive upstream connection in one write, and whatever one
read from the upstream brings (status line, headers, body bytes) is parsed and passed to the client in
one write as it arrives: the answer streams through unchanged (status, reason, headers but the
hop-by-hop ones, body bytes; a chunked answer is re-chunked as it comes).

What the proxy does with a request happens in two hooks, called on the event loop and expected to
return at once: `request(req)` when the request has been read whole (just after it is forwarded), and
`answered(req, token, answer)` when the answer has been passed on (or failed).

Failures, as a proxy answers them: an upstream that refuses or cannot be reached -> 502, no answer
within `timeout_s` between reads -> 504, a connection cut before the answer started -> 502; cut after
it started, the client's connection is closed so that it sees a cut answer, never a whole-looking one.
Unparseable HTTP from a client -> 400 and the connection closed, counted (`bad_http`). An idle pooled
connection the upstream closed while a request was being written to it is retried once on a new one. A
client that leaves before its answer's end has its upstream request cut (`CLIENT_CLOSED`, nginx's 499),
unless the server reads answers whole for its own sake (`cancel_on_client_close`: harness shadow).

Per request the serving loop does as little as it can, since the proxy's CPU a request is its rate per
core: the upstream request head is built in bytes as the headers are parsed (nothing decoded to str,
nothing re-serialised), the answer's head is passed on from the parsed bytes, each direction is one
socket write, and the upstream read timeout is one sweep timer per pool rather than a timer per
request. Headers are decoded to str only when a hook reads them (`Request.headers`, `Answer.headers`),
which for `harness capture` is in the writer's thread.

Client keep-alive: a client connection with no answer pending that sends nothing for
`keepalive_timeout_s` (75 s by default, as nginx's keepalive_timeout) is closed, so idle clients cannot
hold connections (and their memory) for ever. A client that reads slower than the upstream sends pauses
the upstream's reads (backpressure); the upstream's timeout does not run while it waits for the client,
and a client that reads none of its answer for `keepalive_timeout_s` has it cut (nginx's send_timeout).
"""
from __future__ import annotations

import asyncio
import ssl
import time
from collections import deque
from typing import Any, Callable, Protocol
from urllib.parse import urlsplit

import httptools

from .exchange import header_text
from .forward import RESPONSE_DROP, HOP_BY_HOP, Answer

__all__ = ["Request", "Hooks", "Upstream", "ProxyServer", "Collect", "KEEPALIVE_TIMEOUT_S", "CLIENT_CLOSED"]

MAX_REQUEST_BYTES = 1 << 30  # forwarded whole whatever the capture limit
MAX_HEAD_BYTES = 1 << 20
KEEPALIVE_TIMEOUT_S = 75.0  # client keep-alive idle timeout, nginx's default
CLIENT_CLOSED = "client_closed"  # an answer's error where its client left before the end (nginx's 499)
_NO_BODY_STATUS = frozenset({204, 304})
_DROP_TO_UPSTREAM = HOP_BY_HOP | {"expect"}  # the proxy reads the body whole first: it answers 100 itself
# Request headers the head to the upstream leaves out or rewrites (lower-cased bytes, as parsed).
_DROP_TO_UPSTREAM_B = frozenset(k.encode() for k in _DROP_TO_UPSTREAM | {"x-forwarded-for"})
_RESPONSE_DROP_B = frozenset(k.encode() for k in RESPONSE_DROP)
_BODY_METHODS = frozenset({b"POST", b"PUT", b"PATCH"})


class Request:
    """One request as the client sent it; `headers` (str) are decoded from `raw_headers` on first use."""

    __slots__ = ("method", "raw_path", "raw_headers", "body", "arrived", "peer", "_headers")

    def __init__(self, method: str, raw_path: str, raw_headers: list[tuple[bytes, bytes]], body: bytes,
                 arrived: float, peer: str | None) -> None:
        self.method = method
        self.raw_path = raw_path  # with the query string, as sent
        self.raw_headers = raw_headers  # as received
        self.body = body
        self.arrived = arrived  # epoch seconds, when the request line came
        self.peer = peer
        self._headers: tuple[tuple[str, str], ...] | None = None

    @property
    def headers(self) -> tuple[tuple[str, str], ...]:
        h = self._headers
        if h is None:
            h = self._headers = header_text(self.raw_headers)
        return h

    def __repr__(self) -> str:
        return f"Request({self.method} {self.raw_path}, {len(self.body)} bytes)"


class Hooks(Protocol):
    def request(self, req: Request) -> Any: ...

    def answered(self, req: Request, token: Any, answer: Answer) -> None: ...


class Sink(Protocol):
    """Where an upstream connection passes what it reads (an exchange with a client, or a Collect)."""

    retried: bool  # sent once more on a new connection after a pooled one was found closed
    up: "_UpConn | None"  # the upstream connection serving it

    def head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framing: str) -> None: ...

    def body(self, chunk: bytes) -> None: ...

    def flush(self) -> None: ...

    def end(self) -> None: ...

    def fail(self, kind: str) -> None: ...


# ---------------------------------------------------------------------------------------------- upstream
class _UpConn(asyncio.Protocol):
    def __init__(self, pool: "Upstream") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.sink: Sink | None = None
        self.sent: tuple[bytes, bytes, bool] = (b"", b"", False)
        self.reused = False
        self.got = False
        self.head_only = False
        self.informational = False
        self.framing = "length"
        self.started = False  # the answer's head was passed on
        self.last_io = 0.0  # monotonic; the pool's sweep times a request out from it
        self.paused_at = 0.0  # monotonic; not read since then, the client reading slower than the upstream sends
        self._reason = b""
        self._headers: list[tuple[bytes, bytes]] = []

    # -- the pool's side
    def start(self, head: bytes, body: bytes, sink: Sink, head_only: bool, reused: bool) -> None:
        assert self.transport is not None
        self.sink, self.sent, self.head_only, self.reused = sink, (head, body, head_only), head_only, reused
        self.got = self.started = False
        self.paused_at = 0.0
        self.last_io = time.monotonic()
        self.pool.watch()
        sink.up = self
        if len(body) < 65536:
            self.transport.write(head + body if body else head)
        else:
            self.transport.write(head)
            self.transport.write(body)

    def pause(self) -> None:
        self.paused_at = time.monotonic()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume(self) -> None:
        self.paused_at = 0.0
        self.last_io = time.monotonic()  # the wait for the client is not the upstream's silence
        if self.transport is not None:
            self.transport.resume_reading()

    def timed_out(self) -> None:
        sink, self.sink = self.sink, None
        if sink is None:
            return
        if self.transport is not None:
            self.transport.abort()
        sink.fail("timeout")

    # -- asyncio
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.got = True
        self.last_io = time.monotonic()
        sink = self.sink
        if sink is None:  # bytes with no request: the connection cannot be trusted any more
            if self.transport is not None:
                self.transport.abort()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self._lost_with(sink, "reset")
            if self.transport is not None:
                self.transport.abort()
        finally:
            sink.flush()

    def connection_lost(self, exc: BaseException | None) -> None:
        self.pool.forget(self)
        sink, self.sink = self.sink, None
        if sink is None:
            return
        if self.started and self.framing == "close":
            sink.end()  # an answer that ends with its connection
            sink.flush()
            return
        if self.reused and not self.got and not sink.retried:
            sink.retried = True
            head, body, head_only = self.sent
            self.pool.send(head, body, sink, head_only)
            return
        self._lost_with(sink, "reset")

    def _lost_with(self, sink: Sink, kind: str) -> None:
        self.sink = None
        sink.fail(kind)

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self._headers = []
        self._reason = b""

    def on_status(self, reason: bytes) -> None:
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        self.informational = status < 200
        if self.informational or self.sink is None:
            return
        headers = self._headers
        framing = "length"
        for k, v in headers:
            lk = k.lower()
            if lk == b"transfer-encoding" and b"chunked" in v.lower():
                framing = "chunked"
                break
            if lk == b"content-length":
                break
        else:
            if status not in _NO_BODY_STATUS and not self.head_only:
                framing = "close"
        self.framing = framing
        self.started = True
        self.sink.head(status, self._reason, headers, framing)
        if self.head_only:
            # llhttp cannot be told the answer to HEAD has no body: the connection is not reused
            sink, self.sink = self.sink, None
            sink.end()
            sink.flush()
            if self.transport is not None:
                self.transport.close()

    def on_body(self, chunk: bytes) -> None:
        if self.sink is not None:
            self.sink.body(chunk)

    def on_message_complete(self) -> None:
        if self.informational:
            self.informational = False
            return
        sink, self.sink = self.sink, None
        if sink is None:
            return
        if self.framing != "close" and self.parser.should_keep_alive():
            self.pool.idle.append(self)
        elif self.transport is not None:
            self.transport.close()
        sink.end()


class Upstream:
    """One upstream, a pool of keep-alive connections (unbounded, as many as requests in flight), a read
    timeout between reads. Use inside a running event loop.

    The read timeout is one sweep per pool, armed while connections are open, rather than a timer armed
    and cancelled per request: a request times out between timeout_s and timeout_s plus a sweep interval
    (a tenth of timeout_s, at most one second) after its last read."""

    def __init__(self, url: str, *, timeout_s: float = 60.0, connect_timeout_s: float = 5.0) -> None:
        u = urlsplit(url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"{url!r}: expected http://HOST:PORT")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.netloc = u.netloc
        self.prefix = u.path.rstrip("/")
        self.netloc_b, self.prefix_b = self.netloc.encode("latin-1"), self.prefix.encode("latin-1")
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if u.scheme == "https" else None
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.idle: list[_UpConn] = []
        self._all: set[_UpConn] = set()
        # a connection paused for a slow client is not timed out: the client's own limit cuts it (ProxyServer
        # sets this False where clients have none, --keepalive-timeout 0: the read timeout rules as before)
        self.paused_is_the_clients = True
        self.loop = self._loop = asyncio.get_running_loop()
        self._sweep_s = min(1.0, timeout_s / 10)
        self._sweeper: asyncio.TimerHandle | None = None

    def send(self, head: bytes, body: bytes, sink: Sink, head_only: bool = False) -> None:
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.start(head, body, sink, head_only, reused=True)
                return
        self._loop.create_task(self._connect_and_send(head, body, sink, head_only))

    async def _connect_and_send(self, head: bytes, body: bytes, sink: Sink, head_only: bool) -> None:
        try:
            _, conn = await asyncio.wait_for(
                self._loop.create_connection(lambda: _UpConn(self), self.host, self.port, ssl=self.ssl),
                self.connect_timeout_s)
        except asyncio.TimeoutError:
            sink.fail("timeout")
            return
        except OSError:
            sink.fail("connect")
            return
        self._all.add(conn)
        conn.start(head, body, sink, head_only, reused=False)

    def watch(self) -> None:
        """Makes sure the sweep runs while a request is out."""
        if self._sweeper is None:
            self._sweeper = self._loop.call_later(self._sweep_s, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = time.monotonic()
        busy = False
        for conn in [c for c in self._all if c.sink is not None]:
            paused = conn.paused_at and self.paused_is_the_clients  # the client's wait, not the upstream's
            if not paused and now - conn.last_io >= self.timeout_s:
                conn.timed_out()
            else:
                busy = True
        if busy:
            self.watch()

    def forget(self, conn: _UpConn) -> None:
        self._all.discard(conn)
        if conn in self.idle:
            self.idle.remove(conn)

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in list(self._all):
            conn.sink = None
            if conn.transport is not None:
                conn.transport.close()
        self.idle.clear()


class Collect:
    """A sink that keeps the answer (up to keep_bytes + 1 bytes) and calls `done(answer)` at its end."""

    __slots__ = ("keep_bytes", "done", "sent_at", "status", "raw_headers", "kept", "size", "retried", "up",
                 "arrivals")

    def __init__(self, keep_bytes: int, done: Callable[[Answer], None]) -> None:
        self.keep_bytes, self.done = keep_bytes, done
        self.sent_at = time.time()
        self.status: int | None = None
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.kept: list[bytes] = []
        self.size = 0
        self.retried = False
        self.up: _UpConn | None = None
        self.arrivals: list[tuple[int, float]] = []

    def head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framing: str) -> None:
        self.status = status
        self.raw_headers = headers

    def body(self, chunk: bytes) -> None:
        _keep(self, chunk)

    def flush(self) -> None:
        pass

    def end(self) -> None:
        self.done(Answer(self.status, None, _kept(self.kept), self.size, self.sent_at, time.time(),
                         raw_headers=self.raw_headers, arrivals=self.arrivals))

    def fail(self, kind: str) -> None:
        self.done(Answer(None, (), b"", 0, self.sent_at, time.time(), error=kind))


def _keep(sink: "Collect | _Exchange", chunk: bytes) -> None:
    """Counts a body chunk and keeps it while fewer than keep_bytes + 1 bytes are kept (no copy)."""
    kept_before = sink.size if sink.size <= sink.keep_bytes else sink.keep_bytes + 1
    sink.size += len(chunk)
    room = sink.keep_bytes + 1 - kept_before
    if room > 0:
        sink.kept.append(chunk if len(chunk) <= room else chunk[:room])
        sink.arrivals.append((sink.size, time.time()))  # when each kept read came: a stream's token timing


def _kept(parts: list[bytes]) -> bytes:
    return parts[0] if len(parts) == 1 else b"".join(parts)


# ---------------------------------------------------------------------------------------------- the client side
_REASONS = {400: b"Bad Request", 413: b"Content Too Large", 431: b"Request Header Fields Too Large",
            501: b"Not Implemented", 502: b"Bad Gateway", 504: b"Gateway Timeout"}


def _simple(status: int, text: bytes, close: bool, http10: bool = False) -> bytes:
    """The proxy's own answer; an HTTP/1.0 client's connection persists only where the answer says so."""
    connection = b"Connection: close\r\n" if close else b"Connection: keep-alive\r\n" if http10 else b""
    return (b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n%s\r\n"
            % (status, _REASONS[status], len(text), connection)) + text


class _Exchange:
    """One request of a client connection and its answer: the sink its upstream connection feeds."""

    __slots__ = ("conn", "req", "up_head", "keep_alive", "http10", "token", "sent_at", "status", "raw_headers",
                 "kept", "size", "out", "chunked", "started", "retried", "up", "keep_bytes", "arrivals")

    def __init__(self, conn: "_ClientConn", req: Request, up_head: bytes, keep_alive: bool, http10: bool,
                 keep_bytes: int) -> None:
        self.conn, self.req, self.up_head, self.keep_alive, self.http10 = conn, req, up_head, keep_alive, http10
        self.keep_bytes = keep_bytes
        self.token: Any = None
        self.sent_at = 0.0
        self.status: int | None = None
        self.raw_headers: list[tuple[bytes, bytes]] = []
        self.kept: list[bytes] = []
        self.size = 0
        self.out: list[bytes] = []
        self.chunked = False
        self.started = False
        self.retried = False
        self.up: _UpConn | None = None
        self.arrivals: list[tuple[int, float]] = []

    def head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], framing: str) -> None:
        self.status = status
        self.raw_headers = headers
        parts = [b"HTTP/1.1 %d %s\r\n" % (status, reason)]
        for k, v in headers:
            if k.lower() not in _RESPONSE_DROP_B:
                parts += (k, b": ", v, b"\r\n")
        if framing != "length":
            if self.http10:
                self.keep_alive = False  # no chunked framing for HTTP/1.0: the answer ends with the connection
            else:
                self.chunked = True
                parts.append(b"Transfer-Encoding: chunked\r\n")
        if not self.keep_alive:
            parts.append(b"Connection: close\r\n")
        elif self.http10:  # an HTTP/1.0 client's connection persists only where the answer says so
            parts.append(b"Connection: keep-alive\r\n")
        parts.append(b"\r\n")
        self.out.append(b"".join(parts))
        self.started = True

    def body(self, chunk: bytes) -> None:
        _keep(self, chunk)
        if self.chunked:
            self.out.append(b"%x\r\n%s\r\n" % (len(chunk), chunk) if len(chunk) < 65536 else b"%x\r\n" % len(chunk))
            if len(chunk) >= 65536:
                self.out += (chunk, b"\r\n")
        else:
            self.out.append(chunk)

    def flush(self) -> None:
        out = self.out
        if out:
            t = self.conn.transport
            if t is not None and not t.is_closing():
                t.write(b"".join(out) if len(out) > 1 else out[0])
            out.clear()

    def end(self) -> None:
        if self.chunked and self.req.method != "HEAD":
            self.out.append(b"0\r\n\r\n")
        self.conn.finished(self, Answer(self.status, None, _kept(self.kept), self.size, self.sent_at, time.time(),
                                        raw_headers=self.raw_headers, arrivals=self.arrivals))

    def fail(self, kind: str) -> None:
        done = time.time()
        if kind == CLIENT_CLOSED:  # nobody to answer: no status of the proxy's own
            self.keep_alive = False
            answer = Answer(self.status, None, _kept(self.kept), self.size, self.sent_at, done, error=kind,
                            raw_headers=self.raw_headers, arrivals=self.arrivals)
        elif self.started:
            # Too late for a status: the client's connection is closed so that it sees a cut answer.
            self.flush()
            self.keep_alive = False
            if self.conn.transport is not None:
                self.conn.transport.abort()
            answer = Answer(self.status, None, _kept(self.kept), self.size, self.sent_at, done, error=kind,
                            raw_headers=self.raw_headers, arrivals=self.arrivals)
        else:
            status = 504 if kind == "timeout" else 502
            self.out.append(_simple(status, f"upstream {kind}\n".encode(), not self.keep_alive, self.http10))
            answer = Answer(status, (), b"", 0, self.sent_at, done, error=kind)
        self.conn.finished(self, answer)
        self.flush()


class _ClientConn(asyncio.Protocol):
    def __init__(self, server: "ProxyServer") -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.peer: str | None = None
        self.queue: deque[tuple[Request, bytes, bool, bool]] = deque()
        self.current: _Exchange | None = None
        self.closed = False
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._head = b""  # the request head to the upstream, less its Content-Length and final CRLF
        self._body: list[bytes] = []
        self._size = 0
        self._arrived = 0.0
        self._peer_b = b""
        self._xff = b""
        self.last_read = 0.0
        self._idle_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else None
        self._peer_b = self.peer.encode() if self.peer else b""
        self._xff = b"X-Forwarded-For: %s\r\n" % self._peer_b
        self.server.connections.add(self)
        self.last_read = time.monotonic()
        self._arm_idle(self.server.keepalive_timeout_s)

    # -- the keep-alive idle timeout
    def _arm_idle(self, delay: float) -> None:
        if self.server.keepalive_timeout_s > 0:
            self._idle_timer = asyncio.get_running_loop().call_later(delay, self._check_idle)

    def _check_idle(self) -> None:
        # Armed once and moved on only when it fires (as _UpConn's read timeout): no timer call per request.
        self._idle_timer = None
        if self.closed or self.transport is None:
            return
        limit = self.server.keepalive_timeout_s
        if self.current is not None or self.queue:
            # an answer is pending: the upstream's timeout rules meanwhile, but for a client that reads none of
            # its answer for the limit (the upstream is not read meanwhile): it is cut, as nginx's send_timeout
            up = self.current.up if self.current is not None else None
            stalled = time.monotonic() - up.paused_at if up is not None and up.paused_at else 0.0
            if stalled >= limit:
                self.server.stalled_closed += 1
                self.transport.abort()
                return
            self._arm_idle(limit - stalled)
            return
        idle = time.monotonic() - self.last_read
        if idle < limit:
            self._arm_idle(limit - idle)
            return
        self.server.idle_closed += 1
        self.transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self.closed = True
        self.queue.clear()
        self.server.connections.discard(self)
        ex = self.current
        if ex is None or ex.up is None:
            return
        up = ex.up
        if self.server.cancel_on_client_close and up.sink is ex:
            # nginx's way (proxy_ignore_client_abort off): the upstream stops working for nobody (a model
            # generating tokens for a user who left), and the exchange says the client left (nginx's 499)
            up.sink = None
            if up.transport is not None:
                up.transport.abort()
            ex.fail(CLIENT_CLOSED)
        else:
            up.resume()

    def pause_writing(self) -> None:
        up = self.current.up if self.current is not None else None
        if up is not None:
            up.pause()

    def resume_writing(self) -> None:
        up = self.current.up if self.current is not None else None
        if up is not None:
            up.resume()

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(501, b"upgrade is not supported by this proxy\n", counted=False)
        except httptools.HttpParserError:
            self._refuse(400, b"bad request\n", counted=True)

    def _refuse(self, status: int, text: bytes, counted: bool) -> None:
        if counted:
            self.server.bad_http += 1
        self.queue.clear()
        t = self.transport
        if t is not None and not t.is_closing():
            if self.current is None:
                t.write(_simple(status, text, True))
                t.close()
            else:  # an answer is on its way: it ends the connection once sent
                self.current.keep_alive = False
        self.parser = httptools.HttpRequestParser(self)  # nothing more is read from this connection
        if t is not None:
            t.pause_reading()

    # -- httptools callbacks
    def on_message_begin(self) -> None:
        self._arrived = time.time()
        self._url = b""
        self._headers = []
        self._body = []
        self._size = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_HEAD_BYTES:
            raise httptools.HttpParserError("request line too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._size += len(name) + len(value)
        if self._size > MAX_HEAD_BYTES:
            raise httptools.HttpParserError("headers too large")
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        """Builds the head to the upstream (the client's headers in their order, less the hop-by-hop ones,
        with the upstream's Host and X-Forwarded-For) and answers `Expect: 100-continue`."""
        self._size = 0
        up = self.server.upstream
        parts = [self.parser.get_method(), b" ", up.prefix_b, self._url, b" HTTP/1.1\r\nHost: ", up.netloc_b, b"\r\n"]
        prior = None
        expect = False
        for k, v in self._headers:
            lk = k.lower()
            if lk in _DROP_TO_UPSTREAM_B:
                if lk == b"x-forwarded-for":
                    prior = v
                elif lk == b"expect":
                    expect = v.lower() == b"100-continue"
                continue
            parts += (k, b": ", v, b"\r\n")
        if self._peer_b:
            if prior is None:
                parts.append(self._xff)
            else:
                parts += (b"X-Forwarded-For: ", prior, b", ", self._peer_b, b"\r\n")
        elif prior is not None:
            parts += (b"X-Forwarded-For: ", prior, b"\r\n")
        self._head = b"".join(parts)
        if expect and self.transport is not None and self.parser.get_http_version() == "1.1":
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size > MAX_REQUEST_BYTES:
            raise httptools.HttpParserError("request body too large")
        self._body.append(chunk)

    def on_message_complete(self) -> None:
        parser = self.parser
        chunks = self._body
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        method = parser.get_method()
        head = self._head
        if body or method in _BODY_METHODS:
            head += b"Content-Length: %d\r\n\r\n" % len(body)
        else:
            head += b"\r\n"
        req = Request(method.decode("latin-1"), self._url.decode("latin-1"), self._headers, body, self._arrived,
                      self.peer)
        self.queue.append((req, head, parser.should_keep_alive(), parser.get_http_version() == "1.0"))
        if self.current is None:
            self._next()

    # -- exchanges, one at a time per connection (pipelined requests wait their turn)
    def _next(self) -> None:
        if not self.queue or self.closed:
            return
        req, head, keep_alive, http10 = self.queue.popleft()
        self.current = ex = _Exchange(self, req, head, keep_alive, http10, self.server.keep_bytes)
        self.server.forward(ex)

    def finished(self, ex: _Exchange, answer: Answer) -> None:
        self.current = None
        ex.flush()
        self.server.answered(ex, answer)
        if not ex.keep_alive:
            if self.transport is not None:
                self.transport.close()
            self.closed = True
        else:
            self._next()


class ProxyServer:
    """Serves clients on host:port, forwarding every request to `upstream`; `hooks` sees each one."""

    def __init__(self, upstream: Upstream, hooks: Hooks, keep_bytes: int, *,
                 keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S, cancel_on_client_close: bool = True) -> None:
        """`keepalive_timeout_s`: idle client connections are closed after it (0: never).
        `cancel_on_client_close`: a client that leaves before its answer's end has its upstream request cut, and
        the answer fails with CLIENT_CLOSED; False: the upstream's answer is read to its end (harness shadow:
        the baseline's leg is judged whole, as the candidate's copy is)."""
        self.upstream, self.hooks, self.keep_bytes = upstream, hooks, keep_bytes
        self.keepalive_timeout_s = keepalive_timeout_s
        upstream.paused_is_the_clients = keepalive_timeout_s > 0
        self.cancel_on_client_close = cancel_on_client_close
        self.connections: set[_ClientConn] = set()
        self.in_flight = 0
        self.bad_http = 0
        self.idle_closed = 0  # client connections closed by the keep-alive idle timeout
        self.stalled_closed = 0  # and those closed as their client read nothing of its answer for that long
        self._server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> int:
        """Listens; returns the bound port (for port 0)."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ClientConn(self), host, port, backlog=1024,
                                                reuse_address=True)
        return int(self._server.sockets[0].getsockname()[1])

    def forward(self, ex: _Exchange) -> None:
        req = ex.req
        self.in_flight += 1
        ex.sent_at = time.time()
        self.upstream.send(ex.up_head, req.body, ex, head_only=req.method == "HEAD")
        # after the request is on its way: what the hook does (shadow's copy) never delays it; the answer
        # cannot come before this returns (the upstream's reads are callbacks of a later loop turn)
        ex.token = self.hooks.request(req)

    def answered(self, ex: _Exchange, answer: Answer) -> None:
        self.in_flight -= 1
        self.hooks.answered(ex.req, ex.token, answer)

    async def close(self, drain_s: float = 5.0) -> None:
        """Stops listening, lets the answers in flight finish (up to drain_s), closes every connection."""
        if self._server is not None:
            self._server.close()
        deadline = time.monotonic() + drain_s
        while self.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        self.upstream.close()
