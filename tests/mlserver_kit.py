"""Real serving stacks for tests: small scikit-learn models served by Seldon MLServer (KServe V2) or by a
TF-Serving-style V1 server, all on free ports of 127.0.0.1.

MLServer and scikit-learn live in their own virtual environment, `.venv-stacks` (`make stacks`; CI builds
it from .ci/run): MLServer pins its own dependencies and must not move harness's. This module is used from
both sides:
- from the tests (harness's interpreter): `StacksKit` trains models, writes the MLServer settings, starts
  and stops `mlserver start` and the V1 server, and scores rows offline, each by running this file with
  the stacks interpreter; nothing here imports scikit-learn or MLServer in harness's interpreter;
- as a script in the stacks interpreter: `python mlserver_kit.py train|score|serve-v1 ...`.

`skip_reason()` says why the stacks are unusable (no `.venv-stacks`); tests skip with it.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

__all__ = ["StacksKit", "Server", "STACKS_PYTHON", "skip_reason", "free_port"]

ROOT = Path(__file__).resolve().parents[1]
STACKS_VENV = Path(os.environ.get("HARNESS_STACKS_VENV", ROOT / ".venv-stacks"))
STACKS_PYTHON = STACKS_VENV / "bin" / "python"
MLSERVER_BIN = STACKS_VENV / "bin" / "mlserver"
START_TIMEOUT_S = 240.0  # MLServer takes about 30 s to start on 2 idle cores; the test machines are shared


def skip_reason() -> str | None:
    """None when the stacks are there; else the reason a test skips."""
    if not MLSERVER_BIN.exists() or not STACKS_PYTHON.exists():
        return (f"{STACKS_VENV} has no MLServer: run `make stacks` (CI builds it) to run the tests against "
                "real serving stacks")
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """A started model server: its base URL, its process and where it logs."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path
    grpc_url: str | None = None  # MLServer: its gRPC port (grpc://127.0.0.1:PORT)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


