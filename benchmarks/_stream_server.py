"""An OpenAI-compatible streaming chat/completions server whose timing is the truth: every stream sends
its first token `--ttft-ms` after its request was read and each next one `--itl-ms` later (scheduled
from the read time, so lateness never accumulates), `max_tokens` tokens, then the usage chunk and
`data: [DONE]`. Used by llm_streams.py and llm_peers.py. Standard library only, one process per port
list, 127.0.0.1 only.

    python _stream_server.py --ports 8001 --ttft-ms 200 --itl-ms 200 --stats-file F

Timing: one thread keeps the sockets in an epoll set and the due tokens in a heap, and waits for whichever
comes first with select() on the epoll descriptor (a timeout in microseconds: epoll_wait's and asyncio's
timers round up to a whole millisecond, too coarse for a truth measured to 1 ms). Tokens are sent from the
thread that reads the sockets, so no hand-over between threads or GIL switch delays them. What is left is
the CPU: a server that wakes while another process has the core waits for it, which llm_streams.py's
--server-sched fifo (real-time scheduling) and --pin remove.

The truth is what the kernel saw, not when this process got round to it: a request's time is the kernel's
receive time of its bytes (SO_TIMESTAMPNS on the connection, read with recvmsg from plain non-blocking
sockets, since asyncio's transports drop ancillary data), and a token's is the kernel's software send stamp
(SO_TIMESTAMPING, from the socket's error queue; the time right after its send() where none came, or
with --send-stamps clock, which spares the stamps' CPU).
The schedule counts from the request's kernel time too. The server records, for every token sent, its
lateness (sent - scheduled), and writes the distribution, the token sends per second and the most streams
open at once to --stats-file on SIGTERM, so its own error is told apart from the client's; and, per stream,
what it really did (TTFT from the request's arrival to the first token sent, mean and p95 gap between token
sends) to STATS_FILE.truth.jsonl, keyed by the completion id the client sees.
"""
from __future__ import annotations

import argparse
import heapq
import json
import select
import signal
import socket
import struct
import time
from array import array
from typing import Any

HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux's numbers where Python does not name them
SO_TIMESTAMPING = getattr(socket, "SO_TIMESTAMPING", 37)
# a software timestamp when each send()'s last byte leaves for the device (loopback: into the peer's receive
# queue), keyed by that byte's offset in the stream (OPT_ID), without the packet (OPT_TSONLY)
TX_STAMPS = (1 << 1) | (1 << 4) | (1 << 7) | (1 << 11)  # TX_SOFTWARE | SOFTWARE | OPT_ID | OPT_TSONLY
RECVERR = ((socket.IPPROTO_IP, 11), (socket.IPPROTO_IPV6, 25))  # IP_RECVERR, IPV6_RECVERR
STAMP_SPACE = socket.CMSG_SPACE(16)


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Stream:
    __slots__ = ("conn", "token", "left", "t0", "n", "tail", "cid", "written", "arrived")

    def __init__(self, conn: "Conn", token: bytes, n: int, t0: float, tail: bytes, cid: str, arrived: float):
        self.conn, self.token, self.left, self.n, self.t0, self.tail = conn, token, n, n, t0, tail
        self.cid, self.written, self.arrived = cid, array("d"), arrived


