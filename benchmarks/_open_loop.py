"""An open-loop HTTP/1.1 load client for latency at a fixed rate: raw sockets, several processes.

wrk (Debian's 4.1) is closed-loop: it cannot hold a rate, and a slow answer delays the next request
(coordinated omission). An aiohttp client costs about as much CPU per request as the proxies measured,
so at 1,000 req/s on 2 cores it becomes the noise. This client is an asyncio Protocol per connection
that writes a prepared request and reads just enough of the answer to know it has ended
(Content-Length or chunked): about 20 us of CPU a request. Each of `processes` processes sends every
`processes`-th request of one schedule (t0 + i / rate) at its time on an idle keep-alive connection
(a new one when all are busy), whatever is in flight; latency counts from the scheduled time, so a
client that falls behind shows up in the figures, and the send lag (actual send - scheduled) is
reported next to them to tell the client's lateness from the server's.

    lat_ms, lag_ms = run(url, rate=1000, seconds=10, processes=2)
"""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import time
from typing import Any
from urllib.parse import urlsplit

__all__ = ["run"]


class _Conn(asyncio.Protocol):
    def __init__(self, pool: "_Pool") -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.at = 0.0
        self.busy = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def send(self, at: float, request: bytes) -> None:
        self.at, self.busy = at, True
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buf[:end]).lower()
        i = head.find(b"content-length:")
        if i >= 0:
            n = int(head[i + 15: head.find(b"\r\n", i) if head.find(b"\r\n", i) > 0 else None])
            if len(self.buf) < end + 4 + n:
                return
            del self.buf[: end + 4 + n]
        elif b"transfer-encoding: chunked" in head:
            tail = self.buf.find(b"\r\n0\r\n\r\n", end)
            if tail < 0:
                return
            del self.buf[: tail + 7]
        else:
            return
        self.busy = False
        self.pool.done(self, time.perf_counter())

    def connection_lost(self, exc: BaseException | None) -> None:
        self.pool.lost(self)


class _Pool:
    def __init__(self, loop: asyncio.AbstractEventLoop, host: str, port: int, request: bytes) -> None:
        self.loop, self.host, self.port, self.request = loop, host, port, request
        self.idle: list[_Conn] = []
        self.waiting: list[float] = []  # scheduled times with no connection yet
        self.lat: list[float] = []
        self.lag: list[float] = []
        self.errors = 0
        self.pending = 0

    async def open(self) -> _Conn:
        _, proto = await self.loop.create_connection(lambda: _Conn(self), self.host, self.port)
        return proto

    def send(self, at: float) -> None:
        self.pending += 1
        if self.idle:
            conn = self.idle.pop()
            self.lag.append((time.perf_counter() - at) * 1000.0)
            conn.send(at, self.request)
            return
        self.waiting.append(at)
        self.loop.create_task(self._grow())

    async def _grow(self) -> None:
        try:
            conn = await self.open()
        except OSError:
            self.errors += 1
            if self.waiting:
                self.waiting.pop(0)
                self.pending -= 1
            return
        self._next(conn)

    def _next(self, conn: _Conn) -> None:
        if self.waiting:
            at = self.waiting.pop(0)
            self.lag.append((time.perf_counter() - at) * 1000.0)
            conn.send(at, self.request)
        else:
            self.idle.append(conn)

    def done(self, conn: _Conn, now: float) -> None:
        self.lat.append((now - conn.at) * 1000.0)
        self.pending -= 1
        self._next(conn)

    def lost(self, conn: _Conn) -> None:
        if conn in self.idle:
            self.idle.remove(conn)
        if conn.busy:
            self.errors += 1
            self.pending -= 1


async def _main(url: str, body: bytes, rate: float, seconds: float, t0_wall: float, index: int,
                processes: int, connections: int) -> tuple[list[float], list[float], int]:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    request = (f"POST {u.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    loop = asyncio.get_running_loop()
    pool = _Pool(loop, host, port, request)
    for _ in range(connections):
        pool.idle.append(await pool.open())
    for _ in range(20):  # warm the connections and the server
        pool.send(time.perf_counter())
        while pool.pending:
            await asyncio.sleep(0.001)
    pool.lat.clear()
    pool.lag.clear()
    # one schedule for all processes, on the wall clock they share
    base = time.perf_counter() + (t0_wall - time.time())
    n = int(rate * seconds)
    for i in range(index, n, processes):
        at = base + i / rate
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pool.send(at)
    deadline = time.perf_counter() + 10.0
    while pool.pending and time.perf_counter() < deadline:
        await asyncio.sleep(0.005)
    return pool.lat, pool.lag, pool.errors + pool.pending


def _worker(args: tuple[Any, ...], out: Any) -> None:
    try:
        import uvloop

        result = uvloop.run(_main(*args))
    except ImportError:
        result = asyncio.run(_main(*args))
    out.put(result)


def run(url: str, *, rate: float, seconds: float, processes: int = 2, connections: int = 32,
        body: bytes = b'{"inputs":[1,2,3]}') -> tuple[list[float], list[float], int]:
    """(latencies ms, send lags ms, failed requests) of rate * seconds POSTs to url, open loop."""
    ctx = mp.get_context("fork")
    out = ctx.Queue()
    t0 = time.time() + 1.5  # every process connected and warm before the first scheduled send
    procs = [ctx.Process(target=_worker, args=((url, body, rate, seconds, t0, i, processes, connections), out))
             for i in range(processes)]
    for p in procs:
        p.start()
    lat: list[float] = []
    lag: list[float] = []
    failed = 0
    for _ in procs:
        a, b, f = out.get(timeout=seconds + 60)
        lat += a
        lag += b
        failed += f
    for p in procs:
        p.join(10)
    return lat, lag, failed
