"""`harness capture` on its HTTP/1.1 path (harness/capture/http11.py) against a real misbehaving
upstream: answers stream through as they arrive, pipelined requests keep their order on one
connection, HEAD and keep-alive work, unparseable HTTP is refused and counted, an upstream that stops
answering is a 504 and one that cuts its answer cuts the client's."""
from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, BinaryIO, Iterator

import pytest

from fault_server import OK_BODY, FaultServer

pytestmark = pytest.mark.integration


@pytest.fixture
def upstream() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


def _capture(upstream: str, out: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "harness", "capture", "--listen", f"127.0.0.1:{port}",
                             "--upstream", upstream, "--out", str(out), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().startswith("listening on")
    return proc, port


def _stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    return out


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def _read_answer(f: BinaryIO) -> tuple[int, dict[str, str], bytes]:
    status = int(f.readline().split()[1])
    headers: dict[str, str] = {}
    while (line := f.readline()) not in (b"\r\n", b""):
        k, v = line.decode("latin-1").split(":", 1)
        headers[k.strip().lower()] = v.strip()
    return status, headers, f.read(int(headers.get("content-length", "0")))


def test_pipelined_requests_head_and_keep_alive_on_one_connection(tmp_path: Path, upstream: FaultServer) -> None:
    proc, port = _capture(upstream.url, tmp_path / "c.jsonl")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /echo?n=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nfirst"
                      b"HEAD /ok HTTP/1.1\r\nHost: x\r\n\r\n"
                      b"POST /echo?n=3 HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nthird!\r\n0\r\n\r\n")
            f = s.makefile("rb")
            first = _read_answer(f)
            status, head_headers = f.readline(), {}
            while (line := f.readline()) != b"\r\n":
                k, v = line.decode("latin-1").split(":", 1)
                head_headers[k.strip().lower()] = v.strip()
            third = _read_answer(f)
            s.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")  # the connection is still usable
            fourth = _read_answer(f)
        out = _stop(proc)
    finally:
        proc.kill()
    assert first[0] == 200 and json.loads(first[2])["target"] == "/echo?n=1" and json.loads(first[2])["body"] == "first"
    seen = [tuple(h) for h in json.loads(first[2])["headers"]]  # what the upstream got
    assert ("X-Forwarded-For", "127.0.0.1") in seen and ("Host", upstream.url.split("//")[1]) in seen
    assert status.startswith(b"HTTP/1.1 200") and int(head_headers["content-length"]) > 0
    assert json.loads(third[2])["target"] == "/echo?n=3" and json.loads(third[2])["body"] == "third!"
    assert fourth[0] == 200
    assert [r["path"] for r in _records(tmp_path / "c.jsonl")] == ["/echo?n=1", "/ok", "/echo?n=3", "/ok"]
    assert "requests: 4;" in out and "unparseable HTTP refused: 0" in out


def test_unparseable_http_is_refused_with_400_and_counted(tmp_path: Path, upstream: FaultServer) -> None:
    proc, port = _capture(upstream.url, tmp_path / "c.jsonl")
    try:
        for garbage in (b"NOT HTTP AT ALL\r\n\r\n", b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                s.sendall(garbage)
                answer = s.makefile("rb").read()
            assert answer.startswith(b"HTTP/1.1 400 "), answer
        out = _stop(proc)
    finally:
        proc.kill()
    assert "unparseable HTTP refused: 2" in out
    assert upstream.hits == {}


def test_the_upstream_gets_the_clients_headers_in_order_less_the_hop_by_hop_ones(tmp_path: Path,
                                                                                upstream: FaultServer) -> None:
    proc, port = _capture(upstream.url, tmp_path / "c.jsonl")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /echo?q=1 HTTP/1.1\r\nHost: x\r\nX-A: 1\r\nConnection: keep-alive\r\n"
                      b"Keep-Alive: timeout=5\r\nX-Forwarded-For: 10.0.0.1\r\nExpect: 100-continue\r\nTE: trailers\r\n"
                      b"Authorization: Bearer s3cret\r\nX-B: 2\r\nContent-Length: 4\r\n\r\n")
            f = s.makefile("rb")
            assert f.readline() == b"HTTP/1.1 100 Continue\r\n" and f.readline() == b"\r\n"
            s.sendall(b"body")
            status, headers, body = _read_answer(f)
        _stop(proc)
    finally:
        proc.kill()
    assert status == 200 and "connection" not in headers and int(headers["content-length"]) == len(body)
    seen = [tuple(h) for h in json.loads(body)["headers"]]
    assert seen == [("Host", upstream.url.split("//")[1]), ("X-A", "1"), ("Authorization", "Bearer s3cret"),
                    ("X-B", "2"), ("X-Forwarded-For", "10.0.0.1, 127.0.0.1"), ("Content-Length", "4")]
    (rec,) = _records(tmp_path / "c.jsonl")
    assert rec["headers"]["Authorization"] == "[REDACTED]" and rec["headers"]["X-A"] == "1"
    assert rec["body"] == "body" and rec["production_content_type"] == "application/json"


