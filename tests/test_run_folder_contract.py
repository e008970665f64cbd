"""The run-folder contract checker (tests/run_folder_contract.py) finds what it is meant to find: the
integration tests rely on it, so it must be able to fail."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
import pytest

from run_folder_contract import FILES, assert_meets_contract, problems


def _folder(tmp_path: Path, legs_per_request: int = 2, verdict: str = "BLOCK") -> Path:
    run = tmp_path / "run"
    run.mkdir()
    for name in FILES:
        if name not in ("results.duckdb", "summary.json"):
            (run / name).write_text("x", encoding="utf-8")
    con = duckdb.connect(str(run / "results.duckdb"))
    con.execute("create table runs (id varchar)")
    con.execute("create table requests (request_id bigint, captured_at double, offset_s double, method varchar,"
                " path varchar, route varchar, request_bytes bigint)")
    con.execute("create table legs (request_id bigint, version varchar, intended_at double, sent_at double,"
                " send_lag_ms double, latency_ms double, service_ms double, status_code int, error_kind varchar,"
                " response_bytes bigint, schema_valid boolean)")
    con.execute("create table resources (version varchar)")
    con.execute("create table bad_records (line bigint)")
    con.execute("create view pairs as select * from requests")
    con.execute("insert into requests values (1, 0, 0, 'POST', '/a', '/a', 3)")
    for version in ["baseline", "candidate"][:legs_per_request]:
        con.execute(f"insert into legs values (1, '{version}', 0, 0, 0, 1, 1, 200, null, 5, true)")
    con.close()
    gate = {"name": "error_rate", "metric": "error_rate", "segment": None, "threshold": 0.01, "n": 1,
            "status": "fail", "reason": "r"}
    summary = {"verdict": verdict, "gates": [gate], "worst_segments": [], "counts": {}}
    (run / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return run


def test_a_complete_folder_meets_the_contract(tmp_path: Path) -> None:
    run = _folder(tmp_path)
    assert problems(run) == []
    assert_meets_contract(run)


def test_missing_files_tables_and_columns_are_named(tmp_path: Path) -> None:
    run = _folder(tmp_path)
    (run / "junit.xml").unlink()
    con = duckdb.connect(str(run / "results.duckdb"))
    con.execute("drop table bad_records")
    con.execute("alter table legs drop column send_lag_ms")
    con.close()
    assert sorted(problems(run)) == ["missing junit.xml", "results.duckdb: legs has no column send_lag_ms",
                                     "results.duckdb: no table bad_records"]
    with pytest.raises(AssertionError, match="missing junit.xml"):
        assert_meets_contract(run)


def test_legs_are_counted_per_mode(tmp_path: Path) -> None:
    run = _folder(tmp_path, legs_per_request=1)
    assert problems(run) == ["legs 1 != 2 x requests 1"]
    assert problems(run, "baseline-only") == []


def test_summary_verdict_and_gate_keys_are_checked(tmp_path: Path) -> None:
    run = _folder(tmp_path, verdict="MAYBE")
    s = json.loads((run / "summary.json").read_text(encoding="utf-8"))
    del s["gates"][0]["n"]
    s["gates"][0]["status"] = "ok"
    (run / "summary.json").write_text(json.dumps(s), encoding="utf-8")
    assert problems(run) == ["summary.json: verdict 'MAYBE' not one of ['BLOCK', 'HOLD', 'PROMOTE']",
                             "summary.json: gates[0] has no n", "summary.json: gates[0].status 'ok'"]