class Loop:
    """One thread: an epoll set of sockets and a heap of due tokens. It waits with select() on the epoll
    descriptor itself, whose timeout is in microseconds (epoll_wait's is in whole milliseconds, asyncio's
    timers round up to one), and sends each token from the same thread that reads the sockets: no hand-over
    between threads, no GIL passed back and forth."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.readers: dict[int, Any] = {}
        self.writers: dict[int, Any] = {}
        self.heap: list[tuple[float, int, Stream]] = []
        self.seq = 0
        self.stopped = False

    def _mask(self, fd: int) -> None:
        mask = (select.EPOLLIN if fd in self.readers else 0) | (select.EPOLLOUT if fd in self.writers else 0)
        try:
            self.ep.modify(fd, mask) if mask else self.ep.unregister(fd)
        except FileNotFoundError:
            self.ep.register(fd, mask)

    def _watch(self, table: dict[int, Any], fd: int, cb: Any) -> None:
        if cb is not None:
            table[fd] = cb
        elif table.pop(fd, None) is None:
            return
        self._mask(fd)

    def add_reader(self, fd: int, cb: Any) -> None:
        self._watch(self.readers, fd, cb)

    def remove_reader(self, fd: int) -> None:
        self._watch(self.readers, fd, None)

    def add_writer(self, fd: int, cb: Any) -> None:
        self._watch(self.writers, fd, cb)

    def remove_writer(self, fd: int) -> None:
        self._watch(self.writers, fd, None)

    def at(self, due: float, s: Stream) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (due, self.seq, s))

    def run(self, send: Any) -> None:
        heap, ep, epfd, readers, writers = self.heap, self.ep, [self.ep.fileno()], self.readers, self.writers
        clock, pop = time.perf_counter, heapq.heappop
        while not self.stopped:
            now = clock()
            while heap and heap[0][0] <= now:
                due, _, s = pop(heap)
                send(due, s)
            wait = heap[0][0] - clock() if heap else 0.05
            if wait > 0:
                select.select(epfd, (), (), min(wait, 0.05))
            for fd, ev in ep.poll(0):
                cb = readers.get(fd)
                if cb is not None and ev & (select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP):
                    cb()
                cb = writers.get(fd)
                if cb is not None and ev & (select.EPOLLOUT | select.EPOLLERR | select.EPOLLHUP):
                    cb()


class Conn:
    """A client connection on a plain non-blocking socket: read with recvmsg for the kernel's receive time,
    written with send (what the socket does not take waits in `out` for a writer callback)."""

    __slots__ = ("server", "sock", "fd", "buf", "busy", "open", "out", "stamp", "queued", "pending", "tx")

    def __init__(self, server: "Server", sock: socket.socket) -> None:
        self.server, self.sock, self.fd = server, sock, sock.fileno()
        self.buf, self.busy, self.open, self.out, self.stamp = b"", False, True, b"", 0.0
        self.queued = 0  # bytes handed to write() so far: a send's OPT_ID key is its last byte's offset
        self.pending: dict[int, tuple[array, int]] = {}  # key -> (a stream's token send times, which token)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        except OSError:
            pass  # no stamps: a request's time is when it was read
        self.tx = False  # a token's time is the time right after its send()
        if server.kernel_send_stamps:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPING, TX_STAMPS)
                self.tx = True
            except OSError:
                pass
        server.loop.add_reader(self.fd, self.readable)

    def tx_stamps(self) -> None:
        """The kernel's send times waiting in the error queue (it makes the socket readable): each replaces
        the time taken right after that token's send()."""
        while True:
            try:
                _, anc, _, _ = self.sock.recvmsg(0, 512, socket.MSG_ERRQUEUE)
            except OSError:  # BlockingIOError included: none left
                return
            at = key = None
            for level, kind, raw in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPING:
                    sec, nsec = struct.unpack_from("qq", raw)
                    at = sec + nsec * 1e-9
                elif (level, kind) in RECVERR:
                    key = struct.unpack_from("I", raw, 12)[0]  # sock_extended_err.ee_data
            tag = self.pending.pop(key, None) if key is not None else None
            if tag is not None and at:
                tag[0][tag[1]] = at
                self.server.tx_stamped += 1

    def readable(self) -> None:
        if self.tx:
            self.tx_stamps()
        try:
            data, anc, _, _ = self.sock.recvmsg(65536, STAMP_SPACE)
        except BlockingIOError:
            return
        except OSError:
            data, anc = b"", []
        if not data:
            self.close()
            return
        now = time.time()
        stamp = now
        for level, kind, raw in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack_from("qq", raw)
                stamp = min(sec + nsec * 1e-9, now)
        if not self.buf:
            self.stamp = stamp  # a request's time: when its first bytes arrived
        self.buf += data
        self.server.next_request(self)

    def write(self, data: bytes, times: array | None = None) -> None:
        """`times`: a stream's token send times, whose last entry the kernel's send time of `data` replaces."""
        if not self.open:
            return
        self.queued += len(data)
        if times is not None and self.tx:
            self.pending[self.queued - 1] = (times, len(times) - 1)
        if self.out:
            self.out += data
            return
        try:
            n = self.sock.send(data)
        except BlockingIOError:
            n = 0
        except OSError:
            self.close()
            return
        if n < len(data):
            self.out = data[n:]
            self.server.loop.add_writer(self.fd, self.writable)

    def writable(self) -> None:
        try:
            n = self.sock.send(self.out)
        except BlockingIOError:
            return
        except OSError:
            self.close()
            return
        self.out = self.out[n:]
        if not self.out:
            self.server.loop.remove_writer(self.fd)

    def close(self) -> None:
        if self.open:
            self.open = False
            self.server.loop.remove_reader(self.fd)
            if self.out:
                self.server.loop.remove_writer(self.fd)
            self.sock.close()