def test_an_answer_streams_through_as_it_arrives(tmp_path: Path, upstream: FaultServer) -> None:
    proc, port = _capture(upstream.url, tmp_path / "c.jsonl")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /trickle?ms=20 HTTP/1.1\r\nHost: x\r\n\r\n")
            data, reads, first_body_at = b"", 0, None
            while not data.endswith(b"}"):
                chunk = s.recv(65536)
                assert chunk, data
                reads += 1
                data += chunk
                if first_body_at is None and b"\r\n\r\n" in data and not data.endswith(b"\r\n\r\n"):
                    first_body_at = time.monotonic()
            done_at = time.monotonic()
        _stop(proc)
    finally:
        proc.kill()
    body = data.split(b"\r\n\r\n", 1)[1]
    assert json.loads(body)["prediction"] == "legit"
    # one byte every 20 ms upstream: the client saw the body in many pieces, the first long before the last
    assert reads > len(body) // 4, reads
    assert first_body_at is not None and done_at - first_body_at > 0.5
    (rec,) = _records(tmp_path / "c.jsonl")
    assert rec["production_status"] == 200 and rec["production_bytes"] == len(body)


def test_a_silent_upstream_is_a_504_and_a_cut_answer_cuts_the_clients(tmp_path: Path, upstream: FaultServer) -> None:
    proc, port = _capture(upstream.url, tmp_path / "c.jsonl", "--timeout", "1")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /hang?s=5 HTTP/1.1\r\nHost: x\r\n\r\n")
            status, _, text = _read_answer(s.makefile("rb"))
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /reset HTTP/1.1\r\nHost: x\r\n\r\n")
            cut = s.makefile("rb").read()  # ends when the proxy closes the connection
        out = _stop(proc)
    finally:
        proc.kill()
    assert (status, text) == (504, b"upstream timeout\n")
    head, body = cut.split(b"\r\n\r\n", 1)
    assert b"Content-Length: 100" in head and len(body) < 100  # the client can tell the answer was cut
    hang, reset = _records(tmp_path / "c.jsonl")
    assert (hang["production_status"], hang["production_error"]) == (504, "timeout")
    assert (reset["production_status"], reset["production_error"]) == (200, "reset")
    assert "upstream errors: reset 1, timeout 1" in out


def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(tmp_path: Path, upstream: FaultServer) -> None:
    proc, port = _capture(upstream.url, tmp_path / "c.jsonl", "--keepalive-timeout", "1")
    try:
        # busy: a request every 0.1 s for 2.5 s (the timeout is 1 s) keeps its connection
        with socket.create_connection(("127.0.0.1", port), timeout=10) as busy:
            f = busy.makefile("rb")
            statuses = []
            for _ in range(25):
                busy.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
                statuses.append(_read_answer(f)[0])
                time.sleep(0.1)
            # an answer pending for longer than the timeout is waited for, not cut
            busy.sendall(b"GET /slow?ms=2500 HTTP/1.1\r\nHost: x\r\n\r\n")
            slow = _read_answer(f)[0]
        # idle: answered, then silent; the proxy closes it (an end of stream, no bytes)
        with socket.create_connection(("127.0.0.1", port), timeout=20) as idle:
            idle.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
            f = idle.makefile("rb")
            assert _read_answer(f)[0] == 200
            started = time.monotonic()
            rest = f.read()  # blocks until the proxy closes the connection
            waited = time.monotonic() - started
        # a connection that never sent anything is closed the same way
        with socket.create_connection(("127.0.0.1", port), timeout=20) as silent:
            assert silent.recv(1) == b""
        out = _stop(proc)
    finally:
        proc.kill()
    assert statuses == [200] * 25 and slow == 200
    assert rest == b"" and 0.5 <= waited < 15, waited
    assert "requests: 27;" in out


