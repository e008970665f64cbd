"""A real HTTP server on 127.0.0.1 (port 0) that answers every request with one fixed JSON body, for tests."""
from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["AnswerServer"]


class AnswerServer:
    def __init__(self, body: bytes, status: int = 200, delay_s: float = 0.0, host: str = "127.0.0.1") -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: without it, 40 ms of delayed ACK

            def log_message(self, *args: object) -> None:
                pass

            def _reply(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                if delay_s:
                    time.sleep(delay_s)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def do_OPTIONS(self) -> None:  # noqa: N802 - a CORS preflight's answer: no body
                self.send_response(204)
                self.send_header("Allow", "GET, HEAD, POST, OPTIONS")
                self.end_headers()

            do_GET = do_POST = do_HEAD = _reply  # noqa: N815 - http.server's naming

        self.httpd = ThreadingHTTPServer((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://{host}:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> "AnswerServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