class Server:
    def __init__(self, ttft_s: float, itl_s: float, kernel_send_stamps: bool = True) -> None:
        self.ttft_s, self.itl_s, self.kernel_send_stamps = ttft_s, itl_s, kernel_send_stamps
        self.loop = Loop()
        self.late_us = array("i")
        self.open = self.max_open = self.streams = self.writes = 0
        self.first_write = self.last_write = 0.0
        self.n = 0
        self.done: list[tuple[str, float, array]] = []  # (completion id, request arrival, token send times), epoch s
        self.tx_stamped = 0  # token send times that are the kernel's

    def listen(self, port: int) -> socket.socket:
        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lsock.bind(("127.0.0.1", port))
        lsock.listen(8192)
        lsock.setblocking(False)
        self.loop.add_reader(lsock.fileno(), lambda: self.accept(lsock))
        return lsock

    def accept(self, lsock: socket.socket) -> None:
        for _ in range(256):
            try:
                sock, _ = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            Conn(self, sock)

    def next_request(self, p: Conn) -> None:
        if p.busy:
            return  # pipelined: read after the current stream ends
        head_end = p.buf.find(b"\r\n\r\n")
        if head_end < 0:
            return
        head = p.buf[:head_end]
        length = 0
        for line in head.split(b"\r\n")[1:]:
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        end = head_end + 4 + length
        if len(p.buf) < end:
            return
        arrived = p.stamp
        body, p.buf = p.buf[head_end + 4:end], p.buf[end:]
        if p.buf:
            p.stamp = time.time()  # a pipelined request's bytes came with this one's: no time of their own
        if head[:4] == b"GET ":  # /health, /v1/models: the peers check the server before they start
            answer = b'{"object":"list","data":[{"id":"m","object":"model","created":0,"owned_by":"bench"}]}'
            p.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                    % (len(answer), answer))
            if p.buf:
                self.next_request(p)
            return
        try:
            doc = json.loads(body)
            n = int(doc.get("max_completion_tokens") or doc.get("max_tokens") or 16)
            prompt = sum(len(str(m.get("content") or "").split()) for m in doc.get("messages") or ())
        except (ValueError, TypeError, AttributeError):
            p.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
            return
        self.n += 1
        cid = f"chatcmpl-{self.n}"
        pre = '{"id":"%s","object":"chat.completion.chunk","created":0,"model":"m","choices":[' % cid
        role = _chunk(b"data: " + (pre + '{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}').encode() + b"\n\n")
        token = _chunk(b"data: " + (pre + '{"index":0,"delta":{"content":" w"},"finish_reason":null}]}').encode() + b"\n\n")
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
        tail = (_chunk(b"data: " + (pre + '{"index":0,"delta":{},"finish_reason":"length"}]}').encode() + b"\n\n")
                + _chunk(b"data: " + (pre + '],"usage":' + json.dumps(usage) + "}").encode() + b"\n\n")
                + _chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        p.busy = True
        p.write(HEAD + role)
        self.open += 1
        self.streams += 1
        self.max_open = max(self.max_open, self.open)
        # the schedule counts from the request's arrival in the kernel, on the perf_counter clock
        t0 = time.perf_counter() - (time.time() - arrived)
        self.loop.at(t0 + self.ttft_s, Stream(p, token, n, t0, tail, cid, arrived))

    def send_token(self, due: float, s: Stream) -> None:
        s.left -= 1
        conn = s.conn
        if not conn.open:
            self.open -= 1
            return
        s.written.append(0.0)
        conn.write(s.token if s.left else s.token + s.tail, s.written)
        sent = time.time()  # right after send(), until the kernel's send time replaces it
        now = time.perf_counter()
        self.late_us.append(int((now - due) * 1e6))
        if not self.first_write:
            self.first_write = now
        self.last_write = now
        self.writes += 1
        if not s.written[-1]:
            s.written[-1] = sent
        if s.left:
            self.loop.at(s.t0 + self.ttft_s + (s.n - s.left) * self.itl_s, s)
        else:
            self.done.append((s.cid, s.arrived, s.written))
            self.open -= 1
            conn.busy = False
            if conn.buf:
                self.next_request(conn)

    def truth(self) -> list[dict[str, Any]]:
        """Per completed stream, what the server really did: TTFT (the request's arrival -> first token sent)
        and the mean and p95 of its gaps between token sends, in ms."""
        out = []
        for cid, t0, written in self.done:
            gaps = sorted(b - a for a, b in zip(written, written[1:]))
            out.append({"id": cid, "ttft_ms": (written[0] - t0) * 1000,
                        "itl_mean_ms": 1000 * sum(gaps) / len(gaps) if gaps else None,
                        "itl_p95_ms": 1000 * _q(gaps, 0.95) if gaps else None})
        return out

    def stats(self) -> dict[str, Any]:
        late = sorted(self.late_us)

        def q(p: float) -> float | None:
            return late[min(len(late) - 1, int(p * len(late)))] / 1000.0 if late else None

        span = self.last_write - self.first_write
        return {"streams": self.streams, "token_writes": self.writes, "token_sends_kernel_stamped": self.tx_stamped, "max_open_streams": self.max_open,
                "writes_per_s": self.writes / span if span > 0 else None, "late_p50_ms": q(0.5),
                "late_p99_ms": q(0.99), "late_max_ms": late[-1] / 1000.0 if late else None,
                "early_max_ms": -late[0] / 1000.0 if late else None}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ports", type=int, nargs="+", required=True)
    ap.add_argument("--ttft-ms", type=float, required=True)
    ap.add_argument("--itl-ms", type=float, required=True)
    ap.add_argument("--stats-file")
    ap.add_argument("--send-stamps", choices=("kernel", "clock"), default="kernel",
                    help="a token's send time: the kernel's stamp (exact; about a third more CPU a token: the "
                         "stamp's trip through the error queue) or the clock right after send() returns")
    args = ap.parse_args()
    server = Server(args.ttft_ms / 1000, args.itl_ms / 1000, args.send_stamps == "kernel")
    listeners = [server.listen(port) for port in args.ports]

    def stop(*_: Any) -> None:
        server.loop.stopped = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    server.loop.run(server.send_token)
    for s in listeners:
        s.close()
    if args.stats_file:
        with open(args.stats_file, "w") as f:
            json.dump(server.stats(), f)
        with open(args.stats_file + ".truth.jsonl", "w") as f:
            f.writelines(json.dumps(t) + "\n" for t in server.truth())


def _q(s: list[float], q: float) -> float:
    """numpy's default (linear) quantile of a sorted list, as the harness computes a leg's p95 gap."""
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


if __name__ == "__main__":
    main()