def test_an_answer_the_upstream_cut_is_left_out_of_the_record(tmp_path: Path, upstream: FaultServer) -> None:
    """A JSON answer cut mid-way cannot be parsed to mask its credential-named keys: like one cut at the
    capture limit, it is not written."""
    proc, port = _capture(upstream.url, tmp_path / "c.jsonl")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /reset_token HTTP/1.1\r\nHost: x\r\n\r\n")
            cut = s.makefile("rb").read()
        _stop(proc)
    finally:
        proc.kill()
    assert b"tok-issued-0123456789" in cut  # the client got what the upstream sent
    (rec,) = _records(tmp_path / "c.jsonl")
    assert (rec["production_status"], rec["production_error"]) == (200, "reset")
    assert "production_body" not in rec and rec["production_body_truncated"] is True
    assert "tok-issued" not in (tmp_path / "c.jsonl").read_text()


def _big_answer_read_after(port: int, pause_s: float) -> int:
    """GET /big?mb=8 through the proxy with a small receive buffer, reading nothing for `pause_s` after its
    first bytes (the proxy's buffers fill and it pauses reading the upstream), then the rest: the body bytes
    got before the end or a cut."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.connect(("127.0.0.1", port))
        s.settimeout(20)
        s.sendall(b"GET /big?mb=8 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = s.recv(65536)
        time.sleep(pause_s)
        try:
            while chunk := s.recv(1 << 20):
                data += chunk
        except ConnectionResetError:
            pass
    return len(data.split(b"\r\n\r\n", 1)[1])


def test_a_client_that_reads_slowly_is_not_an_upstream_timeout(tmp_path: Path, upstream: FaultServer) -> None:
    """While the client reads slower than the upstream sends, the proxy stops reading the upstream: that wait
    is the client's, and --timeout (the upstream's silence) must not cut the answer. A client that reads none
    of it for --keepalive-timeout is cut."""
    proc, port = _capture(upstream.url, tmp_path / "c.jsonl", "--timeout", "1", "--keepalive-timeout", "3")
    size = 8 * 1024 * 1024
    try:
        got = [_big_answer_read_after(port, pause_s) for pause_s in (2.0, 5.0)]
        _stop(proc)
    finally:
        proc.kill()
    assert got[0] == size  # paused for twice --timeout, read whole
    assert got[1] < size  # read nothing for more than --keepalive-timeout: cut
    slow, _ = _records(tmp_path / "c.jsonl")
    assert slow["production_status"] == 200 and "production_error" not in slow
    assert slow["production_bytes"] == size


def test_without_a_client_limit_a_client_that_reads_nothing_is_cut_by_the_read_timeout(tmp_path: Path,
                                                                                     upstream: FaultServer) -> None:
    """--keepalive-timeout 0 (no limit on clients): a client that stops reading would hold its upstream
    request for ever; --timeout cuts it, as before paused reads were the client's to answer for."""
    proc, port = _capture(upstream.url, tmp_path / "c.jsonl", "--timeout", "1", "--keepalive-timeout", "0")
    try:
        # reads nothing for 4 s: the proxy pauses reading the upstream, and the read timeout runs
        got = _big_answer_read_after(port, 4.0)
        _stop(proc)
    finally:
        proc.kill()
    assert got < 8 * 1024 * 1024  # cut
    (rec,) = _records(tmp_path / "c.jsonl")
    assert rec["production_error"] == "timeout"


