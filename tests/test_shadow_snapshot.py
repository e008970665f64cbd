"""Snapshots of a running shadow run are incremental: each reads only what was appended to the capture
and the legs spool since the one before (counted in records, not timed), and what it publishes is what
a build from the whole files makes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from harness.capture.exchange import Exchange, ExchangeRecords
from harness.capture.forward import Answer
from harness.capture.writer import CaptureWriter
from harness.scenario import load_scenario
from harness.shadow.legs import LegBuilder, leg_records
from harness.shadow.results import build_results
from harness.shadow.snapshot import make_snapshot

pytestmark = pytest.mark.integration

T0 = 1_790_000_000.0
ANSWER = b'{"prediction":"ok","confidence":0.9}'


def _scenario(tmp: Path) -> Path:
    path = tmp / "live.yaml"
    path.write_text(yaml.safe_dump({
        "name": "live", "traffic": {"path": str(tmp / "unused.jsonl")},
        "segments": {"tenant": {"header": "X-Tenant-Tier"}},
        "targets": {"baseline": {"url": "http://127.0.0.1:9"}, "candidate": {"url": "http://127.0.0.1:9"}},
        "replay": {"allow": ["POST /v1/score"]},
        "promotion_gates": {"error_rate": {"maximum": 0.01}}, "analysis": {"bootstrap_resamples": 200}}))
    return path


def _put(capture: CaptureWriter, legs: CaptureWriter, lo: int, hi: int) -> None:
    for i in range(lo, hi):
        rid, ts = f"s{i + 1:09d}", T0 + i * 0.01
        body = json.dumps({"amount": i}).encode()
        headers = (("Content-Type", "application/json"), ("X-Tenant-Tier", ("free", "enterprise")[i % 2]),
                   ("Authorization", "Bearer sk-snapshot-secret-123456"))
        capture.put(Exchange(ts, "POST", "/v1/score", headers, body, 200, 5.0, (("Content-Type", "application/json"),),
                             ANSWER, len(ANSWER), meta={"request_id": rid}))
        for version, ms in (("baseline", 5.0), ("candidate", 6.0 + i % 3)):
            answer = Answer(200, (("Content-Type", "application/json"),), ANSWER, len(ANSWER), ts, ts + ms / 1000)
            legs.put((version, rid, "/v1/score", ts, answer))


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def test_each_snapshot_reads_only_what_was_appended_and_matches_a_full_build(tmp_path: Path) -> None:
    scenario_path = _scenario(tmp_path)
    scenario = load_scenario(scenario_path)
    run_dir = tmp_path / "run"
    (run_dir / ".work").mkdir(parents=True)
    capture_path, legs_path = run_dir / "shadow_traffic.jsonl.gz", run_dir / ".work" / "legs.jsonl"
    capture = CaptureWriter(str(capture_path), ExchangeRecords(scenario.traffic.redact, max_body_bytes=1 << 24))
    legs = CaptureWriter(str(legs_path), leg_records(LegBuilder(scenario), scenario.replay.max_response_bytes))

    def snapshot() -> tuple[int, int]:
        legs_file, legs_size = legs.barrier()
        capture_file, capture_size = capture.barrier()
        return make_snapshot({"run_dir": str(run_dir), "scenario": str(scenario_path), "capture": capture_file,
                              "capture_size": capture_size, "legs": legs_file, "legs_size": legs_size,
                              "capture_recorded": str(capture_path), "drops": {}, "replay_event": {"mode": "live shadow"},
                              "reason": "live shadow still running"})

    try:
        assert snapshot() == (0, 0)  # before the first request: an empty run folder, as at a shadow's start
        assert _rows(run_dir / "results.duckdb", "select count(*) from requests") == [(0,)]
        (run_dir / ".snapshot").mkdir()
        (run_dir / ".snapshot" / "results.duckdb").write_bytes(b"left by a snapshot that failed")
        _put(capture, legs, 0, 150)
        assert snapshot() == (150, 300)
        _put(capture, legs, 150, 180)
        assert snapshot() == (30, 60)  # the first 150 requests and their legs are not read again
        assert snapshot() == (0, 0)
    finally:
        capture.close()
        legs.close()
    db = run_dir / "results.duckdb"
    assert _rows(db, "select status from runs") == [("incomplete",)]
    full = tmp_path / "full"
    build_results(scenario, full, run_id=run_dir.name, capture_path=capture_path, capture_recorded=capture_path,
                  legs_path=legs_path, drops={}, replay_event={"mode": "live shadow"}, status="incomplete",
                  reason="live shadow still running")
    requests = "select * exclude (captured_at), epoch(captured_at) from requests order by order_idx"
    legs_sql = "select * from legs order by order_idx, version"
    assert len(_rows(db, requests)) == 180 and len(_rows(db, legs_sql)) == 360
    assert _rows(db, requests) == _rows(full / "results.duckdb", requests)
    assert _rows(db, legs_sql) == _rows(full / "results.duckdb", legs_sql)
    assert _rows(db, "select capture_sha256 from runs") == _rows(full / "results.duckdb", "select capture_sha256 from runs")
    assert not any("sk-snapshot-secret" in str(r) for r in _rows(db, "select headers_json from requests"))
