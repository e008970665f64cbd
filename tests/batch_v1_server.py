"""A TF Serving / KServe V1 predict server on 127.0.0.1 for tests, written here (no scikit-learn needed):
`POST /v1/models/{name}:predict` with `{"instances": [[x, ...], ...]}` answers
`{"predictions": [[1 - p, p], ...]}` with p = sigmoid(weights . x + bias), one row per instance.

With `faults=True` a request may ask for a planted fault in its `fault` field: "short" answers one row
fewer, "long" one more, "nan" gives row 0 a NaN probability, "badsum" gives row 0 probabilities summing to
1.5, "ragged" gives row 0 three classes. `delay_s` answers that much later. tests/mlserver_kit.py serves real scikit-learn models instead."""
from __future__ import annotations

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Sequence

__all__ = ["BatchV1Server", "probability"]


def probability(weights: Sequence[float], bias: float, row: Sequence[float]) -> float:
    return 1.0 / (1.0 + math.exp(-(sum(w * x for w, x in zip(weights, row)) + bias)))


class BatchV1Server:
    def __init__(self, weights: Sequence[float], bias: float = 0.0, faults: bool = False, delay_s: float = 0.0) -> None:
        self.weights, self.bias, self.faults, self.delay_s = list(weights), bias, faults, delay_s
        owner = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                doc = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                if owner.delay_s:
                    time.sleep(owner.delay_s)
                preds: list[Any] = [[1 - (p := probability(owner.weights, owner.bias, r)), p] for r in doc["instances"]]
                fault = doc.get("fault") if owner.faults else None
                if fault == "short":
                    preds = preds[:-1]
                elif fault == "long":
                    preds.append(preds[-1])
                elif fault == "nan":
                    preds[0] = [float("nan"), float("nan")]
                elif fault == "badsum":
                    preds[0] = [0.7, 0.8]
                elif fault == "ragged":
                    preds[0] = [0.2, 0.3, 0.5]
                body = json.dumps({"predictions": preds}).encode()  # NaN as JSON's NaN, as numpy-based servers do
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # the default 5 refuses connections in a burst of new pairs

        self._server = Server(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "BatchV1Server":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