def test_an_http10_keep_alive_client_is_told_its_connection_persists(tmp_path: Path, upstream: FaultServer) -> None:
    """HTTP/1.0 keep-alive (ApacheBench -k, older clients) holds only where the answer says
    `Connection: keep-alive`: without it the client waits for a close that never comes."""
    proc, port = _capture(upstream.url, tmp_path / "c.jsonl")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            f = s.makefile("rb")
            s.sendall(b"GET /ok HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            first = _read_answer(f)
            s.sendall(b"GET /drop HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")  # the proxy's own 502
            failed = _read_answer(f)
            s.sendall(b"GET /ok HTTP/1.0\r\n\r\n")
            second = _read_answer(f)
            assert f.read() == b""  # closed after the last, as HTTP/1.0 without keep-alive
        _stop(proc)
    finally:
        proc.kill()
    assert first[0] == 200 and first[1].get("connection") == "keep-alive"
    assert failed[0] == 502 and failed[1].get("connection") == "keep-alive"
    assert second[0] == 200 and second[1].get("connection") == "close"


def test_expect_100_continue_is_answered_by_the_proxy_and_not_forwarded(tmp_path: Path, upstream: FaultServer) -> None:
    """Both serving paths (the lean one, and aiohttp's with --sink) read the body whole and answer 100-continue
    themselves: the upstream gets no Expect. Forwarded, aiohttp's client waited for an upstream's 100 for ever."""
    for extra in ((), ("--sink",)):
        proc, port = _capture(upstream.url, tmp_path / f"c{len(extra)}.jsonl", "--timeout", "5", *extra)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                f = s.makefile("rb")
                s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n")
                assert f.readline().startswith(b"HTTP/1.1 100") and f.readline() == b"\r\n"
                s.sendall(b"{}")
                status, _, body = _read_answer(f)
            _stop(proc)
        finally:
            proc.kill()
        assert status == 200, extra
        assert "expect" not in {k.lower() for k, _ in json.loads(body)["headers"]}, extra


def test_a_json_body_after_leading_whitespace_is_masked(tmp_path: Path, upstream: FaultServer) -> None:
    """JSON allows whitespace before the value: such a body is still JSON, its credentials masked, in the
    request and where the answer repeats them."""
    proc, port = _capture(upstream.url, tmp_path / "c.jsonl")
    body = b'\n  {"api_key": "sk-ws-0123456789", "x": 1}'
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body))
            status, _, _ = _read_answer(s.makefile("rb"))
        _stop(proc)
    finally:
        proc.kill()
    assert status == 200
    assert "sk-ws-0123456789" not in (tmp_path / "c.jsonl").read_text()
    (rec,) = _records(tmp_path / "c.jsonl")
    assert rec["body"] == {"api_key": "[REDACTED]", "x": 1}


def test_a_client_that_leaves_mid_answer_cuts_the_upstreams_work(tmp_path: Path, upstream: FaultServer) -> None:
    """As nginx does: the upstream's request is cut when its client leaves (a model would otherwise go on
    generating for nobody), and the record says the client left (production_error client_closed), not the
    complete answer nobody got."""
    proc, port = _capture(upstream.url, tmp_path / "c.jsonl")
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(b"GET /trickle?ms=30 HTTP/1.1\r\nHost: x\r\n\r\n")
            data = b""
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 3:
                chunk = s.recv(65536)
                assert chunk, data
                data += chunk
        deadline = time.monotonic() + 10
        while not upstream.trickled and time.monotonic() < deadline:
            time.sleep(0.02)
        out = _stop(proc)
    finally:
        proc.kill()
    body_len = len(json.dumps(OK_BODY))
    assert upstream.trickled and upstream.trickled[0] < body_len // 2, upstream.trickled  # cut, not read to the end
    (rec,) = _records(tmp_path / "c.jsonl")
    assert rec["production_error"] == "client_closed" and rec["production_status"] == 200
    assert "production_body" not in rec and rec["production_body_truncated"] is True
    assert "clients that left mid-answer: 1" in out