class StacksKit:
    """Models and servers under one working folder (a test's tmp_path)."""

    def __init__(self, workdir: Path) -> None:
        reason = skip_reason()
        if reason:
            raise RuntimeError(reason)
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)

    def _stacks(self, *args: str, stdin: bytes | None = None, timeout_s: float = 300) -> bytes:
        proc = subprocess.run([str(STACKS_PYTHON), __file__, *args], input=stdin, capture_output=True,
                              timeout=timeout_s, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"mlserver_kit {args[0]} failed ({proc.returncode}): {proc.stderr.decode()[-3000:]}")
        return proc.stdout

    def train(self, name: str, kind: str, n_features: int = 6, seed: int = 0) -> Path:
        """Trains a binary classifier (kind: logistic | boosting | forest) on a seeded synthetic data set;
        returns the joblib file."""
        path = self.workdir / "models" / f"{name}.joblib"
        path.parent.mkdir(parents=True, exist_ok=True)
        self._stacks("train", str(path), kind, str(n_features), str(seed))
        return path

    def score(self, model: Path, rows: Sequence[Sequence[float]]) -> list[list[float]]:
        """predict_proba of each row, scored offline by the same scikit-learn."""
        out = self._stacks("score", str(model), stdin=json.dumps([list(r) for r in rows]).encode())
        return json.loads(out)

    @contextmanager
    def mlserver(self, model: Path, model_name: str = "model", version: str = "v1") -> Iterator[Server]:
        """`mlserver start` serving `model` (mlserver_sklearn.SKLearnModel) under /v2/models/{model_name}."""
        folder = self.workdir / f"mlserver-{model_name}-{model.stem}"
        (folder / model_name).mkdir(parents=True, exist_ok=True)
        http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
        (folder / "settings.json").write_text(json.dumps({
            "host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
            "parallel_workers": 0, "server_name": f"kit-{model.stem}", "debug": False}))
        (folder / model_name / "model-settings.json").write_text(json.dumps({
            "name": model_name, "implementation": "mlserver_sklearn.SKLearnModel",
            "parameters": {"uri": str(model), "version": version}}))
        url = f"http://127.0.0.1:{http_port}"
        server = self._start([str(MLSERVER_BIN), "start", str(folder)], folder / "mlserver.log", url,
                             f"{url}/v2/models/{model_name}/ready")
        server.grpc_url = f"grpc://127.0.0.1:{grpc_port}"
        try:
            yield server
        finally:
            server.stop()

    @contextmanager
    def v1_server(self, model: Path, model_name: str = "model") -> Iterator[Server]:
        """A TF-Serving / KServe V1 REST server (`POST /v1/models/{name}:predict`, `{"instances": [...]}` ->
        `{"predictions": [[p0, p1], ...]}`) over the same scikit-learn model."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log = self.workdir / f"v1-{model_name}-{model.stem}.log"
        server = self._start([str(STACKS_PYTHON), __file__, "serve-v1", str(model), model_name, str(port)], log, url,
                             f"{url}/v1/models/{model_name}")
        try:
            yield server
        finally:
            server.stop()

    @staticmethod
    def _start(argv: list[str], log: Path, url: str, ready_url: str) -> Server:
        f = open(log, "wb")  # noqa: SIM115 - the child writes to it until it stops
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(log.parent))
        f.close()
        server = Server(url, proc, log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited with {proc.returncode} before it was ready: "
                                   f"{log.read_text(errors='replace')[-3000:]}")
            try:
                with urllib.request.urlopen(ready_url, timeout=2) as r:  # noqa: S310 - 127.0.0.1 only
                    if r.status == 200:
                        return server
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        server.stop()
        raise RuntimeError(f"{argv} not ready within {START_TIMEOUT_S:g} s: {log.read_text(errors='replace')[-3000:]}")


# ------------------------------------------------------------------ the stacks side (run by .venv-stacks)

def _data(n_features: int, seed: int) -> Any:
    from sklearn.datasets import make_classification

    return make_classification(n_samples=4000, n_features=n_features, n_informative=min(4, n_features),
                               n_redundant=0, class_sep=0.8, flip_y=0.05, random_state=seed)


def _train(path: str, kind: str, n_features: str, seed: str) -> None:
    import joblib
    from sklearn.ensemble import GradientBoostingClassifier, RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    x, y = _data(int(n_features), int(seed))
    model = {"logistic": lambda: LogisticRegression(max_iter=1000),
             "boosting": lambda: GradientBoostingClassifier(n_estimators=60, max_depth=3, random_state=int(seed)),
             "forest": lambda: RandomForestClassifier(n_estimators=40, max_depth=6, random_state=int(seed))}[kind]()
    model.fit(x, y)
    joblib.dump(model, path)


def _score(path: str) -> None:
    import joblib
    import numpy as np

    model = joblib.load(path)
    rows = np.asarray(json.load(sys.stdin), dtype=np.float64)
    json.dump(model.predict_proba(rows).tolist(), sys.stdout)


def _serve_v1(path: str, model_name: str, port: str) -> None:
    """TF Serving's REST predict (also KServe V1): row format `instances`, or columnar `inputs`."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import joblib
    import numpy as np

    model = joblib.load(path)
    predict_path = f"/v1/models/{model_name}:predict"

    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True
        protocol_version = "HTTP/1.1"

        def _send(self, status: int, doc: Any) -> None:
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == f"/v1/models/{model_name}":
                self._send(200, {"model_version_status": [{"version": "1", "state": "AVAILABLE"}]})
            else:
                self._send(404, {"error": f"no model at {self.path}"})

        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path != predict_path:
                self._send(404, {"error": f"no model at {self.path}"})
                return
            try:
                doc = json.loads(raw)
                rows = doc["instances"] if "instances" in doc else doc["inputs"]
                x = np.asarray(rows, dtype=np.float64)
                if x.ndim != 2:
                    raise ValueError(f"expected a list of rows, got shape {list(x.shape)}")
            except (ValueError, KeyError, TypeError) as exc:
                self._send(400, {"error": str(exc)})
                return
            self._send(200, {"predictions": model.predict_proba(x).tolist()})

        def log_message(self, *args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 256  # the default 5 refuses connections when a replay opens many at once
        daemon_threads = True

    server = Server(("127.0.0.1", int(port)), Handler)
    server.serve_forever()


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    {"train": _train, "score": _score, "serve-v1": _serve_v1}[command](*rest)
