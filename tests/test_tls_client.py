"""The https path of the replay's HTTP transport (the same callback-driven engine as plain HTTP, TLS over
memory BIOs) against a scripted TLS server on 127.0.0.1: the HTTP details a real client gets right (chunked,
split, interim 1xx, 204, close-delimited, HEAD with a Content-Length, Expect: 100-continue, an answer before
the request is all out), a compressed answer returned as received, verification on by default, mutual TLS,
a TLS failure as the `tls` error kind, and a handshake that hangs as a timeout that stalls nothing."""
from __future__ import annotations

import gzip
import time
import ssl
from pathlib import Path
from typing import Any

import gevent
import gevent.server
import pytest

from harness.content_encoding import decode_answer
from harness.replay.http_transport import HttpTransport
from harness.replay.transport import Limits, send_one
from harness.replay.wire import RequestHead
from stacks import make_pki
from test_evented import OK, ScriptedServer, _ok

pytestmark = pytest.mark.integration


class TLSScriptedServer(ScriptedServer):
    def __init__(self, script: dict[str, list[Any]], cert: Path, key: Path) -> None:
        super().__init__(script)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert), str(key))
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle, ssl_context=ctx)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def _send(pki: dict[str, Path], script: dict[str, list[Any]], path: str, method: str = "GET",
          tls: dict[str, Any] | None = None, body: bytes = b"", headers: list[tuple[str, str]] | None = None) -> Any:
    with TLSScriptedServer(script, pki["server"], pki["server_key"]) as srv:
        client = HttpTransport(f"https://127.0.0.1:{srv.port}", Limits(3, 1, 1_000_000),
                               {"ca_file": str(pki["ca"])} if tls is None else tls)
        try:
            return send_one(client, method, path, RequestHead([("Accept", "application/json")] + (headers or [])),
                            body)
        finally:
            client.close()


