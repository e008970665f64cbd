"""The captures ML platforms write: SageMaker Data Capture files (read like any capture) and KServe's
inference logger CloudEvents (received by `harness capture --sink`)."""
from __future__ import annotations

import base64
import gzip
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from harness.traffic.readers import iter_records
from harness.traffic.record import BadRecord, CapturedRequest


def _sm(event_id: str, data: str, encoding: str = "JSON", out: str | None = '{"predictions": [0.25]}',
        ctype: str = "application/json", t: str = "2026-11-02T14:03:11Z") -> str:
    rec = {"captureData": {"endpointInput": {"observedContentType": ctype, "mode": "INPUT", "data": data,
                                             "encoding": encoding}},
           "eventMetadata": {"eventId": event_id, "inferenceTime": t, "customAttributes": ["tenant=acme"]},
           "eventVersion": "0"}
    if out is not None:
        rec["captureData"]["endpointOutput"] = {"observedContentType": "application/json", "mode": "OUTPUT",
                                                "data": out, "encoding": "JSON"}
    return json.dumps(rec)


def test_sagemaker_data_capture_reads_as_a_capture(tmp_path: Path) -> None:
    path = tmp_path / "endpoint-capture.jsonl"
    path.write_text("\n".join([
        _sm("e1", '{"instances": [[1, 2]]}'),
        _sm("e2", base64.b64encode(b"\x00\x01binary").decode(), "BASE64", None, "application/x-npy",
            "2026-11-02T14:03:12.500Z"),
        _sm("e3", "1,2,3", "CSV", ctype="text/csv"),
        '{"captureData": {"endpointInput": {"data": "x", "encoding": "UTF-16"}}, '
        '"eventMetadata": {"eventId": "e4", "inferenceTime": "2026-11-02T14:03:13Z"}}',
    ]) + "\n")
    items = list(iter_records(path))  # recognised from its first record, though named .jsonl
    reqs = [i for i in items if isinstance(i, CapturedRequest)]
    bad = [i for i in items if isinstance(i, BadRecord)]
    assert [r.meta["request_id"] for r in reqs] == ["e1", "e2", "e3"]
    assert all(r.method == "POST" and r.path == "/invocations" for r in reqs)
    assert reqs[0].body == b'{"instances": [[1, 2]]}' and reqs[0].header("content-type") == "application/json"
    assert reqs[0].header("X-Amzn-SageMaker-Custom-Attributes") == "tenant=acme"
    assert reqs[0].response is not None and reqs[0].response.status == 200
    assert reqs[0].response.body == b'{"predictions": [0.25]}'
    assert reqs[1].body == b"\x00\x01binary" and reqs[1].response is None
    assert reqs[1].ts - reqs[0].ts == pytest.approx(1.5)
    assert reqs[2].body == b"1,2,3" and reqs[2].header("content-type") == "text/csv"
    assert len(bad) == 1 and bad[0].line == 4 and "UTF-16" in bad[0].reason


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _post(url: str, body: bytes, headers: dict[str, str]) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.integration
def test_kserve_logger_events_join_into_records(tmp_path: Path) -> None:
    port = _free_port()
    out = tmp_path / "kserve.jsonl.gz"
    proc = subprocess.Popen([sys.executable, "-m", "harness", "capture", "--sink", "--listen", f"127.0.0.1:{port}",
                             "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("listening on")
        url = f"http://127.0.0.1:{port}/kserve-logger"

        def ce(ce_id: str, kind: str, t: str, body: bytes) -> int:
            return _post(url, body, {"Content-Type": "application/json", "ce-id": ce_id, "ce-specversion": "1.0",
                                     "ce-type": f"org.kubeflow.serving.inference.{kind}", "ce-time": t,
                                     "ce-source": "http://localhost:9081/", "ce-inferenceservicename": "fraud",
                                     "ce-namespace": "ml", "ce-component": "predictor",
                                     "Authorization": "Bearer should-not-matter"})

        # the response may come first: they are joined on ce-id
        assert ce("a1", "response", "2026-11-02T14:00:00.120Z", b'{"predictions": [1]}') == 202
        assert ce("a1", "request", "2026-11-02T14:00:00.100Z", b'{"instances": [[1.0]], "api_key": "k-123456"}') == 202
        assert ce("a2", "request", "2026-11-02T14:00:01Z", b'{"instances": [[2.0]]}') == 202  # never answered
        structured = {"specversion": "1.0", "id": "a3", "type": "org.kubeflow.serving.inference.request",
                      "source": "x", "time": "2026-11-02T14:00:02Z", "datacontenttype": "application/json",
                      "inferenceservicename": "fraud", "data": {"instances": [[3.0]]}}
        assert _post(url, json.dumps(structured).encode(), {"Content-Type": "application/cloudevents+json"}) == 202
        assert _post(url, b"{}", {"Content-Type": "application/json", "ce-id": "z", "ce-type": "other"}) == 400
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, stderr
    records = [json.loads(x) for x in gzip.decompress(out.read_bytes()).splitlines()]
    by_id = {r["request_id"]: r for r in records}
    assert set(by_id) == {"a1", "a2", "a3"}
    a1 = by_id["a1"]
    assert a1["method"] == "POST" and a1["path"] == "/v1/models/fraud:predict"
    assert a1["body"] == {"instances": [[1.0]], "api_key": "[REDACTED]"}
    assert a1["production_status"] == 200 and a1["production_body"] == {"predictions": [1]}
    assert a1["production_latency_ms"] == pytest.approx(20.0)
    assert a1["kserve_namespace"] == "ml"
    assert "production_status" not in by_id["a2"]
    assert by_id["a3"]["body"] == {"instances": [[3.0]]}
    # and it reads back as a capture, the production answer as the reference
    reqs = [i for i in iter_records(out) if isinstance(i, CapturedRequest)]
    assert {r.meta["request_id"]: r.response is not None for r in reqs} == {"a1": True, "a2": False, "a3": False}
    assert "unparseable HTTP refused: 1" in stdout
