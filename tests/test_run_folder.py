"""harness.open_run: a run folder as a DuckDB connection, its summary and DataFrames, for notebooks."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

import harness
from harness.errors import UsageError

GATES = [
    {"name": "error_rate", "metric": "error_rate", "aggregation": "rate", "segment": None, "status": "pass",
     "severity": "blocking", "baseline": 0.0, "candidate": 0.001, "observed": 0.001, "ci": [0.0, 0.004],
     "threshold": 0.01, "threshold_text": "<= 1 %", "n": 1000, "p_value": 1.0, "effect": 0.001, "reason": "ok"},
    {"name": "latency_p95_ms", "metric": "latency_ms", "aggregation": "p95", "segment": "tenant=free",
     "status": "fail", "severity": "blocking", "baseline": 10.0, "candidate": 14.0, "observed": 1.4,
     "ci": [1.3, 1.5], "threshold": 0.1, "n": 400, "reason": "slower"},
]


def _run_folder(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    con = duckdb.connect(str(run / "results.duckdb"))
    con.execute("create table requests as select * from (values (1, 'free'), (2, 'pro')) t(request_id, tenant)")
    con.execute("create table legs as select * from (values (1, 'baseline', 10.0), (1, 'candidate', 14.0),"
                " (2, 'baseline', 11.0), (2, 'candidate', 11.5)) t(request_id, version, latency_ms)")
    con.close()
    summary = {"verdict": "BLOCK", "gates": GATES,
               "segments": [{"segment": "tenant=free", "n": 1, "baseline_p95_ms": 10.0, "candidate_p95_ms": 14.0}],
               "worst_segments": [{"segment": "tenant=free", "gate": "latency_p95_ms", "effect": 0.4}]}
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return run


def test_open_run_gives_summary_frames_and_sql(tmp_path: Path) -> None:
    with harness.open_run(_run_folder(tmp_path)) as run:
        assert run.verdict == "BLOCK" and run.summary["gates"] == GATES
        gates = run.gates
        assert isinstance(gates, pd.DataFrame) and len(gates) == 2
        failing = gates[gates.status == "fail"]
        assert failing.segment.tolist() == ["tenant=free"]
        assert failing.ci_lower.tolist() == [1.3] and failing.ci_upper.tolist() == [1.5]
        assert gates.segment.isna().tolist() == [True, False]
        assert run.segments.set_index("segment").loc["tenant=free", "candidate_p95_ms"] == 14.0
        assert run.worst_segments.gate.tolist() == ["latency_p95_ms"]
        legs = run.table("legs")
        assert legs.shape == (4, 3) and legs.latency_ms.sum() == pytest.approx(46.5)
        by_tenant = run.sql("select tenant, avg(latency_ms) as mean_ms from legs join requests using (request_id)"
                            " where version = ? group by 1 order by 1", ["candidate"])
        assert by_tenant.to_dict("records") == [{"tenant": "free", "mean_ms": 14.0}, {"tenant": "pro", "mean_ms": 11.5}]
        assert run.con.execute("select count(*) from legs").fetchone() == (4,)


def test_open_run_names_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="summary.json: not found"):
        harness.open_run(tmp_path)
    with harness.open_run(_run_folder(tmp_path)) as run:
        with pytest.raises(UsageError, match="no table 'nope'"):
            run.table("nope")
        with pytest.raises(UsageError, match="query failed"):
            run.sql("select nope from legs")


@pytest.mark.integration
def test_open_run_reads_a_real_run_as_its_summary_says(demo_run: Any) -> None:
    with harness.open_run(demo_run.run_dir) as run:
        assert run.verdict == demo_run.summary["verdict"]
        failing = run.gates[run.gates.status == "fail"]
        assert set(zip(failing.name, failing.segment.fillna("overall"))) == {
            (g["name"], g["segment"] or "overall") for g in demo_run.summary["gates"] if g["status"] == "fail"}
        n_requests = run.sql("select count(*) as n from requests").n[0]
        assert len(run.table("legs")) == 2 * n_requests
        assert set(run.segments.segment) >= {"route=/v1/score", "tenant=enterprise"}
