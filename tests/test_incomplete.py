"""Item 8 of issue 15: an incomplete run prints no promote/block verdict, only a provisional judgement, exit 4."""
from __future__ import annotations

import xml.etree.ElementTree as ET
import json

import duckdb
import pytest

from harness.cli import main

from small_run import small_run

pytestmark = pytest.mark.integration


def test_an_incomplete_run_has_no_verdict(capsys, tmp_path) -> None:
    result = small_run(tmp_path)
    # the complete run's verdict (PROMOTE on a quiet machine; a loaded one can HOLD on replay fidelity)
    judged = result.verdict
    assert judged in ("PROMOTE", "HOLD")
    con = duckdb.connect(str(result.run_dir / "results.duckdb"))
    con.execute("update runs set status = 'incomplete', status_reason = 'interrupted by SIGINT'")
    con.close()
    capsys.readouterr()
    code = main(["report", str(result.run_dir)])
    out = capsys.readouterr().out
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert code == 4
    assert "verdict:" not in out and judged not in out.split("provisional")[0]
    assert "run incomplete (interrupted by SIGINT): no verdict" in out
    assert f"provisional judgement of the legs that completed: {judged}" in out
    assert summary["verdict"] == "INCOMPLETE" and summary["provisional_verdict"] == judged
    assert summary["schedule"]["start_allowed"] is False
    suite = ET.parse(result.run_dir / "junit.xml").getroot()
    assert suite.get("errors") == "1" and suite.find("testcase/error").get("type") == "run_incomplete"


def test_a_time_budget_ends_the_sending_and_decides_nothing(tmp_path) -> None:
    """replay.max_duration_s reached: the run is complete, the unsent requests are skipped with that reason,
    and the verdict is the gates' (it was BLOCK, "Stopped early: replay.max_duration_s (2 s) reached")."""
    result = small_run(tmp_path, n=600, gap_s=0.01, max_duration_s=2)
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert result.verdict in ("PROMOTE", "HOLD"), summary["verdict_reasons"]
    assert summary["run"]["status"] == "complete"
    assert summary["replay"]["stopped_early"] is None
    assert summary["replay"]["ended_by"] == "replay.max_duration_s (2 s) reached"
    con = duckdb.connect(str(result.run_dir / "results.duckdb"), read_only=True)
    try:
        reasons = con.execute("select reason, count(*) from skipped group by 1").fetchall()
    finally:
        con.close()
    assert reasons and all(r == "not sent: replay.max_duration_s (2 s) reached" for r, _ in reasons), reasons
    assert "Sending ended" in (result.run_dir / "gate_report.html").read_text(encoding="utf-8")
