"""A tiny HTTP/1.1 keep-alive server (asyncio, no uvloop) that answers every request with a small JSON body
after a fixed delay, on one or more ports of 127.0.0.1. Used by fixed_delay.py.

    python _delay_server.py --delay-ms 20 --ports 8001 8002 [--timer precise|asyncio] --stats-file F

--timer asyncio: `await asyncio.sleep(delay)`. asyncio's epoll selector rounds its timeout UP to a whole
millisecond, so that sleep overshoots by 0-1 ms (about 0.5 ms at the median): the target itself would then
be 20.5 ms, not 20 ms.
--timer precise (default): one timer thread waits on a condition variable (nanosecond timeouts) and
wakes the event loop through call_soon_threadsafe, so the answer leaves 20 ms (+ about 0.1 ms) after the
request was read. The server measures its own hold time (request read -> answer written) per request and
writes the distribution to --stats-file on SIGTERM, so the benchmark can show what the target really did.
"""
from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import signal
import threading
import time

ANSWER = b'{"prediction":"ok","confidence":0.9}'
HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + str(len(ANSWER)).encode()
        + b"\r\n\r\n")


class PreciseTimer(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self._heap: list[tuple[float, int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._cond = threading.Condition()
        self._n = 0

    def wait_until(self, deadline: float) -> asyncio.Future[None]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        with self._cond:
            self._n += 1
            heapq.heappush(self._heap, (deadline, self._n, loop, fut))
            self._cond.notify()
        return fut

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, loop, fut = self._heap[0]
                now = time.perf_counter()
                if deadline > now:
                    self._cond.wait(deadline - now)
                    continue
                heapq.heappop(self._heap)
            loop.call_soon_threadsafe(_done, fut)


def _done(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--delay-ms", type=float, required=True)
    ap.add_argument("--ports", type=int, nargs="+", required=True)
    ap.add_argument("--timer", choices=["precise", "asyncio"], default="precise")
    ap.add_argument("--stats-file")
    args = ap.parse_args()
    delay = args.delay_ms / 1000.0
    timer = PreciseTimer()
    timer.start()
    holds_us: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                t_read = time.perf_counter()
                length = 0
                for line in head.split(b"\r\n"):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                if length:
                    await reader.readexactly(length)
                    t_read = time.perf_counter()
                if delay > 0:
                    if args.timer == "precise":
                        await timer.wait_until(t_read + delay)
                    else:
                        await asyncio.sleep(delay)
                writer.write(HEAD + ANSWER)
                holds_us.append(int((time.perf_counter() - t_read) * 1e6))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    servers = [await asyncio.start_server(handle, "127.0.0.1", p, backlog=4096) for p in args.ports]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await stop.wait()
    for s in servers:
        s.close()
    if args.stats_file:
        h = sorted(holds_us)

        def q(p: float) -> float | None:
            return h[min(len(h) - 1, int(p * len(h)))] / 1000.0 if h else None

        with open(args.stats_file, "w") as f:
            json.dump({"requests": len(h), "hold_p50_ms": q(0.5), "hold_p99_ms": q(0.99),
                       "hold_max_ms": h[-1] / 1000.0 if h else None, "timer": args.timer,
                       "delay_ms": args.delay_ms}, f)


if __name__ == "__main__":
    asyncio.run(main())
