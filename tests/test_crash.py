"""Item 1 of issue 15: an unexpected exception is exit 4 with one line naming harness.log, never exit 1."""
from __future__ import annotations

import socket
from pathlib import Path

import duckdb
import pytest

import harness.outputs
import harness.run
from harness.cli import main

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "captured_traffic" / "fraud_sample.jsonl"


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_bug_while_reporting_is_exit_4_naming_harness_log(capsys, tmp_path, monkeypatch) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    duckdb.connect(str(run_dir / "results.duckdb")).close()

    def broken(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr(harness.outputs, "load_run_info", broken)  # a bug in the judging of a run
    code = main(["report", str(run_dir)])
    line = _one_line(capsys.readouterr().err)
    assert code == 4
    assert str(run_dir / "harness.log") in line
    assert "ZeroDivisionError: planted bug" in (run_dir / "harness.log").read_text()


@pytest.mark.integration
def test_a_bug_during_a_run_is_exit_4_and_the_run_row_says_failed(capsys, tmp_path, monkeypatch) -> None:
    def broken_monitor(*args: object, **kwargs: object) -> None:
        raise ZeroDivisionError("planted bug")

    monkeypatch.setattr(harness.run, "resource_monitor", broken_monitor)  # a bug after the run row exists
    with socket.socket() as listener:  # a reachable target; nothing is sent before the bug
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}"
        scenario = tmp_path / "s.yaml"
        scenario.write_text(f"name: t\ntraffic: {{path: {SAMPLE}, max_requests: 20}}\n"
                            f"targets: {{baseline: {{url: '{url}'}}, candidate: {{url: '{url}'}}}}\n"
                            "replay: {allow: ['POST /*']}\n")
        code = main(["run", str(scenario), "--out", str(tmp_path / "r")])
    line = _one_line(capsys.readouterr().err)
    (run_dir,) = (tmp_path / "r").iterdir()
    assert code == 4
    assert "ZeroDivisionError: planted bug" in line and str(run_dir / "harness.log") in line
    log = (run_dir / "harness.log").read_text()
    assert "Traceback" in log and "planted bug" in log
    con = duckdb.connect(str(run_dir / "results.duckdb"), read_only=True)
    status, reason = con.execute("select status, status_reason from runs").fetchone()
    assert status == "failed" and "ZeroDivisionError: planted bug" in reason