@pytest.mark.parametrize("path, answer, status, body", [
    ("/chunked", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"],
     200, b"hello world"),
    ("/split", [b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\n", 0.05, OK], 200, OK),
    ("/interim", [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", _ok()], 200, OK),
    ("/interims", [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", 0.02, _ok()],
     200, OK),
    ("/no-content", [b"HTTP/1.1 204 No Content\r\n\r\n"], 204, b""),
    ("/close-delimited", [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + OK, "close"], 200, OK),
])
def test_http_details_over_tls(pki: dict[str, Path], path: str, answer: list[Any], status: int, body: bytes) -> None:
    r = _send(pki, {path: answer}, path)
    assert (r.status, r.body, r.error_kind, r.response_bytes) == (status, body, None, len(body))


def test_head_with_a_content_length_over_tls(pki: dict[str, Path]) -> None:
    r = _send(pki, {"/h": [b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"]}, "/h", method="HEAD")
    assert (r.status, r.body, r.error_kind) == (200, b"", None)


def test_a_compressed_answer_over_tls_is_decoded_after_receipt(pki: dict[str, Path]) -> None:
    wire = gzip.compress(OK * 100)
    answer = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n%s" % (len(wire), wire)
    r = _send(pki, {"/z": [answer]}, "/z")
    assert (r.body, r.response_bytes, r.decoded_bytes) == (wire, len(wire), None)  # as received
    d = decode_answer(r, cap=1_000_000)
    assert (d.body, d.response_bytes, d.decoded_bytes) == (OK * 100, len(wire), len(OK) * 100)


def test_verification_is_on_by_default_and_its_failure_is_the_tls_kind(pki: dict[str, Path]) -> None:
    script = {"/ok": [_ok()]}
    untrusted = _send(pki, script, "/ok", tls={})  # the system's CAs do not know the test's CA
    assert untrusted.error_kind == "tls" and "CERTIFICATE_VERIFY_FAILED" in untrusted.error_detail
    wrong_name = _send(pki, script, "/ok", tls={"ca_file": str(pki["ca"]), "server_name": "model.internal"})
    assert wrong_name.error_kind == "tls" and "model.internal" in wrong_name.error_detail
    unverified = _send(pki, script, "/ok", tls={"verify": False})
    assert (unverified.status, unverified.error_kind) == (200, None)


def test_a_handshake_that_hangs_mid_run_is_a_timeout_and_the_loop_goes_on(pki: dict[str, Path]) -> None:
    import socket

    import gevent

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # the kernel accepts; nobody answers the ClientHello
    ticks = [0]

    def tick() -> None:
        while True:
            ticks[0] += 1
            gevent.sleep(0.01)

    ticker = gevent.spawn(tick)
    client = HttpTransport(f"https://127.0.0.1:{listener.getsockname()[1]}", Limits(0.5, 0.5, 1000),
                           {"ca_file": str(pki["ca"])})
    try:
        r = send_one(client, "GET", "/", [])
    finally:
        client.close()
        ticker.kill()
        listener.close()
    assert (r.error_kind, r.error_detail) == ("timeout", "no TLS handshake within 0.5 s")
    assert ticks[0] >= 5  # other work ran on the loop while the handshake hung (a stall would leave 1)


def test_keep_alive_is_reused_over_tls(pki: dict[str, Path]) -> None:
    with TLSScriptedServer({"/ok": [_ok()]}, pki["server"], pki["server_key"]) as srv:
        client = HttpTransport(f"https://127.0.0.1:{srv.port}", Limits(3, 1, 1000), {"ca_file": str(pki["ca"])})
        try:
            results = [send_one(client, "GET", "/ok", []) for _ in range(5)]
        finally:
            client.close()
    assert [(r.status, r.body) for r in results] == [(200, OK)] * 5
    assert srv.connections == 1  # one handshake, not one per leg (TLS 1.3 session tickets do not spoil the pool)


def test_expect_100_continue_and_an_early_answer_over_tls(pki: dict[str, Path]) -> None:
    expect = [("Expect", "100-continue")]
    r = _send(pki, {"/c": [_ok()]}, "/c", method="POST", body=b'{"x": 1}', headers=expect)
    assert (r.status, r.body, r.error_kind) == (200, OK, None)
    refused = _send(pki, {"/refuse": []}, "/refuse", method="POST", body=b'{"x": 1}', headers=expect)
    assert (refused.status, refused.error_kind) == (417, "http_4xx")
    early = _send(pki, {}, "/early", method="POST", body=b"x" * (16 << 20))
    assert (early.status, early.error_kind) == (413, "http_4xx")


def test_mutual_tls_presents_the_client_certificate(pki: dict[str, Path]) -> None:
    class MutualServer(TLSScriptedServer):
        def __init__(self, script: dict[str, list[Any]]) -> None:
            super().__init__(script, pki["server"], pki["server_key"])
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca"]))
            ctx.load_cert_chain(str(pki["server"]), str(pki["server_key"]))
            ctx.verify_mode = ssl.CERT_REQUIRED
            self.server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle, ssl_context=ctx)

    tls = {"ca_file": str(pki["ca"]), "client_cert": str(pki["client"]), "client_key": str(pki["client_key"])}
    with MutualServer({"/ok": [_ok()]}) as srv:
        with_cert = HttpTransport(f"https://127.0.0.1:{srv.port}", Limits(3, 1, 1000), tls)
        without = HttpTransport(f"https://127.0.0.1:{srv.port}", Limits(3, 1, 1000), {"ca_file": str(pki["ca"])})
        try:
            good = send_one(with_cert, "GET", "/ok", [])
            refused = send_one(without, "GET", "/ok", [])
        finally:
            with_cert.close()
            without.close()
    assert (good.status, good.body) == (200, OK)
    assert (refused.status, refused.error_kind) == (None, "tls"), refused


def test_a_burst_of_legs_opens_a_bounded_number_of_tls_connections_at_once(pki: dict[str, Path]) -> None:
    # 40 legs at once on an empty pool: at most 8 connections in their handshake at a time, the other legs
    # wait, and all are answered (one handshake per leg at once would feed on itself under load).
    results: list[Any] = []
    opening: list[int] = []
    queued: list[int] = []
    with TLSScriptedServer({"/ok": [0.02, _ok()]}, pki["server"], pki["server_key"]) as srv:
        client = HttpTransport(f"https://127.0.0.1:{srv.port}", Limits(5, 2, 1000), {"ca_file": str(pki["ca"])})

        def watch() -> None:
            while True:
                opening.append(client._opening)  # noqa: SLF001 - the bound under test
                queued.append(len(client._waiting))  # noqa: SLF001
                gevent.sleep(0.0005)

        watcher = gevent.spawn(watch)
        try:
            for _ in range(40):
                client.start("GET", "/ok", RequestHead([]), b"", lambda _t, r, _d: results.append(r), None)
            with gevent.Timeout(8):
                while len(results) < 40:
                    gevent.sleep(0.01)
        finally:
            watcher.kill()
            client.close()
    assert [(r.status, r.body) for r in results] == [(200, OK)] * 40
    assert max(opening) == 8 and max(queued) == 32


class _CountingTLSServer(TLSScriptedServer):
    """Records, per connection, when it was accepted and whether its handshake resumed a session."""

    def __init__(self, script: dict[str, list[Any]], pki: dict[str, Path]) -> None:
        super().__init__(script, pki["server"], pki["server_key"])
        self.accepted_at: list[float] = []
        self.resumed: list[bool] = []

    def _handle(self, sock: Any, addr: Any) -> None:
        self.accepted_at.append(time.monotonic())
        self.resumed.append(sock.session_reused)
        super()._handle(sock, addr)


def _wait(cond: Any, what: str) -> None:
    with gevent.Timeout(5, AssertionError(f"not within 5 s: {what}")):
        while not cond():
            gevent.sleep(0.005)


def test_warmed_connections_send_nothing_and_carry_the_first_legs(pki: dict[str, Path]) -> None:
    results: list[Any] = []
    with _CountingTLSServer({"/ok": [0.02, _ok()]}, pki) as srv:
        client = HttpTransport(f"https://127.0.0.1:{srv.port}", Limits(3, 1, 1000), {"ca_file": str(pki["ca"])})
        try:
            client.warm(3)
            _wait(lambda: len(client._idle) == 3, "3 warmed connections in the pool")  # noqa: SLF001
            gevent.sleep(0.05)
            assert (srv.connections, srv.requests) == (3, [])  # handshakes only: nothing was sent on them
            for _ in range(3):  # three at once: each on a warmed connection, none opened
                client.start("GET", "/ok", RequestHead([]), b"", lambda _t, r, _d: results.append(r), None)
            _wait(lambda: len(results) == 3, "3 answers")
        finally:
            client.close()
    assert [(r.status, r.body) for r in results] == [(200, OK)] * 3
    assert srv.connections == 3


def test_the_first_leg_does_not_wait_for_warming_not_yet_started(pki: dict[str, Path]) -> None:
    results: list[Any] = []
    with _CountingTLSServer({"/ok": [_ok()]}, pki) as srv:
        client = HttpTransport(f"https://127.0.0.1:{srv.port}", Limits(3, 1, 1000), {"ca_file": str(pki["ca"])})
        try:
            client.warm(30)  # 8 handshake at once; the other 22 wait for a turn
            assert (client._opening, len(client._waiting)) == (8, 22)  # noqa: SLF001
            client.start("GET", "/ok", RequestHead([]), b"", lambda _t, r, _d: results.append(r), None)
            assert [ex.warm for ex in client._waiting] == [False]  # noqa: SLF001 - the leg, first in line
            _wait(lambda: len(results) == 1, "the answer")
            _wait(lambda: client._opening == 0, "the handshakes under way to end")  # noqa: SLF001
        finally:
            client.close()
    assert (results[0].status, results[0].body) == (200, OK)
    assert srv.connections == 8  # the warming still queued was dropped


def test_new_connections_resume_the_tls_session(pki: dict[str, Path]) -> None:
    with _CountingTLSServer({"/ok": [_ok()]}, pki) as srv:
        client = HttpTransport(f"https://127.0.0.1:{srv.port}", Limits(3, 1, 1000), {"ca_file": str(pki["ca"])})
        try:
            first = send_one(client, "GET", "/ok", [])
            client.warm(2)
            _wait(lambda: len(client._idle) == 3, "3 connections in the pool")  # noqa: SLF001
            again = send_one(client, "GET", "/ok", [])
        finally:
            client.close()
    assert [(r.status, r.body) for r in (first, again)] == [(200, OK)] * 2
    assert srv.resumed == [False, True, True]  # one full handshake; the connections after it resume its session


def test_the_dispatcher_warms_the_pool_before_the_first_send(pki: dict[str, Path]) -> None:
    import json

    import pyarrow as pa

    from harness.replay.dispatcher import DispatchPlan, Dispatcher, TargetPlan
    from harness.replay.recorder import Recorder

    rows = [{"order_idx": i, "request_id": f"r{i}", "offset_s": i * 0.001, "method": "POST", "path": "/ok",
             "route": "POST /ok", "headers_json": json.dumps([["Content-Type", "application/json"]]),
             "body": b"{}", "batch_size": None} for i in range(40)]  # 21 of them in the first 20 ms
    tables: list[pa.Table] = []
    with _CountingTLSServer({"/ok": [_ok()]}, pki) as srv:
        tls = {"ca_file": str(pki["ca"])}
        target = TargetPlan("baseline", f"https://127.0.0.1:{srv.port}", "json", {}, tls)
        plan = DispatchPlan(schedule_path=Path("unused.parquet"), targets=(target,), speed=1.0, timeout_s=3.0,
                            connect_timeout_s=1.0, max_in_flight=100, max_response_bytes=1_000_000,
                            prediction_path="$.prediction", confidence_path="$.confidence", schema=None,
                            route_schemas={}, max_duration_s=None)
        recorder = Recorder({"legs": tables.append, "events": lambda t: None, "resources": lambda t: None},
                            use_threadpool=False)
        stats = Dispatcher(plan, recorder).run(time.time() + 0.5, rows, len(rows))
        recorder.stop()
        first_request = min(at for _, at in srv.bodies)
    legs = pa.concat_tables(tables).to_pylist()
    assert (stats.completed_legs, sorted({leg["status_code"] for leg in legs})) == (40, [200])
    assert srv.connections == 21 and max(srv.accepted_at) < first_request
