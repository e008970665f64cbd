"""Real Locust replays against a real fault-injecting server: open-loop timing, faithful requests,
no hidden retries, error kinds, the in-flight bound."""
from __future__ import annotations

import json
import os
import socket
import sys
import threading
from pathlib import Path

import pyarrow as pa
import pytest

from fault_server import FaultServer
from replay_helpers import replay, scenario_dict, write_capture

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def records(n: int, rate: float, path: str = "/ok", method: str = "POST", **extra: object) -> list[dict]:
    return [{"ts": T0 + i / rate, "method": method, "path": path, "headers": {"Content-Type": "application/json"},
             "body": {"i": i}, **extra} for i in range(n)]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_stall_shows_in_latency_from_the_intended_time(tmp_path: Path) -> None:
    """Open loop: while the target is stalled the schedule keeps sending; the stall is in the latencies."""
    with FaultServer() as srv:
        cap = write_capture(tmp_path / "c.jsonl", records(600, rate=200))

        def stall() -> None:
            import time
            # Starts once the replay is under way (not at a fixed time from now: a loaded machine can take
            # longer than that to start the replay, and the stall would fall before the first request).
            deadline = time.monotonic() + 60
            while len(srv.received) < 400 and time.monotonic() < deadline:
                time.sleep(0.005)
            srv.stall.set()
            time.sleep(1.0)
            srv.stall.clear()

        threading.Thread(target=stall, daemon=True).start()
        con, outcome = replay(tmp_path, scenario_dict(cap, srv.url, srv.url, timeout_s=5))
        n, p99, mx, sent_during_stall = con.execute("""
            select count(*), quantile_cont(latency_ms, 0.99), max(latency_ms),
                   count(*) filter (where service_ms > 300) from legs""").fetchone()
        assert n == 1200  # every request was sent: nothing omitted while the target stalled
        assert mx >= 800  # the full stall is visible, measured from the intended send time
        assert p99 >= 500
        assert sent_during_stall >= 100  # requests kept leaving during the stall
        assert outcome.stats.dispatched == 600


def test_requests_are_sent_as_captured_without_client_habits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_TOKEN", "test-token-123")
    with FaultServer() as srv:
        cap = write_capture(tmp_path / "c.jsonl", [
            {"ts": T0, "method": "POST", "path": "/echo?a=1&b=two", "headers": {
                "Content-Type": "application/json", "X-Tenant": "pro", "Authorization": "Bearer prod-secret",
                "Connection": "keep-alive", "Host": "prod.example", "Cookie": "session=prod"}, "body": {"x": [1, 2]}},
            {"ts": T0 + 0.05, "method": "GET", "path": "/echo", "headers": {"Accept": "*/*"}},
        ])
        from harness.replay.dispatcher import expand_env
        sc = scenario_dict(cap, srv.url, None, headers={"Authorization": expand_env("Bearer ${TEST_TOKEN}")})
        con, _ = replay(tmp_path, sc)
        got = [json.loads(r[0]) for r in con.execute("select output_json from legs order by order_idx").fetchall()]
        first = dict(got[0]["headers"])
        assert got[0]["method"] == "POST" and got[0]["target"] == "/echo?a=1&b=two"
        assert json.loads(got[0]["body"]) == {"x": [1, 2]}
        assert first["X-Tenant"] == "pro" and first["Content-Type"] == "application/json"
        # the captured secret is never sent; the test credential from the environment is
        assert srv.received[0]["headers"].count(("Authorization", "Bearer test-token-123")) == 1
        assert "Cookie" not in first and first["Host"].startswith("127.0.0.1")
        lower = {k.lower() for k in first}
        assert "user-agent" not in lower and "accept-encoding" not in lower
        second = {k.lower() for k, _ in srv.received[1]["headers"]}
        assert "cookie" not in second and "user-agent" not in second
        # the stored excerpt never carries the test credential
        stored = " ".join(r[0] for r in con.execute("select output_json from legs").fetchall())
        assert "test-token-123" not in stored and "prod-secret" not in stored


def test_no_hidden_retries_on_reset(tmp_path: Path) -> None:
    with FaultServer() as srv:
        cap = write_capture(tmp_path / "c.jsonl", records(5, rate=20, path="/reset", method="GET"))
        con, _ = replay(tmp_path, scenario_dict(cap, srv.url, None))
        kinds = [r[0] for r in con.execute("select error_kind from legs").fetchall()]
        assert kinds == ["reset"] * 5
        assert srv.hits["/reset"] == 5  # one attempt per leg, idempotent GET included


