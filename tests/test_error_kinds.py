"""Item 2 of issue 15: what harness cannot attribute to the target is harness_error, never a model's error."""
from __future__ import annotations

import errno
import json
import socket
from pathlib import Path

import duckdb
import pytest
from geventhttpclient.response import HTTPConnectionClosed, HTTPParseError

from harness.error_kinds import CONSUMER_ERROR_KINDS, CONSUMER_ERROR_KINDS_SQL, ERROR_KINDS, HARNESS_ERROR, exception_kind

from answer_server import AnswerServer


@pytest.mark.parametrize("exc, kind", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "connect"),
    (OSError(errno.EHOSTUNREACH, "no route"), "connect"),
    (ConnectionResetError(errno.ECONNRESET, "reset"), "reset"),
    (BrokenPipeError(errno.EPIPE, "pipe"), "reset"),
    (HTTPParseError("not HTTP"), "reset"),
    (HTTPConnectionClosed("closed"), "reset"),
    (socket.timeout("slow"), "timeout"),
    (ValueError("invalid request URI"), HARNESS_ERROR),
    (KeyError("outputs"), HARNESS_ERROR),
    (OverflowError("int too large to convert to float"), HARNESS_ERROR),
])
def test_exceptions_map_by_type(exc: BaseException, kind: str) -> None:
    assert exception_kind(exc) == kind


def test_harness_error_is_not_a_consumer_error() -> None:
    assert HARNESS_ERROR not in CONSUMER_ERROR_KINDS and "client" not in CONSUMER_ERROR_KINDS


def test_every_kind_is_in_the_one_list() -> None:
    assert CONSUMER_ERROR_KINDS < set(ERROR_KINDS) and HARNESS_ERROR in ERROR_KINDS
    assert len(set(ERROR_KINDS)) == len(ERROR_KINDS)
    assert CONSUMER_ERROR_KINDS_SQL.count("'") == 2 * len(CONSUMER_ERROR_KINDS) and "'http_5xx'" in CONSUMER_ERROR_KINDS_SQL


@pytest.mark.integration
def test_a_reader_that_trips_is_harness_error_and_the_run_is_incomplete(tmp_path: Path) -> None:
    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    ok = json.dumps({"outputs": [{"name": "score", "datatype": "FP64", "shape": [1], "data": [0.5]}]}).encode()
    # a 400-digit integer: valid JSON that the KServe reader cannot turn into a float (OverflowError)
    odd = b'{"outputs": [{"name": "score", "datatype": "INT64", "shape": [1], "data": [' + b"9" * 400 + b"]}]}"
    capture = tmp_path / "c.jsonl"
    capture.write_text("".join(json.dumps({"ts": 1_700_000_000 + i * 0.01, "method": "POST", "path": "/infer",
                                           "body": {"x": i}}) + "\n" for i in range(60)))
    with AnswerServer(ok) as baseline, AnswerServer(odd) as candidate:
        s = scenario_from_dict({
            "name": "t", "traffic": {"path": str(capture), "speed": 1},
            "targets": {"baseline": {"url": baseline.url, "protocol": "kserve_v2"},
                        "candidate": {"url": candidate.url, "protocol": "kserve_v2"}},
            "replay": {"allow": ["POST /*"]},
            "promotion_gates": {"error_rate": {"maximum": 0.01}}})
        result = run_scenario(s, tmp_path / "r", echo=lambda m: None)
    con = duckdb.connect(str(result.run_dir / "results.duckdb"), read_only=True)
    kinds = dict(con.execute("select version, list_distinct(list(coalesce(error_kind, '-'))) from legs group by 1").fetchall())
    details = con.execute("select error_detail from legs where version = 'candidate'").fetchall()
    status, reason = con.execute("select status, status_reason from runs").fetchone()
    assert kinds == {"baseline": ["-"], "candidate": [HARNESS_ERROR]}
    assert all("OverflowError" in d for (d,) in details)
    assert status == "incomplete" and "harness_error" in reason
    assert result.exit_code == 4
    assert result.summary["counts"]["harness_errors"] == 60
    error_gate = result.summary["gates"][0]
    assert error_gate["name"] == "error_rate" and error_gate["status"] != "fail" and error_gate["n"] == 0
