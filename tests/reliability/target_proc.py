"""A tiny model server in its own process, for tests that kill the target and start it again.

    python target_proc.py --port 0 --port-file F [--hits-file H]

Answers every request with 200 and a small JSON prediction; binds with SO_REUSEADDR so that a
SIGKILLed instance can be replaced on the same port at once; writes the bound port to --port-file
(atomically) and appends one byte to --hits-file per request received (O_APPEND: several
instances, one after the other, count into the same file). Standard library only: starts fast."""
from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BODY = json.dumps({"prediction": "legit", "confidence": 0.25, "model_version": "proc-1"}).encode()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", type=Path, required=True)
    ap.add_argument("--hits-file", type=Path)
    args = ap.parse_args()
    hits_fd = os.open(args.hits_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if args.hits_file else None

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *a: Any) -> None:  # noqa: A002
            pass

        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            if hits_fd is not None:
                os.write(hits_fd, b".")
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)

        do_GET = do_POST = do_PUT = _answer

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        allow_reuse_address = True
        request_queue_size = 256

    server = Server(("127.0.0.1", args.port), Handler)
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(server.server_address[1]))
    tmp.replace(args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