@pytest.mark.parametrize("path, kind", [
    ("/hang?s=3", "timeout"), ("/status?code=503", "http_5xx"), ("/status?code=404", "http_4xx"),
    ("/invalid_json", "invalid_json"), ("/big?mb=3", "too_large"), ("/trickle?ms=40", "timeout"),
])
def test_error_kinds(tmp_path: Path, path: str, kind: str) -> None:
    with FaultServer() as srv:
        cap = write_capture(tmp_path / "c.jsonl", records(3, rate=10, path=path))
        con, _ = replay(tmp_path, scenario_dict(cap, srv.url, None, timeout_s=0.8, max_response_bytes=1_000_000))
        assert [r[0] for r in con.execute("select error_kind from legs").fetchall()] == [kind] * 3


def test_connection_refused(tmp_path: Path) -> None:
    cap = write_capture(tmp_path / "c.jsonl", records(3, rate=10))
    con, _ = replay(tmp_path, scenario_dict(cap, f"http://127.0.0.1:{closed_port()}", None))
    assert [r[0] for r in con.execute("select error_kind from legs").fetchall()] == ["connect"] * 3


def test_in_flight_bound_skips_and_counts(tmp_path: Path) -> None:
    with FaultServer() as srv:
        cap = write_capture(tmp_path / "c.jsonl", records(20, rate=100, path="/hang?s=1"))
        con, outcome = replay(tmp_path, scenario_dict(cap, srv.url, None, timeout_s=0.5, max_in_flight=3))
        legs = con.execute("select count(*) from legs").fetchone()[0]
        skipped = con.execute("select count(*) from events where kind = 'skipped_in_flight_limit'").fetchone()[0]
        assert legs == 3 and skipped == 17 and outcome.stats.skipped_in_flight == 17


def test_timestamps_out_of_order_are_replayed_in_time_order(tmp_path: Path) -> None:
    with FaultServer() as srv:
        recs = records(6, rate=10, method="GET")
        recs[2], recs[3] = recs[3], recs[2]  # completion-order logging
        cap = write_capture(tmp_path / "c.jsonl", recs)
        con, _ = replay(tmp_path, scenario_dict(cap, srv.url, None))
        lines = [r[0] for r in con.execute(
            "select r.source_line from legs l join requests r using (request_id) order by l.sent_at").fetchall()]
        assert lines == [1, 2, 4, 3, 5, 6]


def test_header_values_past_latin1_are_sent_as_utf8_and_unsendable_ones_are_bad_records(tmp_path: Path) -> None:
    """A captured header value outside Latin-1 (the client's UTF-8 decoded as text) is sent as its UTF-8
    bytes, as the client sent it; a name or value no request can carry (a space in the name, a control
    character) makes a bad record with its line, never a failed leg."""
    with FaultServer() as srv:
        cap = write_capture(tmp_path / "c.jsonl", [
            {"ts": T0, "method": "POST", "path": "/echo", "headers": {"X-Tenant": "日本", "X-Name": "Zoë"}, "body": {}},
            {"ts": T0 + 0.01, "method": "POST", "path": "/echo", "headers": {"Bad Name": "x"}, "body": {}},
            {"ts": T0 + 0.02, "method": "POST", "path": "/echo", "headers": {"X-Ctl": "a\u0001b"}, "body": {}},
            {"ts": T0 + 0.03, "method": "POST", "path": "/echo", "headers": {"X-Tenant": "pro"}, "body": {}},
        ])
        con, outcome = replay(tmp_path, scenario_dict(cap, srv.url, None))
        assert con.execute("select count(*), count(error_kind) from legs").fetchone() == (2, 0)
        sent = dict(srv.received[0]["headers"])  # as the server read them: bytes as Latin-1 text
        assert sent["X-Tenant"].encode("latin-1").decode("utf-8") == "日本"
        assert sent["X-Name"] == "Zoë"  # Latin-1 itself: one byte, as it was captured
        bad = dict(con.execute("select line, reason from bad_records").fetchall())
        assert set(bad) == {2, 3}, bad
        assert bad[2] == "invalid header name 'Bad Name'", bad
        assert bad[3] == "header X-Ctl has a control character in its value (U+0001 at character 2)", bad


