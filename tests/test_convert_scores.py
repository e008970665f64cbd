"""`harness traffic convert` (faithful round trips, secrets masked by default, a closed pipe) and
`harness scores import` (harness's or the capture's request ids, errors that name the row)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from harness.cli import main
from harness.errors import TrafficError
from harness.scores import import_scores
from harness.traffic.readers import iter_records
from harness.traffic.record import CapturedRequest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "captured_traffic" / "fraud_sample.jsonl"
TOKEN = "Bearer sk-live-0123456789abcdef"


def _capture(tmp_path: Path) -> Path:
    lines = [
        # a body with spaces and key order of its own: not what a JSON serialiser writes
        {"ts": 1700000000.5, "method": "POST", "path": "/v1/score?client=web", "body": '{"b": 1,  "a": [1.50, 2]}',
         "headers": {"Content-Type": "application/json", "Authorization": TOKEN}, "tenant": "pro", "attempt": 2,
         "request_id": "cap-1"},
        {"ts": 1700000001.25, "method": "POST", "path": "/v1/score", "body": {"amount": 12.5, "note": "é"},
         "headers": {"X-Tenant": "free"}, "tenant": "free", "attempt": 1, "request_id": "cap-2", "score_hint": 0.5},
        {"ts": 1700000002.0, "method": "GET", "path": "/healthz", "headers": {}, "tenant": None},
    ]
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def _requests(path: Path) -> list[CapturedRequest]:
    return [r for r in iter_records(path) if isinstance(r, CapturedRequest)]


def test_jsonl_parquet_jsonl_keeps_bodies_byte_for_byte_and_metadata_as_fields(tmp_path: Path) -> None:
    src = _capture(tmp_path)
    assert main(["traffic", "convert", str(src), "--to", "parquet", "-o", str(tmp_path / "c.parquet")]) == 0
    assert main(["traffic", "convert", str(tmp_path / "c.parquet"), "--to", "jsonl",
                 "-o", str(tmp_path / "back.jsonl")]) == 0
    before, after = _requests(src), _requests(tmp_path / "back.jsonl")
    assert [r.body for r in after] == [r.body for r in before]
    assert after[0].body == b'{"b": 1,  "a": [1.50, 2]}'
    assert [(r.method, r.path, round(r.ts, 6)) for r in after] == [(r.method, r.path, round(r.ts, 6)) for r in before]
    columns = pq.read_schema(tmp_path / "c.parquet").names
    assert {"tenant", "attempt", "request_id", "score_hint"} <= set(columns) and "meta" not in columns
    assert [r.meta.get("tenant") for r in after] == ["pro", "free", None]
    assert [r.meta.get("attempt") for r in after] == [2, 1, None]
    assert [r.meta.get("score_hint") for r in after] == [None, 0.5, None]


def test_secrets_are_masked_unless_kept(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = _capture(tmp_path)
    assert main(["traffic", "convert", str(src), "--to", "jsonl", "-o", "-"]) == 0
    masked = capsys.readouterr().out
    assert TOKEN not in masked and "sk-live" not in masked
    assert json.loads(masked.splitlines()[0])["headers"]["Authorization"] == "[REDACTED]"
    assert main(["traffic", "convert", str(src), "--to", "jsonl", "-o", "-", "--keep-secrets"]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[0])["headers"]["Authorization"] == TOKEN


@pytest.mark.integration
def test_a_closed_pipe_ends_quietly() -> None:
    proc = subprocess.Popen([sys.executable, "-m", "harness", "traffic", "convert", str(SAMPLE), "--to", "jsonl",
                             "-o", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0
    assert json.loads(first)["method"] == "POST"
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def _run_folder(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    con = duckdb.connect(str(run / "results.duckdb"))
    con.execute("create table requests as select * from (values ('r0000001', 'cap-1'), ('r0000002', 'cap-2'),"
                " ('r0000002-1', 'cap-2')) t(request_id, captured_request_id)")
    con.execute("create table scores (request_id varchar, version varchar, score double, source varchar)")
    con.close()
    return run


def _scores(run: Path) -> list[tuple[str, str, float]]:
    con = duckdb.connect(str(run / "results.duckdb"), read_only=True)
    try:
        return con.execute("select request_id, version, score from scores order by 1, 2").fetchall()
    finally:
        con.close()


def test_scores_by_harness_or_capture_request_id(tmp_path: Path) -> None:
    run = _run_folder(tmp_path)
    own = tmp_path / "own.csv"
    own.write_text("request_id,version,score\nr0000001,baseline,0.9\nr0000001,candidate,0.7\n")
    assert import_scores(run, own) == 2
    captured = tmp_path / "captured.csv"
    captured.write_text("captured_request_id,version,score\ncap-2,candidate,0.5\n")
    assert import_scores(run, captured) == 2  # the request was replayed in two loops
    assert _scores(run) == [("r0000001", "baseline", 0.9), ("r0000001", "candidate", 0.7),
                            ("r0000002", "candidate", 0.5), ("r0000002-1", "candidate", 0.5)]


@pytest.mark.parametrize("rows, message", [
    ("r0000001,baseline,0.9\nr0000002,cand,0.5\n", "row 2 (line 3): version 'cand' is not baseline or candidate"),
    ("r0000001,baseline,good\n", "row 1 (line 2): score 'good' is not a number"),
    ("r0000001,baseline,0.5\nr0000002,candidate,nan\n", "row 2 (line 3): score 'nan' is not a number"),
    ("r0000001,baseline,NaN\n", "row 1 (line 2): score 'nan' is not a number"),
    ("r0000001,baseline,1\nr9,candidate,1\nr8,candidate,1\n", "row 2 (line 3): request_id 'r9' is not in this run (2 such rows)"),
])
def test_scores_errors_name_the_row(tmp_path: Path, rows: str, message: str) -> None:
    run = _run_folder(tmp_path)
    bad = tmp_path / "bad.csv"
    bad.write_text("request_id,version,score\n" + rows)
    with pytest.raises(TrafficError) as err:
        import_scores(run, bad)
    assert str(err.value) == f"{bad}: {message}"
    assert _scores(run) == []
