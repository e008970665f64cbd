"""CaptureMiddleware in a real Starlette app served by uvicorn (its own process)."""
from __future__ import annotations

import gzip
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

SERVER = Path(__file__).parent / "asgi_model_server.py"
SECRET = "sk-mw-secret-5566778899"


def _post(url: str, i: int) -> tuple[int, bytes]:
    body = json.dumps({"transactions": [{"amount": i}] * (1 + i % 3), "api_key": SECRET}).encode()
    req = urllib.request.Request(f"{url}/v1/score?client=web&i={i}", data=body, method="POST", headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {SECRET}", "X-Seq": str(i)})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read()


def test_middleware_writes_every_request_redacted(tmp_path: Path) -> None:
    port_file = tmp_path / "port"
    proc = subprocess.Popen([sys.executable, str(SERVER), str(port_file), str(tmp_path / "cap" / "mw.jsonl.gz")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
            time.sleep(0.02)
        url = f"http://127.0.0.1:{port_file.read_text()}"
        deadline = time.monotonic() + 30
        while True:
            try:
                _post(url, 0)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(lambda i: _post(url, i), range(1, 201)))
        assert all(status == 200 for status, _ in answers)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert out.strip(), err
    stats = json.loads(out.strip().splitlines()[-1])
    assert stats["written"] == 201 and stats["dropped"] == {}, (stats, err)
    data = b"".join(gzip.decompress(Path(f).read_bytes()) for f in stats["files"])
    assert SECRET.encode() not in data and b"srv-secret-x1" not in data
    records = [json.loads(x) for x in data.splitlines()]
    seqs = sorted(int(r["headers"]["x-seq"]) for r in records if "x-seq" in r["headers"])
    assert seqs == list(range(0, 201))
    r = next(r for r in records if r["headers"].get("x-seq") == "7")
    assert r["method"] == "POST" and r["path"] == "/v1/score?client=web&i=7"
    assert r["body"]["transactions"] == [{"amount": 7}, {"amount": 7}] and r["body"]["api_key"] == "[REDACTED]"
    assert r["headers"]["authorization"] == "[REDACTED]"
    assert r["production_status"] == 200 and r["production_body"]["n"] == 2
    assert r["production_body"]["token"] == "[REDACTED]"


def test_a_json_body_over_the_capture_limit_is_masked_before_it_is_cut(tmp_path: Path) -> None:
    """The middleware, as the proxy, masks a request's JSON body whole and then cuts it: cut first, the body
    could not be parsed and its credential went into the capture as written."""
    port_file = tmp_path / "port"
    out = tmp_path / "cap" / "mw.jsonl"
    proc = subprocess.Popen([sys.executable, str(SERVER), str(port_file), str(out), "--max-body-bytes", "200"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    body = json.dumps({"api_key": SECRET, "transactions": [{"amount": i} for i in range(100)]}).encode()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{port_file.read_text()}/v1/score", data=body,
                                             method="POST", headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as r:
                    assert json.loads(r.read())["n"] == 100
                break
            except (OSError, ValueError):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = out.read_text()
    assert SECRET not in text
    (rec,) = [json.loads(x) for x in text.splitlines()]
    assert rec["body_truncated"] is True and rec["body_bytes"] == len(body)
    assert rec["body"].startswith('{"api_key":"[REDACTED]"') and len(rec["body"]) == 200


def test_an_app_that_raises_or_a_client_that_leaves_mid_answer_is_recorded(tmp_path: Path) -> None:
    """Production's failures belong in the capture: an app that raises (the user got a 500) and an answer
    its client left mid-way are recorded with why, never silently missing."""
    port_file = tmp_path / "port"
    out = tmp_path / "cap" / "mw.jsonl"
    proc = subprocess.Popen([sys.executable, str(SERVER), str(port_file), str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                port = int(port_file.read_text())
                req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/crash", data=b"{}", method="POST")
                urllib.request.urlopen(req, timeout=30)
            except urllib.error.HTTPError as exc:
                assert exc.code == 500
                break
            except (OSError, ValueError):
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b"data: 0" in s.recv(65536) or b"data: 0" in s.recv(65536)
        deadline = time.monotonic() + 20
        while not (out.exists() and len(out.read_text().splitlines()) == 2):
            assert time.monotonic() < deadline, "the streamed answer's client left: no record"
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    crash, stream = (json.loads(x) for x in out.read_text().splitlines())
    assert (crash["path"], crash["production_status"], crash["production_error"]) == ("/v1/crash", 500, "exception")
    assert (stream["path"], stream["production_status"], stream["production_error"]) == ("/v1/stream", 200,
                                                                                        "incomplete")
    assert "production_body" not in stream and 0 < stream["production_bytes"] < 50 * 9
