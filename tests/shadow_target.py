"""A model server for the shadow tests, in its own process: deterministic answers (the same request body
always gets the same bytes), and on request a candidate that is slow or that fails.

    python tests/shadow_target.py PORT_FILE --mode ok|slow|failing [--slow-ms N]

ok: 200 with {"prediction", "confidence", "digest"} computed from the body (HEAD: its head; OPTIONS: 204,
no body). slow: the same after N ms
(default 3000). failing: every other request 500, every fifth one a connection closed mid-answer.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port_file", type=Path)
    ap.add_argument("--mode", choices=["ok", "slow", "failing"], default="ok")
    ap.add_argument("--slow-ms", type=float, default=3000.0)
    args = ap.parse_args()
    count = [0]
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a: object) -> None:
            pass

        def handle(self) -> None:
            try:
                super().handle()
            except (BrokenPipeError, ConnectionResetError):
                pass  # the proxy gave up on a slow answer: expected here

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with lock:
                count[0] += 1
                n = count[0]
            if args.mode == "slow":
                time.sleep(args.slow_ms / 1000.0)
            if args.mode == "failing" and n % 5 == 0:
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"predic")
                self.wfile.flush()
                self.close_connection = True
                return
            if args.mode == "failing" and n % 2 == 0:
                out = b'{"error":"candidate failed"}'
                self.send_response(500)
            else:
                digest = hashlib.sha256(self.command.encode() + self.path.encode() + body).hexdigest()
                score = int(digest[:4], 16) / 65535
                out = json.dumps({"prediction": "fraud" if score > 0.8 else "legit", "confidence": round(score, 6),
                                  "digest": digest, "model_version": f"target-{args.mode}"}).encode()
                self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.send_header("X-Target", args.mode)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(out)

        def do_OPTIONS(self) -> None:  # a CORS preflight's answer: no body
            self.send_response(204)
            self.send_header("Allow", "GET, HEAD, POST, OPTIONS")
            self.end_headers()

        do_GET = do_POST = do_DELETE = do_PUT = do_HEAD = _answer

    class Server(ThreadingHTTPServer):
        request_queue_size = 1024  # bursts of new connections: the default backlog of 5 costs a SYN retry (1 s)

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(server.server_address[1]))
    os.replace(tmp, args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
