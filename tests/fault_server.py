"""A real HTTP/1.1 server on 127.0.0.1 that misbehaves on request, for tests.

Behaviour by path (query parameters tune it): /ok, /echo (answers with what it received), /slow?ms=N,
/hang (never answers), /reset (closes mid-answer), /trickle?ms=N (body one byte per N ms),
/status?code=N, /invalid_json, /big?mb=N, /schema_break, /idle_close (a kept-alive connection's next request
is read and dropped: the connection closes without an answer, as when a server's keep-alive timeout closes a
connection just as a request arrives), /drop (every request is read and dropped). `stall` (threading.Event) holds every answer
while set, like a SIGSTOPped process. Every request is counted per path so tests can see retries."""
from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from collections import Counter
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = ["FaultServer"]

OK_BODY = {"prediction": "legit", "confidence": 0.25, "model_version": "fault-1"}


class FaultServer:
    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.received: list[dict[str, Any]] = []
        self.stall = threading.Event()
        self.connections = 0
        self.trickled: list[int] = []  # body bytes each /trickle answer wrote before it ended (whole, or cut)
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                server.connections += 1
                while True:
                    try:
                        req = self._read_request()
                    except (ConnectionError, OSError):
                        return
                    if req is None:
                        return
                    if not server._answer(self, req):
                        return

            def _read_request(self) -> dict[str, Any] | None:
                line = self.rfile.readline(65537)
                if not line:
                    return None
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: list[tuple[str, str]] = []
                while True:
                    h = self.rfile.readline(65537)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, v = h.decode("latin-1").split(":", 1)
                    headers.append((k.strip(), v.strip()))
                length = int(dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
                body = self.rfile.read(length) if length else b""
                return {"method": method, "target": target, "headers": headers, "body": body}

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 512

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "FaultServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stall.clear()
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def _send(handler: Any, status: int, body: bytes, ctype: str = "application/json", extra: str = "") -> None:
        head = (f"HTTP/1.1 {status} X\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
                ).encode()
        handler.wfile.write(head + body)
        handler.wfile.flush()

    def _answer(self, h: Any, req: dict[str, Any]) -> bool:
        parts = urlsplit(req["target"])
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        self.hits[path] += 1
        self.received.append(req)
        while self.stall.is_set():
            time.sleep(0.005)
        if path == "/drop" or (path == "/idle_close" and getattr(h, "answered", False)):
            return False
        h.answered = True
        if path == "/slow":
            time.sleep(float(q.get("ms", "20")) / 1000)
        if path == "/hang":
            time.sleep(float(q.get("s", "30")))
            return False
        if path == "/reset":
            h.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"predic")
            h.wfile.flush()
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            h.connection.close()
            return False
        if path == "/reset_token":  # cut inside a JSON answer whose credential the request did not carry
            h.wfile.write(b'HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{"access_token": "tok-issued-0123456789", "pre')
            h.wfile.flush()
            h.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            h.connection.close()
            return False
        if path == "/trickle":
            body = json.dumps(OK_BODY).encode()
            h.wfile.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode())
            for i, b in enumerate(body):
                try:
                    h.wfile.write(bytes([b]))
                    h.wfile.flush()
                except OSError:  # the client (a proxy) went away: how far it got
                    self.trickled.append(i)
                    return False
                time.sleep(float(q.get("ms", "50")) / 1000)
            self.trickled.append(len(body))
            return True
        if path == "/status":
            self._send(h, int(q.get("code", "500")), b'{"error": "injected"}')
            return True
        if path == "/invalid_json":
            self._send(h, 200, b"<html>not json</html>", "text/html")
            return True
        if path == "/big":
            size = int(float(q.get("mb", "50")) * 1024 * 1024)
            h.wfile.write(f"HTTP/1.1 200 OK\r\nContent-Length: {size}\r\n\r\n".encode())
            chunk = b" " * 65536
            try:
                for _ in range(size // len(chunk)):
                    h.wfile.write(chunk)
            except OSError:
                return False
            return True
        if path == "/echo":
            self._send(h, 200, json.dumps({**OK_BODY, "method": req["method"], "target": req["target"],
                                           "headers": req["headers"], "body": req["body"].decode("latin-1")}).encode())
            return True
        if path == "/schema_break":
            self._send(h, 200, json.dumps({"prediction": "legit", "confidence": "0.3"}).encode())
            return True
        self._send(h, 200, json.dumps(OK_BODY).encode())
        return True
