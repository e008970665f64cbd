"""`harness capture` on bad input: an upstream that is down, a body over the capture limit, a disk that
fills, unparseable HTTP."""
from __future__ import annotations

import gzip
import hashlib
import json
import resource
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

TARGET = Path(__file__).parent / "shadow_target.py"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _capture(upstream: str, out: Path, *extra: str, fsize: int | None = None) -> tuple[subprocess.Popen[str], str]:
    port = _free_port()

    def limit() -> None:  # a small "disk": writes past it fail with EFBIG instead of killing the process
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    proc = subprocess.Popen([sys.executable, "-m", "harness", "capture", "--listen", f"127.0.0.1:{port}",
                             "--upstream", upstream, "--out", str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=limit)
    assert proc.stdout is not None and proc.stdout.readline().startswith("listening on")
    return proc, f"http://127.0.0.1:{port}"


def _post(url: str, body: bytes) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    proc.send_signal(signal.SIGTERM)
    return proc.communicate(timeout=30)


def test_upstream_down_is_a_502_and_the_record_says_so(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    proc, url = _capture(dead, tmp_path / "c.jsonl")
    try:
        status, _ = _post(url + "/v1/score", b'{"x": 1}')
        out, err = _stop(proc)
    finally:
        proc.kill()
    assert status == 502
    (rec,) = [json.loads(x) for x in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert rec["production_status"] == 502 and rec["production_error"] == "connect"
    assert "upstream errors: connect 1" in out


@pytest.fixture
def upstream(tmp_path: Path):  # type: ignore[no-untyped-def]
    port_file = tmp_path / "up.port"
    proc = subprocess.Popen([sys.executable, str(TARGET), str(port_file), "--mode", "ok"])
    deadline = time.monotonic() + 20
    while not port_file.exists():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port_file.read_text()}"
    proc.kill()
    proc.wait(10)


def test_a_body_over_the_limit_is_forwarded_whole_and_recorded_cut(tmp_path: Path, upstream: str) -> None:
    proc, url = _capture(upstream, tmp_path / "c.jsonl.gz", "--max-body-bytes", "1000")
    body = json.dumps({"data": "z" * 50_000}).encode()
    try:
        status, answer = _post(url + "/v1/score", body)
        _stop(proc)
    finally:
        proc.kill()
    assert status == 200
    # the upstream saw every byte: its answer digests the whole body
    assert json.loads(answer)["digest"] == hashlib.sha256(b"POST/v1/score" + body).hexdigest()
    (rec,) = [json.loads(x) for x in gzip.decompress((tmp_path / "c.jsonl.gz").read_bytes()).splitlines()]
    assert rec["body_truncated"] is True and rec["body_bytes"] == len(body) and len(rec["body"]) == 1000


def test_a_full_disk_stops_the_capture_with_one_line_and_serving_goes_on(tmp_path: Path, upstream: str) -> None:
    proc, url = _capture(upstream, tmp_path / "c.jsonl", "--max-body-bytes", "100000", fsize=20_000)
    try:
        answers = []
        for i in range(60):
            answers.append(_post(url + "/v1/score", json.dumps({"i": i, "pad": "p" * 2000}).encode())[0])
            if i % 10 == 0:
                time.sleep(0.6)  # let the writer flush between groups: the disk fills part-way
        out, err = _stop(proc)
    finally:
        proc.kill()
    assert answers == [200] * 60
    assert proc.returncode == 4
    assert err.count("cannot write the capture") == 1, err
    assert "capture stopped" in out and "requests: 60" in out
    lines = (tmp_path / "c.jsonl").read_bytes().splitlines()
    assert 0 < len(lines) < 60 and all(json.loads(x)["production_status"] == 200 for x in lines)
