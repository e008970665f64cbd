"""Harness itself interrupted mid-replay.

SIGINT / SIGTERM: every leg that completed is in results.duckdb (the fault server's hit count is the
witness), the run is marked incomplete, the unsent requests are skipped with the reason, the report
renders and says the run is incomplete, exit code 4.
SIGKILL: at most the last flush interval (<= 1 s) of legs is lost, results.duckdb opens, and
`harness report RUN_DIR` rebuilds the outputs from it without a traceback."""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Callable

import duckdb
import pytest

from fault_server import FaultServer
from reliability_kit import (HarnessProc, assert_no_traceback, check_accounting, query, records, run_harness,
                             run_status, summary, the_run_dir, wait_for, write_jsonl, write_scenario)

pytestmark = pytest.mark.integration

RATE = 80  # pairs per second of captured time, replayed at speed 1


def _start(tmp_path: Path, srv: FaultServer, n: int = 480) -> HarnessProc:
    capture = write_jsonl(tmp_path / "c.jsonl", records(n, rate=RATE))  # 6 s of traffic: interrupted well before
    scenario = write_scenario(tmp_path, capture, srv.url, srv.url)
    return HarnessProc(["run", str(scenario), "--out", str(tmp_path / "reports")], tmp_path)


@pytest.fixture(scope="module", params=[signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def interrupted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    sig: signal.Signals = request.param
    tmp = tmp_path_factory.mktemp(sig.name)
    with FaultServer() as srv:
        p = _start(tmp, srv)
        try:
            wait_for(lambda: srv.hits["/ok"] >= 60, 60, "the replay to be under way")
            p.signal(sig)
            rc = p.wait(timeout=60)
        finally:
            p.kill_if_running()
        hits = srv.hits["/ok"]
    return {"sig": sig, "rc": rc, "proc": p, "hits": hits, "run_dir": the_run_dir(tmp / "reports")}


def test_sigint_sigterm_keep_every_completed_leg(interrupted: dict[str, Any]) -> None:
    sig, p, run_dir = interrupted["sig"], interrupted["proc"], interrupted["run_dir"]
    assert interrupted["rc"] == 4, p.stderr
    assert_no_traceback(p.stdout, p.stderr)
    status, reason = run_status(run_dir)
    assert status == "incomplete" and sig.name in (reason or ""), (status, reason)
    # every request the target answered is a leg in results.duckdb: nothing completed is lost
    (legs,), = query(run_dir, "select count(*) from legs")
    assert legs == interrupted["hits"]
    assert legs < 2 * 480  # it really was interrupted
    counts = check_accounting(run_dir, "paired")
    assert counts["skipped_total"] > 0
    assert all(sig.name in r for r in counts["skipped"]), counts["skipped"]
    assert summary(run_dir)["run"]["status"] == "incomplete"
    assert any("incomplete" in n.lower() for n in summary(run_dir)["notes"])
    html = (run_dir / "gate_report.html").read_text(encoding="utf-8")
    assert html.lstrip().lower().startswith("<!doctype html>") and "</html>" in html


def test_interrupted_report_says_incomplete(interrupted: dict[str, Any]) -> None:
    html = (interrupted["run_dir"] / "gate_report.html").read_text(encoding="utf-8")
    assert "incomplete" in html.lower()


def test_sigkill_loses_at_most_one_flush_interval(tmp_path: Path, harness_proc: Callable[..., HarnessProc]) -> None:
    with FaultServer() as srv:
        capture = write_jsonl(tmp_path / "c.jsonl", records(480, rate=RATE))
        scenario = write_scenario(tmp_path, capture, srv.url, srv.url)
        p = harness_proc(["run", scenario, "--out", tmp_path / "reports"], tmp_path)
        wait_for(lambda: srv.hits["/ok"] >= 200, 60, "the replay to be under way")
        p.signal(signal.SIGKILL)
        assert p.wait(timeout=30) == -signal.SIGKILL
        hits = srv.hits["/ok"]
    run_dir = the_run_dir(tmp_path / "reports")
    # results.duckdb opens after a SIGKILL, and holds all but the last flush interval of legs
    con = duckdb.connect(str(run_dir / "results.duckdb"), read_only=True)
    try:
        (legs,), = con.execute("select count(*) from legs").fetchall()
        (status,), = con.execute("select status from runs").fetchall()
    finally:
        con.close()
    assert status not in ("complete",)
    one_second_of_legs = 2 * RATE  # two legs per pair at RATE pairs/s
    in_flight = 10  # received by the target, not yet answered when the process died: never completed legs
    assert 0 < legs <= hits
    assert hits - legs <= one_second_of_legs + in_flight, (hits, legs)
    # `harness report` rebuilds every output from the killed run's results.duckdb
    rc, out, err = run_harness(["report", run_dir], tmp_path)
    assert rc in (0, 1, 2, 4), err
    assert rc == 4  # the run is not complete, whatever the gates say
    assert_no_traceback(out, err)
    for name in ("summary.json", "gate_report.html", "canary_schedule.yaml", "junit.xml"):
        assert (run_dir / name).exists(), name
    assert summary(run_dir)["run"]["status"] != "complete"
    assert "incomplete" in (run_dir / "gate_report.html").read_text(encoding="utf-8").lower()
    check_accounting(run_dir, "paired", legs_complete=False)


def test_an_interrupt_is_no_evidence_against_the_candidate(interrupted: dict[str, Any]) -> None:
    """The provisional judgement is the gates' on the legs that completed: an interrupt stops the sending, it
    is not the sequential test's early stop (which BLOCKs). It was "Stopped early: interrupted by SIGINT",
    BLOCK, with every gate passing or inconclusive."""
    s = summary(interrupted["run_dir"])
    assert s["verdict"] == "INCOMPLETE" and s["provisional_verdict"] != "BLOCK", s["verdict_reasons"]
    assert not any("stopped early" in r.lower() for r in s["verdict_reasons"]), s["verdict_reasons"]
    assert s["replay"]["stopped_early"] is None and interrupted["sig"].name in s["replay"]["ended_by"]
