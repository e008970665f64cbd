"""Items 5 and 6 of issue 15: nothing replayed is an input error, and gates name things that exist.
Each case ends before anything is sent, exit 3, one line naming the cause."""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]


def _capture(tmp_path: Path, n: int = 1200) -> Path:
    p = tmp_path / "c.jsonl"
    p.write_text("".join(json.dumps({"ts": 1_700_000_000 + i * 0.1, "method": "POST", "path": "/predict",
                                     "headers": {"X-Tenant": "pro" if i % 2 else "free"}, "body": {"x": i}}) + "\n"
                         for i in range(n)))
    return p


def _scenario(tmp_path: Path, capture: Path, url: str, extra: str = "", allow: str = "POST /predict") -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(f"""name: t
traffic: {{path: {capture}}}
segments:
  tenant: {{header: X-Tenant}}
targets: {{baseline: {{url: "{url}"}}, candidate: {{url: "{url}"}}}}
replay: {{allow: ["{allow}"]}}
promotion_gates:
  error_rate: {{maximum: 0.01}}
{extra}""")
    return p


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("harness: error:"), err
    return lines[0]


@pytest.fixture
def listener() -> str:
    """A reachable target (the run's reachability probe connects); nothing may be sent to it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        yield f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.integration
def test_a_typo_in_allow_is_exit_3_before_anything_is_sent(capsys, tmp_path, listener) -> None:
    p = _scenario(tmp_path, _capture(tmp_path), listener, allow="POST /predcit")
    code = main(["run", str(p), "--out", str(tmp_path / "r")])
    line = _error(capsys)
    assert code == 3
    assert "nothing to replay: 1,200 of 1,200 records" in line and "(POST /predict 1,200)" in line
    assert not any((tmp_path / "r").iterdir())  # no half-made run folder


def test_a_window_past_the_capture_is_exit_3(capsys, tmp_path, listener) -> None:
    p = _scenario(tmp_path, _capture(tmp_path), listener)
    p.write_text(p.read_text().replace("traffic: {path:", "traffic: {window: {from_s: 500}, path:"))
    code = main(["validate", str(p)])
    assert code == 3 and "1,200 outside traffic.window" in _error(capsys)


def test_validate_prints_the_counts(capsys, tmp_path) -> None:
    capture = _capture(tmp_path, 10)
    with capture.open("a") as f:
        f.write('{"ts": 1700000002, "method": "DELETE", "path": "/cache/7"}\nnot json\n')
    p = _scenario(tmp_path, capture, "http://127.0.0.1:1")
    code = main(["validate", str(p)])
    out = capsys.readouterr().out
    assert code == 0
    assert "records read: 12" in out and "to replay: 10" in out and "bad records: 1" in out
    assert "skipped: 1 not allowed: DELETE" in out and "(DELETE /cache/{id} 1)" in out


def test_a_gate_on_an_undefined_segment_is_a_validate_error_with_its_line(capsys, tmp_path) -> None:
    p = _scenario(tmp_path, _capture(tmp_path, 10), "http://127.0.0.1:1", extra="""  enterprise_p99:
    metric: latency_ms
    aggregation: p99
    segment: {tenat: enterprise}
    maximum_regression_percent: 20
""")
    code = main(["validate", str(p)])
    line = _error(capsys)
    assert code == 3 and f"{p}:12:" in line and "unknown segment 'tenat'" in line and "tenant" in line


def test_a_gate_value_never_seen_lists_the_values_seen(capsys, tmp_path) -> None:
    p = _scenario(tmp_path, _capture(tmp_path, 10), "http://127.0.0.1:1", extra="""  enterprise_errors:
    metric: error_rate
    segment: {tenant: enterprise}
    maximum: 0.01
""")
    code = main(["validate", str(p)])
    line = _error(capsys)
    assert code == 3 and "tenant='enterprise'" in line and "values seen: 'free', 'pro'" in line


@pytest.mark.parametrize("gate, line_no, expected", [
    ("  latency_p97_ms: {maximum_regression_percent: 10}\n", 9, "unknown gate 'latency_p97_ms'"),
    ("  error_rate_x:\n    metric: error_rate\n    maximun: 0.01\n", 11, "unknown key 'maximun'"),
])
def test_unknown_gates_and_misspelt_keys_name_their_line(capsys, tmp_path, gate, line_no, expected) -> None:
    p = _scenario(tmp_path, _capture(tmp_path, 10), "http://127.0.0.1:1", extra=gate)
    code = main(["validate", str(p)])
    line = _error(capsys)
    assert code == 3 and f"{p}:{line_no}:" in line and expected in line


def test_a_capture_of_bad_records_only_names_the_first_and_why(capsys, tmp_path, listener) -> None:
    """Every record bad (here without a method): the one line says why, from the first bad record's line,
    not only "1,200 bad records"."""
    capture = tmp_path / "c.jsonl"
    capture.write_text("".join(json.dumps({"ts": 1_700_000_000 + i, "path": "/predict"}) + "\n" for i in range(1200)))
    p = _scenario(tmp_path, capture, listener)
    code = main(["validate", str(p)])
    line = _error(capsys)
    assert code == 3 and "1,200 bad records (the first, line 1: " in line, line
