"""`harness capture` in front of the demo model server: a real client with bursts and concurrency, one
SIGKILL of the proxy, and a replay of what it captured."""
from __future__ import annotations

import base64
import gzip
import json
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.demo.launcher import start_server
from harness.traffic.readers import iter_records
from harness.traffic.record import BadRecord

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "captured_traffic" / "fraud_sample.jsonl"
SECRET = "sk-live-capture-secret-9f8e7d6c"
HARNESS = [sys.executable, "-m", "harness"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_capture(port: int, upstream: str, out: str, cwd: Path, *extra: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*HARNESS, "capture", "--listen", f"127.0.0.1:{port}", "--upstream", upstream,
                             "--out", out, *extra], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("listening on"), line + (proc.stderr.read() if proc.poll() is not None else "")
    return proc


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _capture_records(files: list[Path]) -> list[dict[str, Any]]:
    out = []
    for f in files:
        data = gzip.decompress(f.read_bytes())  # raises on a file left cut inside a gzip member
        out += [json.loads(x) for x in data.splitlines() if x.strip()]
    return out


def _scenario(directory: Path, capture: Path, baseline: str, candidate: str, name: str) -> Path:
    d = yaml.safe_load((REPO / "scenarios" / "fraud_demo.yaml").read_text())
    d["name"] = name
    d["traffic"] = {"path": str(capture), "speed": 1}
    d["targets"]["baseline"]["url"] = baseline
    d["targets"]["candidate"]["url"] = candidate
    d["output"]["route_schemas"] = {k: str(REPO / "scenarios" / v) for k, v in d["output"]["route_schemas"].items()}
    d["promotion_gates"] = {"latency_p95_ms": {"maximum_regression_percent": 10}, "error_rate": {"maximum": 0.01},
                            "schema_validation_pass_rate": {"minimum": 0.995}}
    d["analysis"] = {"bootstrap_resamples": 300}
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def _replay(scenario: Path, out: Path) -> dict[str, Any]:
    proc = subprocess.run([*HARNESS, "run", str(scenario), "--out", str(out), "--progress-every", "60"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode in (0, 1, 2), proc.stdout + proc.stderr
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return json.loads((run_dir / "summary.json").read_text())


def test_capture_survives_sigkill_and_replays_like_the_clients_own_log(tmp_path: Path) -> None:
    baseline = start_server("baseline")
    candidate = start_server("candidate")
    procs: list[subprocess.Popen[str]] = []
    try:
        port = _free_port()
        out = str(tmp_path / "cap" / "prod-%Y%m%dT%H.jsonl.gz")
        procs.append(_start_capture(port, baseline.url, out, tmp_path, "--rotate-mb", "0.25"))
        client_out = tmp_path / "client"
        client = subprocess.Popen([sys.executable, str(REPO / "tests" / "capture_client.py"),
                                   f"http://127.0.0.1:{port}", str(SAMPLE), "2500", str(client_out),
                                   "--secret", SECRET], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        answered_log = client_out / "answered.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if answered_log.exists() and answered_log.read_text().count("\n") >= 1000:
                break
            assert client.poll() is None, client.stdout.read() if client.stdout else ""
            time.sleep(0.05)
        killed_at = time.time()
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        time.sleep(0.5)
        procs.append(_start_capture(port, baseline.url, out, tmp_path, "--rotate-mb", "0.25"))
        assert client.wait(180) == 0, client.stdout.read() if client.stdout else ""
        procs[1].send_signal(signal.SIGTERM)
        _, err = procs[1].communicate(timeout=30)
        assert procs[1].returncode == 0, err
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        baseline.stop()
        candidate.stop()

    answered = _lines(answered_log)
    assert len(answered) >= 2400, len(answered)  # the client waited out the restart
    statuses = Counter(a["status"] for a in answered)
    assert not statuses[502] and not statuses[504], statuses  # the upstream was up all along
    files = sorted((tmp_path / "cap").iterdir())
    assert len(files) >= 3, files  # rotated by size, and the restarted proxy never appends to a file
    records = _capture_records(files)
    text = b"".join(gzip.decompress(f.read_bytes()) for f in files).decode()
    assert SECRET not in text and "[REDACTED]" in text
    captured = {int(r["headers"]["X-Client-Seq"]): r for r in records}
    missing = [a for a in answered if a["seq"] not in captured]
    # every answered request is there, except at most those answered in the last second before the kill
    assert all(killed_at - 1.0 <= a["answered_at"] <= killed_at + 0.5 for a in missing), \
        [(a["seq"], killed_at - a["answered_at"]) for a in missing if a["answered_at"] < killed_at - 1.0][:10]
    # the production answer is the one the client got
    by_seq = {a["seq"]: a for a in answered}
    for seq, rec in list(captured.items())[:300]:
        assert rec["production_status"] == by_seq[seq]["status"]
        assert rec["production_bytes"] == len(base64.b64decode(by_seq[seq]["body_b64"]))
    # the files read as one capture (concatenated gzip members), without a bad record
    joined = tmp_path / "captured.jsonl.gz"
    joined.write_bytes(b"".join(f.read_bytes() for f in files))
    items = list(iter_records(joined))
    assert not [i for i in items if isinstance(i, BadRecord)]
    assert len(items) == len(records)
    # the production answer is the production reference of the record read back
    assert all(i.response is not None and i.response.status == i.meta["production_status"] for i in items
               if not isinstance(i, BadRecord))

    # the capture replays to the same verdict as the client's own log of the same traffic
    baseline = start_server("baseline")
    candidate = start_server("candidate")
    try:
        ours = _replay(_scenario(tmp_path, joined, baseline.url, candidate.url, "from-capture"), tmp_path / "r1")
        theirs = _replay(_scenario(tmp_path, client_out / "sent.jsonl", baseline.url, candidate.url, "from-client"),
                         tmp_path / "r2")
    finally:
        baseline.stop()
        candidate.stop()
    assert ours["verdict"] == theirs["verdict"] == "BLOCK"
    failing = {(g["name"], g["segment"]) for g in ours["gates"] if g["status"] == "fail"}
    failing_theirs = {(g["name"], g["segment"]) for g in theirs["gates"] if g["status"] == "fail"}
    assert ("error_rate", "route=/v1/accounts/{id}/score") in failing & failing_theirs
