"""The transport interface without sockets: the dispatcher driven through MockTransport (what it sends,
what it records of answers and failures), transports chosen by URL scheme, and the wire's request bytes."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from harness.replay.dispatcher import DispatchPlan, Dispatcher, TargetPlan
from harness.replay.http_transport import HttpTransport
from harness.replay.recorder import Recorder
from harness.replay.transport import TRANSPORTS, Limits, MockTransport, open_transport, send_one
from harness.replay.wire import RequestHead, SendResult, origin_form, request_bytes


def _plan(targets: tuple[TargetPlan, ...]) -> DispatchPlan:
    return DispatchPlan(schedule_path=Path("unused.parquet"), targets=targets, speed=1.0, timeout_s=2.0,
                        connect_timeout_s=1.0, max_in_flight=100, max_response_bytes=1_000_000,
                        prediction_path="$.prediction", confidence_path="$.confidence", schema=None,
                        route_schemas={}, max_duration_s=None)


def _rows(n: int) -> list[dict[str, Any]]:
    return [{"order_idx": i, "request_id": f"r{i}", "offset_s": 0.0, "method": "POST", "path": f"/score?i={i}",
             "route": "POST /score", "headers_json": json.dumps([["Content-Type", "application/json"],
                                                                ["Connection", "keep-alive"]]),
             "body": b'{"i": %d}' % i, "batch_size": None} for i in range(n)]


def _answer(status: int, doc: Any) -> SendResult:
    body = json.dumps(doc).encode()
    return SendResult(status, body, "http_5xx" if status >= 500 else None, None, len(body),
                      {"content-type": "application/json"})


def test_the_dispatcher_sends_through_its_transports_and_records_what_they_answer() -> None:
    def baseline(method: str, path: str, head: RequestHead, body: bytes) -> SendResult:
        return _answer(200, {"prediction": "cat", "confidence": 0.9})

    def candidate(method: str, path: str, head: RequestHead, body: bytes) -> SendResult:
        if path.endswith("i=1"):
            raise ConnectionResetError(104, "reset by the mock")
        return _answer(503 if path.endswith("i=2") else 200, {"prediction": "dog", "confidence": 0.4})

    transports = {"baseline": MockTransport(baseline), "candidate": MockTransport(candidate)}
    targets = (TargetPlan("baseline", "mock://b", "json", {}),
               TargetPlan("candidate", "mock://c", "json", {"X-Model": "v2"}))
    tables: list[pa.Table] = []
    recorder = Recorder({"legs": tables.append, "events": lambda t: None, "resources": lambda t: None},
                        use_threadpool=False)
    dispatcher = Dispatcher(_plan(targets), recorder, transports=transports)
    stats = dispatcher.run(0.0, _rows(4), 4)  # start at epoch 0: every send is already due
    recorder.stop()
    legs = pa.concat_tables(tables).to_pylist()
    assert (stats.dispatched, stats.completed_legs, stats.in_flight) == (4, 8, 0)
    by = {(leg["request_id"], leg["version"]): leg for leg in legs}
    assert len(by) == 8
    assert [by[(f"r{i}", "baseline")]["prediction"] for i in range(4)] == ["cat"] * 4
    assert (by[("r0", "candidate")]["status_code"], by[("r0", "candidate")]["prediction"]) == (200, "dog")
    assert (by[("r1", "candidate")]["status_code"], by[("r1", "candidate")]["error_kind"]) == (None, "reset")
    assert "reset by the mock" in by[("r1", "candidate")]["error_detail"]
    assert (by[("r2", "candidate")]["status_code"], by[("r2", "candidate")]["error_kind"]) == (503, "http_5xx")
    assert all(t.closed for t in transports.values())
    # what each transport was asked to send: the captured path and body, hop-by-hop headers dropped, the
    # target's overrides applied
    method, path, head, body = transports["candidate"].sent[3]
    assert (method, path, body) == ("POST", "/score?i=3", b'{"i": 3}')
    assert head.headers == [("Content-Type", "application/json"), ("X-Model", "v2")]
    assert transports["baseline"].sent[3][2].headers == [("Content-Type", "application/json")]


def test_send_one_waits_for_the_answer_of_a_mock() -> None:
    mock = MockTransport(lambda m, p, h, b: _answer(200, {"echo": p}))
    r = send_one(mock, "GET", "/x", [("Accept", "application/json")])
    assert (r.status, json.loads(r.body)) == (200, {"echo": "/x"})


def test_transports_are_chosen_by_the_url_scheme() -> None:
    limits = Limits(1.0, 1.0, 1000)
    for url in ("http://127.0.0.1:9/base/", "https://127.0.0.1:9"):
        t = open_transport(url, limits, {"verify": False})
        try:
            assert isinstance(t, HttpTransport)
        finally:
            t.close()
    with pytest.raises(ValueError, match=r"no transport for grpcx:// .*known: http, https"):
        open_transport("grpcx://127.0.0.1:9", limits)
    assert set(TRANSPORTS) >= {"http", "https"}


def test_request_targets_are_written_in_origin_form() -> None:
    base = "http://model:8080/"
    assert origin_form("/v1/score?x=1", base) == "/v1/score?x=1"
    assert origin_form("score", base) == "/score"  # as geventhttpclient writes a relative target
    assert origin_form("http://model:8080/v1/score", base) == "/v1/score"
    with pytest.raises(ValueError, match="another host"):
        origin_form("http://elsewhere/v1", base)


def test_request_bytes_with_and_without_the_body() -> None:
    head = RequestHead([("Content-Type", "application/json"), ("Expect", "100-continue")])
    assert head.expect and head.error is None
    full = request_bytes("POST", "/s", head, b"{}", "Host: m:81\r\n")
    assert full == (b"POST /s HTTP/1.1\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nHost: m:81\r\n"
                    b"Content-Length: 2\r\n\r\n{}")
    assert request_bytes("POST", "/s", head, b"{}", "Host: m:81\r\n", with_body=False) == full[:-2]
    assert request_bytes("POST", "/s", RequestHead([]), b"", "Host: m\r\n").endswith(b"Content-Length: 0\r\n\r\n")
    bad = RequestHead([("X-Bad", "a\r\nInjected: 1")])
    with pytest.raises(ValueError, match="invalid value for header field"):
        request_bytes("GET", "/", bad, b"", "Host: m\r\n")


def test_the_finisher_lets_the_loop_read_sockets_between_its_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    """Finished legs are read in slices: bytes that arrive while the finisher works are read before it goes on
    (a stream's next token read late by more than a gap would share its arrival time with the one after)."""
    import socket

    import gevent

    from harness.replay import dispatcher as dispatcher_module

    monkeypatch.setattr(dispatcher_module, "_FINISH_SLICE_S", 0.0)  # a slice of one leg
    transports = {"baseline": MockTransport(lambda *a: _answer(200, {"prediction": "cat", "confidence": 0.9}))}
    recorder = Recorder({"legs": lambda t: None, "events": lambda t: None, "resources": lambda t: None},
                        use_threadpool=False)
    a, b = socket.socketpair()
    finished: list[str] = []
    read_after: list[int] = []

    def on_leg(version: str, route: str, latency_ms: float, size: int, error: str | None) -> None:
        finished.append(version)
        if len(finished) == 1:
            a.send(b"token")  # arrives while the finisher still has legs to read

    def readable() -> None:
        b.recv(64)
        read_after.append(len(finished))
        watcher.stop()

    watcher = gevent.get_hub().loop.io(b.fileno(), 1)
    watcher.start(readable)
    try:
        dispatcher = Dispatcher(_plan((TargetPlan("baseline", "mock://b", "json", {}),)), recorder, on_leg=on_leg,
                                transports=transports)
        stats = dispatcher.run(0.0, _rows(8), 8)  # every send due at once: 8 legs queue for the finisher
    finally:
        watcher.close()
        recorder.stop()
        a.close()
        b.close()
    assert stats.completed_legs == 8
    assert read_after == [1]  # read right after the leg during which it arrived, not after all 8


class _LeadMock(MockTransport):
    """A transport that sends at a time it is given (as the gRPC transport does): it keeps the `at` of each
    start, and ends the legs its handler refuses at that time, as the gRPC transport ends a leg it cannot send."""

    lead_s = 0.02

    def __init__(self, handler: Any) -> None:
        super().__init__(handler)
        self.ats: list[float | None] = []

    def start(self, method: str, path: str, head: RequestHead, body: bytes, done: Any, token: Any,
              at: float | None = None) -> None:
        self.ats.append(at)
        late = (lambda tok, result, end: done(tok, result, max(end, at))) if at is not None else done
        super().start(method, path, head, body, late, token)


def test_a_transport_with_a_lead_is_handed_each_leg_with_its_intended_time() -> None:
    import time

    ok = _answer(200, {"prediction": "cat", "confidence": 0.9})
    targets = (TargetPlan("baseline", "mock://b", "json", {}), TargetPlan("candidate", "mock://c", "json", {}))

    def run(transports: dict[str, Any], start: float) -> list[dict[str, Any]]:
        tables: list[pa.Table] = []
        recorder = Recorder({"legs": tables.append, "events": lambda t: None, "resources": lambda t: None},
                            use_threadpool=False)
        Dispatcher(_plan(targets), recorder, transports=transports).run(start, rows, len(rows))
        recorder.stop()
        return pa.concat_tables(tables).to_pylist()

    rows = [dict(r, offset_s=0.01 * i) for i, r in enumerate(_rows(4))]
    start = time.time() + 0.05
    both = {"baseline": _LeadMock(lambda *a: ok), "candidate": _LeadMock(lambda *a: ok)}
    legs = run(both, start)
    assert both["baseline"].ats == both["candidate"].ats == [start + 0.01 * i for i in range(4)]
    # a leg handed over early without a send time of its own is recorded as sent no earlier than its time
    assert all(leg["sent_at"] >= leg["intended_at"] and leg["latency_ms"] >= 0 for leg in legs), legs
    # a pair whose other leg's transport sends at once is handed over at its time, with no `at`
    mixed = {"baseline": _LeadMock(lambda *a: ok), "candidate": MockTransport(lambda *a: ok)}
    run(mixed, time.time() + 0.05)
    assert mixed["baseline"].ats == [None] * 4
