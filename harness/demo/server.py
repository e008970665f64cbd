"""The demo fraud-scoring model server: stdlib HTTP/1.1 over one of the models of model.py.

    python -m harness.demo.server --variant baseline|candidate|candidate-clean
                                  [--host 127.0.0.1] [--port 0] [--port-file PATH]

Routes (JSON in and out):

    POST /v1/score                         {"transactions": [{amount, merchant_category, hour, features[16]}, ...]}
    POST /v1/accounts/{account_id}/score   same body, same answer
    GET  /v1/models/fraud                  {"name": "fraud", "model_version": ..., "inputs": 16}
    GET  /healthz                          {"status": "ok"}
    GET  /metrics                          Prometheus text: demo_oom_events_total (MemoryErrors while scoring)

Segment headers read by the candidate's planted flaws: ``X-Tenant-Tier`` and ``X-Geo-Region``.
It listens on loopback only, says ``listening on http://HOST:PORT`` on stdout, writes the port to
``--port-file`` (atomically) once bound, and stops cleanly on SIGTERM or SIGINT. No request log.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np

from .model import (N_FEATURES, VARIANTS, InvalidRequest, Model, Route, answer_score_request,
                    jittered_ms, load_model)

__all__ = ["main", "make_server", "DemoHTTPServer"]

MAX_BODY_BYTES = 4 * 1024 * 1024
_ACCOUNT_SCORE = re.compile(r"/v1/accounts/[A-Za-z0-9_.~-]+/score")
_ROUTES: dict[str, str] = {"/v1/score": "POST", "/v1/models/fraud": "GET", "/healthz": "GET", "/metrics": "GET"}


class DemoHTTPServer(ThreadingHTTPServer):
    daemon_threads = True      # idle keep-alive connections must not hold the process at exit
    request_queue_size = 256   # the load generator opens many connections at once
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], model: Model) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, DemoHandler)
        self.model = model
        # per-process jitter source; numpy Generators are not thread-safe, hence the lock
        self._rng = np.random.default_rng()
        self._rng_lock = threading.Lock()
        # the server's own out-of-memory counter, as a GPU server counts CUDA OOMs: the evidence the
        # demo scenario's gpu_oom_events gate reads (targets.X.oom_counter)
        self.oom_events = 0

    def standard_normal(self) -> float:
        with self._rng_lock:
            return float(self._rng.standard_normal())

    def handle_error(self, request: Any, client_address: Any) -> None:
        # clients that hang up (timeouts of the load generator) are normal, not worth a traceback
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class DemoHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"     # keep-alive: the replay reuses its connections
    disable_nagle_algorithm = True    # headers and body go out as two writes: no 40 ms Nagle stall
    server: DemoHTTPServer
    server_version = "harness-demo/1"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # quiet: one line per request would cost more than the service itself

    # -- plumbing ---------------------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """The request body, or None after answering an error (too large, bad framing)."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._send(400, {"error": "invalid Content-Length"})
            return None
        if length > MAX_BODY_BYTES:
            self.close_connection = True  # we do not read it, so the connection is out of step
            self._send(413, {"error": f"body larger than {MAX_BODY_BYTES} bytes"})
            return None
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes | None:
        parts: list[bytes] = []
        total = 0
        while True:
            try:
                size = int(self.rfile.readline(64).split(b";")[0].strip(), 16)
            except ValueError:
                size = -1
            total += max(size, 0)
            if size < 0 or total > MAX_BODY_BYTES:
                self.close_connection = True
                self._send(400 if size < 0 else 413, {"error": "bad chunked body"})
                return None
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return b"".join(parts)
            parts.append(self.rfile.read(size))
            self.rfile.readline(8)

    def _send(self, status: int, payload: dict[str, Any], extra: dict[str, str] | None = None) -> None:
        data = json.dumps(payload, separators=(",", ":")).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))  # always: keep-alive needs framing
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    # -- routing ----------------------------------------------------------------------------

    def _dispatch(self) -> None:
        body = self._read_body()  # read even when unused, so the next request on the connection parses
        if body is None:
            return
        path = self.path.split("?", 1)[0]
        route: Route | None = None
        if path == "/v1/score":
            route = "score"
        elif _ACCOUNT_SCORE.fullmatch(path):
            route = "account_score"
        allowed = "POST" if route else _ROUTES.get(path)
        if allowed is None:
            self._send(404, {"error": f"no route {path}"})
        elif self.command != allowed:
            self._send(405, {"error": f"{self.command} not allowed on {path}"}, {"Allow": allowed})
        elif route is not None:
            self._score(route, body)
        elif path == "/healthz":
            self._send(200, {"status": "ok"})
        elif path == "/metrics":
            text = ("# TYPE demo_oom_events_total counter\n"
                    f"demo_oom_events_total {self.server.oom_events}\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(text)))
            self.end_headers()
            self.wfile.write(text)
        else:
            model = self.server.model
            self._send(200, {"name": "fraud", "model_version": model.model_version, "inputs": N_FEATURES})

    def _score(self, route: Route, body: bytes) -> None:
        started = time.perf_counter()
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, ValueError) as exc:
            self._send(400, {"error": f"body is not valid JSON: {exc}"})
            return
        try:
            outcome = answer_score_request(self.server.model, doc, body, route,
                                           self.headers.get("X-Tenant-Tier"), self.headers.get("X-Geo-Region"))
        except InvalidRequest as exc:
            self._send(400, {"error": str(exc)})
            return
        except MemoryError:
            self.server.oom_events += 1
            self._send(503, {"error": "out of memory"})
            return
        # the modelled service time includes the real compute above: sleep only what is left
        target_s = jittered_ms(outcome.service_ms, self.server.standard_normal()) / 1000.0
        left_s = target_s - (time.perf_counter() - started)
        if left_s > 0:
            time.sleep(left_s)
        self._send(outcome.status, outcome.payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch


def _check_loopback(host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        if ipaddress.ip_address(host).is_loopback:
            return host
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{host!r} is not a loopback address: the demo server listens on loopback only")


def make_server(variant: str, host: str = "127.0.0.1", port: int = 0) -> DemoHTTPServer:
    """A bound (not yet serving) server for ``variant``; the model is built first."""
    return DemoHTTPServer((_check_loopback(host), port), load_model(variant))


def _write_port_file(path: Path, port: int) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n")
    os.replace(tmp, path)  # readers never see a half-written number


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.demo.server", description="The demo fraud-scoring model server.")
    parser.add_argument("--variant", required=True, choices=VARIANTS)
    parser.add_argument("--host", default="127.0.0.1", type=_check_loopback, help="a loopback address")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server = make_server(args.variant, args.host, args.port)
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"listening on http://{shown}:{port}", flush=True)
    if args.port_file:
        _write_port_file(args.port_file, int(port))
    serving = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    serving.start()
    while not stop.wait(0.2):
        pass
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
