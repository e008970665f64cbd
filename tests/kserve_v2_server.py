"""A KServe V2 / Open Inference Protocol (REST) server on 127.0.0.1, for tests: written here, not KServe.

Why not KServe itself: `kserve` 0.21 from PyPI installs cleanly here (into a throwaway venv) and serves
a custom Model, but it pulls about 70 packages / 450 MB (kubernetes, grpcio, grpcio-tools, fastapi,
uvicorn, aiohttp, cryptography, pillow, ...) and its ModelServer binds 0.0.0.0. That is too much for a
test dependency, so this server follows the protocol instead, checked against KServe's answers for the
same model: tests/test_protocols.py::test_faithful_server_matches_real_kserve runs when
HARNESS_KSERVE_PYTHON names a Python with kserve installed (tests/kserve_real_model.py is the KServe side).

Endpoints (https://kserve.github.io/website/docs/concepts/architecture/data-plane/v2-protocol):
- GET  /v2                                   server metadata {name, version, extensions}
- GET  /v2/health/live, /v2/health/ready     {"live": true}, {"ready": true}
- GET  /v2/models/{name}[/versions/{v}]      model metadata {name, versions, platform, inputs, outputs}
- GET  /v2/models/{name}[/versions/{v}]/ready  {"name", "ready"}
- POST /v2/models/{name}[/versions/{v}]/infer  inference: request {id?, parameters?, inputs: [{name, shape,
  datatype, data}], outputs?: [{name}]} -> response {model_name, model_version, id, parameters, outputs:
  [{name, shape, datatype, parameters, data}]}; errors are {"error": "..."} with 400 (bad request) or
  404 (unknown model), as KServe answers them.

The model ("fraud" by default) scores each row of its FP32 `features` input [rows, 4] as the clipped
sum / 100: `label` (BYTES: "fraud" above 0.5, else "legit") and `probability` (FP32, rounded to
float32 as a real FP32 tensor would be). `label_names` renames labels and `drop_outputs` leaves outputs
out, to plant incompatibilities in a candidate.
"""
from __future__ import annotations

import json
import math
import re
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["KServeV2Server", "score_rows"]

_ROUTE = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?(/ready|/infer)?$")
_DATATYPES = {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32",
              "FP64", "BYTES"}


def _fp32(x: float) -> float:
    return float(struct.unpack("f", struct.pack("f", x))[0])


def score_rows(rows: list[list[float]]) -> list[tuple[str, float]]:
    out = []
    for row in rows:
        p = min(1.0, max(0.0, sum(float(v) for v in row) / 100.0))
        out.append(("fraud" if p > 0.5 else "legit", _fp32(p)))
    return out


def _flatten(data: Any) -> list[Any]:
    if isinstance(data, list):
        flat: list[Any] = []
        for x in data:
            flat.extend(_flatten(x) if isinstance(x, list) else [x])
        return flat
    return [data]


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # the default backlog of 5 drops connections in a burst of requests


class KServeV2Server:
    def __init__(self, *, model: str = "fraud", version: str = "1", label_names: dict[str, str] | None = None,
                 drop_outputs: tuple[str, ...] = ()) -> None:
        self.model, self.version = model, version
        self.label_names = label_names or {}
        self.drop_outputs = drop_outputs
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _reply(self, status: int, doc: Any) -> None:
                body = json.dumps(doc, separators=(",", ":")).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                status, doc = server.get(self.path)
                self._reply(status, doc)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                status, doc = server.post(self.path, self.rfile.read(length))
                self._reply(status, doc)

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "KServeV2Server":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _unknown(self, name: str) -> tuple[int, dict[str, Any]]:
        return 404, {"error": f"Model with name {name} does not exist."}

    def metadata(self) -> dict[str, Any]:
        outputs = [{"name": "label", "datatype": "BYTES", "shape": [-1]},
                   {"name": "probability", "datatype": "FP32", "shape": [-1]}]
        return {"name": self.model, "versions": [self.version], "platform": "python",
                "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
                "outputs": [o for o in outputs if o["name"] not in self.drop_outputs]}

    def get(self, path: str) -> tuple[int, Any]:
        if path == "/v2":
            return 200, {"name": "harness-tests-v2", "version": "0.1", "extensions": []}
        if path == "/v2/health/live":
            return 200, {"live": True}
        if path == "/v2/health/ready":
            return 200, {"ready": True}
        m = _ROUTE.match(path)
        if not m or m.group(3) == "/infer":
            return 404, {"error": f"no route {path}"}
        if m.group(1) != self.model or (m.group(2) and m.group(2) != self.version):
            return self._unknown(m.group(1))
        if m.group(3) == "/ready":
            return 200, {"name": self.model, "ready": True}
        return 200, self.metadata()

    def post(self, path: str, raw: bytes) -> tuple[int, Any]:
        m = _ROUTE.match(path)
        if not m or m.group(3) != "/infer":
            return 404, {"error": f"no route {path}"}
        if m.group(1) != self.model or (m.group(2) and m.group(2) != self.version):
            return self._unknown(m.group(1))
        try:
            req = json.loads(raw)
        except ValueError as exc:
            return 400, {"error": f"Unrecognized request format: {exc}"}
        inputs = req.get("inputs") if isinstance(req, dict) else None
        if not isinstance(inputs, list) or not inputs:
            return 400, {"error": "Unrecognized request format: inputs is required"}
        for t in inputs:
            if not isinstance(t, dict) or not {"name", "shape", "datatype", "data"} <= set(t):
                return 400, {"error": "Unrecognized request format: each input needs name, shape, datatype, data"}
            if t["datatype"] not in _DATATYPES:
                return 400, {"error": f"invalid datatype {t['datatype']!r} for input {t['name']}"}
            if math.prod(t["shape"]) != len(_flatten(t["data"])):
                return 400, {"error": f"input {t['name']}: shape {t['shape']} does not match {len(_flatten(t['data']))} "
                                      "elements"}
        x = next((t for t in inputs if t["name"] == "features"), inputs[0])
        flat = [float(v) for v in _flatten(x["data"])]
        width = x["shape"][-1] if len(x["shape"]) > 1 else len(flat)
        rows = [flat[i:i + width] for i in range(0, len(flat), width)]
        scored = score_rows(rows)
        outputs = [
            {"name": "label", "shape": [len(rows)], "datatype": "BYTES", "parameters": None,
             "data": [self.label_names.get(lbl, lbl) for lbl, _ in scored]},
            {"name": "probability", "shape": [len(rows)], "datatype": "FP32", "parameters": None,
             "data": [p for _, p in scored]},
        ]
        wanted = {o.get("name") for o in req.get("outputs") or () if isinstance(o, dict)}
        outputs = [o for o in outputs if o["name"] not in self.drop_outputs and (not wanted or o["name"] in wanted)]
        return 200, {"model_name": self.model, "model_version": self.version, "id": req.get("id"),
                     "parameters": None, "outputs": outputs}