def test_recorder_keeps_every_leg_in_order_through_a_failing_sink() -> None:
    """Legs are sealed into Arrow batches between flushes; a sink that fails keeps them, in order, for the
    next flush, and dict and tuple legs land alike."""
    from harness.replay.leg import LEG_SCHEMA
    from harness.replay.recorder import Recorder

    got: list = []
    fail = [True]

    def sink(table) -> None:  # type: ignore[no-untyped-def]
        if fail[0]:
            raise OSError("disk full")
        got.extend(table.to_pylist())

    rec = Recorder({"legs": sink, "events": lambda t: None, "resources": lambda t: None}, use_threadpool=False)
    names = LEG_SCHEMA.names
    for i in range(5):
        if i % 2:
            rec.add_leg({"request_id": f"r{i}", "version": "baseline", "order_idx": i, "send_lag_ms": 0.5})
        else:
            rec.add_leg_values(tuple({"request_id": f"r{i}", "version": "candidate", "order_idx": i}.get(n) for n in names))
        if i == 2:
            rec._seal_legs()  # noqa: SLF001 - as the flusher does between flushes
    rec.flush()
    assert rec.sink_failures == 1 and rec.legs_recorded == 0 and not got
    rec.add_leg({"request_id": "r5", "version": "baseline", "order_idx": 5})
    fail[0] = False
    rec.flush()
    assert [r["request_id"] for r in got] == [f"r{i}" for i in range(6)] and rec.legs_recorded == 6
    assert got[1]["send_lag_ms"] == 0.5 and got[0]["version"] == "candidate" and got[0]["status_code"] is None


def test_legs_sealed_as_one_struct_equal_one_array_per_column() -> None:
    """The seal converts a step's tuples as one struct array: the batch must be what converting each column
    on its own gives, for every type of LEG_SCHEMA (lists, booleans, nulls, large and non-ASCII values)."""
    import random

    from harness.replay.leg import LEG_SCHEMA
    from harness.replay.recorder import Recorder

    rnd = random.Random(7)
    samples = {pa.string(): ["", "é→✓", "x" * 5000], pa.int64(): [0, -1, 2**62], pa.int32(): [200, 504, -1],
               pa.float64(): [0.0, 1e-9, float("inf"), 1.5e9], pa.bool_(): [True, False],
               pa.list_(pa.string()): [[], ["a", None], ["b"] * 50], pa.list_(pa.float64()): [[], [0.5, None], [1.0]]}
    legs = [tuple(None if rnd.random() < 0.3 else rnd.choice(samples[f.type]) for f in LEG_SCHEMA) for _ in range(300)]
    got: list = []
    rec = Recorder({"legs": got.append, "events": lambda t: None, "resources": lambda t: None}, use_threadpool=False)
    for leg in legs:
        rec.add_leg_values(leg)
    rec.flush()
    expected = pa.Table.from_arrays([pa.array(col, type=f.type) for col, f in zip(zip(*legs), LEG_SCHEMA)],
                                    schema=LEG_SCHEMA)
    assert len(got) == 1 and got[0].schema.equals(LEG_SCHEMA) and got[0].equals(expected)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="a thread's own nice value is Linux's")
def test_recorder_sinks_run_on_one_lowered_thread_off_the_loop_and_keep_order() -> None:
    from harness.replay.leg import LEG_SCHEMA
    from harness.replay.recorder import SINK_NICE, Recorder

    loop_nice = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    seen: list[tuple[int, int, list[str]]] = []

    def sink(table) -> None:  # type: ignore[no-untyped-def]
        tid = threading.get_native_id()
        seen.append((tid, os.getpriority(os.PRIO_PROCESS, tid), table.column("request_id").to_pylist()))

    rec = Recorder({"legs": sink, "events": lambda t: None, "resources": lambda t: None})
    for batch in range(3):
        for i in range(2):
            rec.add_leg_values(tuple({"request_id": f"r{batch}-{i}", "version": "baseline", "order_idx": i}.get(n)
                                     for n in LEG_SCHEMA.names))
        rec.flush()
    rec.stop()
    assert [ids for _, _, ids in seen] == [[f"r{b}-0", f"r{b}-1"] for b in range(3)]
    assert len({tid for tid, _, _ in seen}) == 1 and seen[0][0] != threading.get_native_id()
    assert {nice for _, nice, _ in seen} == {min(19, loop_nice + SINK_NICE)}
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == loop_nice  # the loop's own is untouched
    assert rec.legs_recorded == 6


def test_a_kept_alive_connection_the_target_closed_is_resent_once(tmp_path: Path) -> None:
    """The target drops each kept-alive connection's second request unanswered (its keep-alive timeout crossing
    the request): each such leg is sent once more on a new connection and succeeds, saying so in error_detail.
    A request that fails on a new connection is not resent: a real failure stays one."""
    with FaultServer() as srv:
        cap = write_capture(tmp_path / "c.jsonl", records(200, rate=100, path="/idle_close")
                            + [dict(r, ts=r["ts"] + 3.0) for r in records(20, rate=100, path="/drop")])
        con, _ = replay(tmp_path, scenario_dict(cap, srv.url, srv.url, timeout_s=5))
        rows = con.execute("""
            select r.path, l.error_kind, coalesce(l.error_detail like 'resent once on a new connection%', false), count(*)
            from legs l join requests r using (order_idx) group by all order by all""").fetchall()
        by = {(path, kind, resent): n for path, kind, resent, n in rows}
        # every /idle_close leg is answered: the first on each new connection at once, every later one (its
        # kept-alive connection dropped it) on a new connection
        assert by[("/idle_close", None, False)] + by[("/idle_close", None, True)] == 400
        assert by[("/idle_close", None, True)] >= 300 and srv.hits["/idle_close"] == 400 + by[("/idle_close", None, True)]
        # /drop fails on every connection: resent at most once (when it found a kept-alive one), then recorded
        drop_resent = by.get(("/drop", "reset", True), 0)
        assert by.get(("/drop", "reset", False), 0) + drop_resent == 40 and srv.hits["/drop"] == 40 + drop_resent
        assert {k for k in by if k[0] == "/drop"} <= {("/drop", "reset", False), ("/drop", "reset", True)}


