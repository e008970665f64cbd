"""Item 2 of issue 15: what harness cannot attribute to the target is harness_error, never a model's error."""
from __future__ import annotations

import errno
import json
import math
import socket
from pathlib import Path
from typing import Any

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
def test_a_reader_that_trips_is_harness_error_and_the_run_is_incomplete(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from harness.replay import dispatcher
    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    ok = json.dumps({"outputs": [{"name": "score", "datatype": "FP64", "shape": [1], "data": [0.5]}]}).encode()
    odd = json.dumps({"outputs": [{"name": "score", "datatype": "FP64", "shape": [1], "data": [0.7]}]}).encode()
    real = dispatcher.read_output

    def tripping(protocol: str, status: int, body: bytes, *args: Any, **kwargs: Any) -> Any:
        # a reader bug, injected (no answer trips the readers: test_no_answer_trips_a_reader); the replay
        # runs in this process
        if body == odd:
            raise OverflowError("int too large to convert to float")
        return real(protocol, status, body, *args, **kwargs)

    monkeypatch.setattr(dispatcher, "read_output", tripping)
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


BIG = "9" * 400
DEEP = "[" * 5000 + "]" * 5000
ODD_VALUES = [BIG, "-" + BIG, "1e400", "NaN", "-Infinity", DEEP, '"x"', "true", "null", "[]", "{}", '[1, "a", null]',
              "[[1, 2], [3]]", f'{{"a": {BIG}}}', "0.5", f"[{BIG}, {BIG}]", f"[{DEEP}]"]
ANSWER_SHAPES = ['{"outputs": [{"name": "score", "datatype": "INT64", "shape": [1], "data": %s}]}',
                 '{"outputs": [{"name": "label", "datatype": "INT64", "shape": [1], "data": %s}]}',
                 '{"outputs": [{"name": "predict_proba", "datatype": "FP64", "shape": [1, 2], "data": %s}]}',
                 '{"predictions": %s}', '{"predictions": [%s]}', '{"prediction": %s, "confidence": %s}',
                 '{"choices": [{"message": {"content": %s}, "logprobs": %s}], "usage": {"prompt_tokens": %s}}',
                 "%s", '{"model_version": %s}', 'data: {"choices": [{"delta": {"content": %s}}]}\n\ndata: [DONE]\n\n']


def test_no_answer_trips_a_reader() -> None:
    """Valid JSON of any shape or size (a 400-digit integer, 5,000 levels deep) is read or called invalid,
    never raised: a raise would be a harness_error that makes the run incomplete (exit 4)."""
    from harness.protocols import PROTOCOLS, read_output
    from harness.scenario import RowsConfig

    for protocol in PROTOCOLS:
        for shape in ANSWER_SHAPES:
            for value in ODD_VALUES:
                body = (shape % ((value,) * shape.count("%s"))).encode()
                for rows in (None, RowsConfig()):
                    for status in (200, 500):
                        read_output(protocol, status, body, "$.prediction", "$.confidence", rows=rows,
                                    headers={"content-type": "text/event-stream" if body.startswith(b"data:")
                                             else "application/json"})


def test_an_integer_past_the_float_range_reads_as_infinity() -> None:
    from harness.protocols import read_output

    body = ('{"outputs": [{"name": "score", "datatype": "INT64", "shape": [1], "data": [%s]}]}' % BIG).encode()
    assert read_output("kserve_v2", 200, body, "$.prediction", "$.confidence").confidence == math.inf
    body = ('{"prediction": "a", "confidence": -%s}' % BIG).encode()
    assert read_output("json", 200, body, "$.prediction", "$.confidence").confidence == -math.inf


def test_a_4xx_is_an_error_only_where_the_other_version_took_the_request() -> None:
    from harness.error_kinds import failed_sql, pair_failed

    kinds = [None, *ERROR_KINDS]
    con = duckdb.connect()
    con.execute("create table legs (order_idx int, version varchar, error_kind varchar)")
    rows = []
    for i, (a, b) in enumerate((a, b) for a in kinds for b in kinds):
        rows += [(i, "baseline", a), (i, "candidate", b)]
    rows.append((len(rows), "baseline", "http_4xx"))  # a leg with no pair: a single-version run's 4xx
    con.executemany("insert into legs values (?, ?, ?)", rows)
    got = dict(((i, v), f) for i, v, f in con.execute(f"""
        select l.order_idx, l.version, {failed_sql("l", "o")} from legs l
        left join legs o on o.order_idx = l.order_idx and o.version <> l.version""").fetchall())
    for i, (a, b) in enumerate((a, b) for a in kinds for b in kinds):
        assert got[(i, "baseline")] == pair_failed(a, b) and got[(i, "candidate")] == pair_failed(b, a), (a, b)
    assert got[(len(rows) - 1, "baseline")] is False and not pair_failed("http_4xx", None, paired=False)
    assert pair_failed("http_4xx", None) and not pair_failed("http_4xx", "http_4xx")
    assert pair_failed("timeout", "timeout") and not pair_failed("schema", None) and not pair_failed(None, "http_4xx")
    # a redirect: the redirecting version's error where the other answered, nobody's where both redirected
    assert pair_failed("http_3xx", None) and pair_failed("http_3xx", "http_4xx") and not pair_failed("http_3xx", "http_3xx")
    assert not pair_failed("http_3xx", None, paired=False)


@pytest.mark.integration
def test_a_candidate_that_refuses_what_the_baseline_takes_is_blocked(tmp_path: Path) -> None:
    """One request in ten answered 4xx by the candidate and 200 by the baseline, one in ten redirected (307, 308:
    a route moved, a trailing slash added; harness follows no redirect): error_rate fails and says why. The same
    capture against two targets that both refuse or redirect those requests (the capture's own bad requests, a
    route production redirects too): nobody's error."""
    from fault_server import FaultServer

    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    ok = json.dumps({"prediction": "legit", "confidence": 0.25}).encode()
    capture = tmp_path / "c.jsonl"
    special = {0: "/status?code=400", 10: "/status?code=429", 5: "/status?code=307", 15: "/status?code=308"}
    paths = [special.get(i % 20, "/ok") for i in range(400)]
    capture.write_text("".join(json.dumps({"ts": 1_700_000_000 + i * 0.005, "method": "POST", "path": p,
                                           "body": {"x": i}}) + "\n" for i, p in enumerate(paths)))

    def run(baseline: str, candidate: str, name: str) -> Any:
        s = scenario_from_dict({
            "name": name, "traffic": {"path": str(capture), "speed": 1},
            "targets": {"baseline": {"url": baseline}, "candidate": {"url": candidate}},
            "replay": {"allow": ["POST /*"]}, "promotion_gates": {"error_rate": {"maximum_increase": 0.01}}})
        return run_scenario(s, tmp_path / name, echo=lambda m: None)

    with AnswerServer(ok) as baseline, FaultServer() as candidate, FaultServer() as twin:
        refused = run(baseline.url, candidate.url, "refused")
        both = run(twin.url, candidate.url, "both")
    gate = refused.summary["gates"][0]
    assert (gate["name"], gate["status"], refused.exit_code) == ("error_rate", "fail", 1)
    # the 400s, 429s, 307s and 308s, which the baseline answered (observed is the paired change: a rare
    # baseline timeout on a busy machine moves it, not these counts)
    assert "4xx or 3xx answers to requests the other version took: 0 baseline, 80 candidate" in gate["reason"]
    assert refused.summary["versions"]["candidate"]["error_rate"] == pytest.approx(80 / 400)
    assert refused.summary["versions"]["candidate"]["error_kinds"] == {"http_3xx": 40, "http_4xx": 40}
    assert refused.summary["versions"]["baseline"]["error_rate"] == 0
    gate = both.summary["gates"][0]
    assert gate["status"] == "pass" and gate["observed"] == 0 and "4xx" not in gate["reason"]
    assert both.summary["versions"]["candidate"]["error_rate"] == 0
    assert both.summary["versions"]["candidate"]["http_4xx_rate"] == pytest.approx(40 / 400)
    assert both.summary["versions"]["candidate"]["http_3xx_rate"] == pytest.approx(40 / 400)


def test_the_canary_sizing_counts_errors_as_the_gate_does() -> None:
    """schedule.sizing's SQL over the pairs view agrees with pair_failed for every pair of kinds, and for a
    request only one version answered."""
    import itertools

    from harness.error_kinds import pair_failed
    from harness.schedule.sizing import _bad_rate_sql

    con = duckdb.connect()
    kinds = [None, *ERROR_KINDS]
    con.execute("create table pairs (baseline_error_kind varchar, candidate_error_kind varchar, "
                "baseline_intended_at double, candidate_intended_at double)")
    con.executemany("insert into pairs values (?, ?, 1.0, ?)",
                    [(b, c, 1.0) for b, c in itertools.product(kinds, kinds)] + [(b, None, None) for b in kinds])
    got = con.execute(f"""select baseline_error_kind, candidate_error_kind, candidate_intended_at is not null,
                          {_bad_rate_sql('error_rate', 'baseline')}, {_bad_rate_sql('error_rate', 'candidate')}
                          from pairs""").fetchall()
    assert len(got) == len(kinds) ** 2 + len(kinds)
    for b, c, paired, failed_b, failed_c in got:
        assert failed_b == pair_failed(b, c, paired=paired), (b, c, paired)
        if paired:
            assert failed_c == pair_failed(c, b), (b, c)