def test_a_candidate_that_degrades_as_it_runs_is_worst_in_the_last_phase(tmp_path: Path) -> None:
    """The candidate answers the last quarter of the run 30 ms late (FaultServer /slow; the baseline's URL has a
    base path, so its requests land on paths it answers at once): the run_phase segment names the stretch,
    and the gate fails there and in no earlier one."""
    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    recs = records(1000, rate=200, path="/ok")
    for r in recs[750:]:
        r["path"] = "/slow?ms=30"
    cap = write_capture(tmp_path / "c.jsonl", recs)
    with FaultServer() as baseline, FaultServer() as candidate:
        s = scenario_from_dict({**scenario_dict(cap, baseline.url + "/fast", candidate.url, timeout_s=5),
                                "segments": {"phase": {"run_phase": 4}},
                                "promotion_gates": {"latency_p95_ms": {"maximum_regression_percent": 50}}})
        result = run_scenario(s, tmp_path / "r", echo=lambda m: None)
    by_scope = {g.get("segment"): g["status"] for g in result.summary["gates"]}
    assert by_scope["phase=4 of 4"] == "fail"
    assert all(by_scope[f"phase={i} of 4"] != "fail" for i in (1, 2, 3)), by_scope
    assert result.summary["worst_segments"][0]["segment"] == "phase=4 of 4"


def test_the_first_leg_is_balanced_on_every_short_period_of_the_schedule() -> None:
    """A pair's send order (dispatcher.first_leg) is not its parity: a capture whose records alternate
    between tenants (or cycle through k of them) must send each version first for about half of every
    tenant's requests, or the first leg's head start on a fast target becomes a tenant's latency change."""
    import numpy as np

    from harness.replay.dispatcher import first_leg

    firsts = np.array([first_leg(i) for i in range(60_000)])
    for period in range(1, 17):
        for residue in range(period):
            share = firsts[residue::period][:500].mean()
            assert abs(share - 0.5) <= 0.02, (period, residue, share)
    assert first_leg(np.int64(2**40 + 3)) in (0, 1)


def test_head_and_options_answers_are_judged_by_their_status_alone(tmp_path: Path) -> None:
    """A capture's HEAD and OPTIONS requests (health checks, preflights; replayed as side-effect free) get no
    model output: a HEAD's answer has no body, an OPTIONS' is 204. Read as outputs they were invalid JSON on
    both legs, and the error-rate gate failed on a candidate that answers exactly as the baseline does."""
    from answer_server import AnswerServer
    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    capture = tmp_path / "c.jsonl"
    write_capture(capture, [{"ts": T0 + i * 0.01, "method": m, "path": "/score",
                             "headers": {"Content-Type": "application/json"}, **({"body": {"i": i}} if m == "POST" else {})}
                            for i, m in enumerate(["POST", "HEAD", "OPTIONS"] * 20)])
    answer = json.dumps({"prediction": "legit", "confidence": 0.5}).encode()
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["prediction"]}))
    with AnswerServer(answer) as baseline, AnswerServer(answer) as candidate:
        s = scenario_from_dict({"name": "t", "traffic": {"path": str(capture)},
                                "targets": {"baseline": {"url": baseline.url}, "candidate": {"url": candidate.url}},
                                "replay": {"allow": ["POST /*"]}, "output": {"schema": str(schema)},
                                "promotion_gates": {"error_rate": {"maximum": 0.01}}})
        result = run_scenario(s, tmp_path / "r", echo=lambda m: None)
    import duckdb

    with duckdb.connect(str(result.run_dir / "results.duckdb"), read_only=True) as con:
        rows = con.execute("select r.method, l.status_code, l.error_kind, l.schema_valid, count(*) from legs l "
                           "join requests r using (request_id) group by all order by all").fetchall()
    assert rows == [("HEAD", 200, None, None, 40), ("OPTIONS", 204, None, None, 40), ("POST", 200, None, True, 40)]
    gate = [g for g in result.summary["gates"] if g["name"] == "error_rate" and g["segment"] is None]
    assert gate[0]["status"] != "fail", gate
