"""The callback-driven HTTP transport against a raw TCP server on 127.0.0.1 that writes scripted bytes: the
answers the quick parse declines (chunked, close-delimited, interim 1xx, HEAD, 204, split across writes),
Expect: 100-continue, an answer before the request is all out, connection reuse and closing, and deadlines."""
from __future__ import annotations

import time
from typing import Any

import gevent
import gevent.server
import pytest

from harness.replay.http_transport import HttpTransport
from harness.replay.transport import Limits
from harness.replay.wire import RequestHead, quick_answer

pytestmark = pytest.mark.integration

OK = b'{"prediction":"ok"}'


def _ok(extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n%s\r\n%s" % (len(OK), extra, OK)


class ScriptedServer:
    """Reads one request head (and its Content-Length body), answers with SCRIPT[path]: a list of byte strings
    written with a short pause between them, then "close" to close the connection, or keeps it open."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = script
        self.connections = 0
        self.requests: list[bytes] = []
        self.bodies: list[tuple[bytes, float]] = []  # each request body, and when it was all in
        self.heads_at: list[float] = []  # when each Expect: 100-continue head was in
        self.server = gevent.server.StreamServer(("127.0.0.1", 0), self._handle)

    def __enter__(self) -> "ScriptedServer":
        self.server.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.stop(timeout=1)

    @property
    def port(self) -> int:
        return self.server.server_port

    def _handle(self, sock: Any, _addr: Any) -> None:
        self.connections += 1
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            head, _, buf = buf.partition(b"\r\n\r\n")
            if head.split(b" ")[1].startswith(b"/early"):  # answers before reading the body, then closes
                self.requests.append(head)
                sock.sendall(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                gevent.sleep(0.05)
                sock.close()
                return
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            path = head.split(b" ")[1].decode()
            if b"\r\nexpect: 100-continue" in head.lower():
                self.heads_at.append(time.monotonic())
                if path.startswith("/refuse"):  # the final answer instead of 100 Continue; the body is not wanted
                    self.requests.append(head)
                    sock.sendall(b"HTTP/1.1 417 Expectation Failed\r\nContent-Length: 0\r\n\r\n")
                    continue
                if not path.startswith("/silent"):  # /silent: reads the body without saying 100 Continue
                    sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            while len(buf) < length:
                data = sock.recv(65536)
                if not data:
                    return
                buf += data
            self.bodies.append((buf[:length], time.monotonic()))
            buf = buf[length:]
            self.requests.append(head)
            for step in self.script[path]:
                if step == "close":
                    sock.close()
                    return
                if isinstance(step, float):
                    gevent.sleep(step)
                    continue
                sock.sendall(step)


def _exchange(client: HttpTransport, path: str, method: str = "GET", body: bytes = b"",
              headers: list[tuple[str, str]] | None = None) -> Any:
    results: list[Any] = []
    client.start(method, path, RequestHead([("Accept", "application/json")] + (headers or [])), body,
                 lambda token, result, done: results.append(result), None)
    deadline = time.monotonic() + 5
    while not results and time.monotonic() < deadline:
        gevent.sleep(0.005)
    assert results, "no answer within 5 s"
    return results[0]


def _client(port: int, timeout_s: float = 2.0, max_bytes: int = 1_000_000) -> HttpTransport:
    c = HttpTransport(f"http://127.0.0.1:{port}", Limits(timeout_s, 1.0, max_bytes))
    c.prepare()
    return c


@pytest.mark.parametrize("path, answer, status, body", [
    ("/chunked", [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"],
     200, b"hello world"),
    ("/split", [b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\n", 0.05, OK], 200, OK),
    ("/interim", [b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", _ok()], 200, OK),
    ("/interims", [b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n", 0.02, _ok()],
     200, OK),
    ("/http10", [b"HTTP/1.0 200 OK\r\n\r\n" + OK, "close"], 200, OK),
    ("/no-content", [b"HTTP/1.1 204 No Content\r\n\r\n"], 204, b""),
    ("/close-delimited", [b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + OK, "close"], 200, OK),
])
def test_answers_the_quick_parse_declines_are_read_whole(path: str, answer: list[Any], status: int,
                                                         body: bytes) -> None:
    with ScriptedServer({path: answer}) as srv:
        client = _client(srv.port)
        try:
            r = _exchange(client, path)
        finally:
            client.close()
    assert (r.status, r.body, r.error_kind, r.response_bytes) == (status, body, None, len(body))


def test_head_answer_has_no_body_even_with_a_content_length() -> None:
    with ScriptedServer({"/h": [b"HTTP/1.1 200 OK\r\nContent-Length: 19\r\n\r\n"], "/g": [_ok()]}) as srv:
        client = _client(srv.port)
        try:
            r = _exchange(client, "/h", method="HEAD")
            second = _exchange(client, "/g")
        finally:
            client.close()
    assert (r.status, r.body, r.error_kind) == (200, b"", None)
    assert (second.status, second.body, second.error_kind) == (200, OK, None)
    assert srv.connections == 1  # the HEAD answer ended with its headers: the connection went on


def test_keep_alive_is_reused_and_connection_close_is_not() -> None:
    with ScriptedServer({"/keep": [_ok()], "/close": [_ok(b"Connection: close\r\n"), "close"]}) as srv:
        client = _client(srv.port)
        try:
            for _ in range(3):
                assert _exchange(client, "/keep").body == OK
            assert srv.connections == 1
            for _ in range(2):
                assert _exchange(client, "/close").body == OK
            assert _exchange(client, "/keep").body == OK
        finally:
            client.close()
    assert srv.connections == 3  # the first, a new one after each Connection: close


def test_a_keep_alive_connection_the_target_closed_is_not_reused() -> None:
    # The target closes after answering without saying so: the next leg must not be sent into the dead socket.
    with ScriptedServer({"/bye": [_ok(), 0.02, "close"]}) as srv:
        client = _client(srv.port)
        try:
            results = []
            for _ in range(3):
                results.append(_exchange(client, "/bye"))
                gevent.sleep(0.1)
        finally:
            client.close()
    assert [(r.status, r.error_kind) for r in results] == [(200, None)] * 3
    assert srv.connections == 3


def test_deadline_and_cap_and_reset() -> None:
    script = {"/hang": [1.5, _ok()], "/big": [b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b" " * 5000],
              "/cut": [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"pre", "close"]}
    with ScriptedServer(script) as srv:
        client = _client(srv.port, timeout_s=0.3, max_bytes=1000)
        try:
            hang = _exchange(client, "/hang")
            big = _exchange(client, "/big")
            cut = _exchange(client, "/cut")
        finally:
            client.close()
    assert (hang.status, hang.error_kind, hang.error_detail) == (None, "timeout", "no complete answer within 0.3 s")
    assert (big.status, big.error_kind, big.body) == (200, "too_large", b"")
    assert (cut.status, cut.error_kind) == (None, "reset")


def test_quick_parse_takes_only_plain_whole_answers() -> None:
    assert quick_answer(_ok(), "GET") == (200, {"content-type": "application/json", "content-length": "19"}, OK, True)
    assert quick_answer(_ok(b"Connection: close\r\n"), "GET")[3] is False
    declined = [
        _ok()[:-1],  # body not all there yet
        _ok() + b"x",  # more than the Content-Length
        _ok(b"Content-Length: 19\r\n"),  # a second Content-Length
        _ok(b"Transfer-Encoding: chunked\r\n"),
        _ok().replace(b"HTTP/1.1", b"HTTP/1.0"),
        _ok().replace(b"application/json", b"text/event-stream"),
        _ok().replace(b"Content-Type", b"Content Type"),  # not a token
        _ok(b"X-Name: caf\xc3\xa9\r\n"),  # not ASCII
    ]
    assert [quick_answer(d, "GET") for d in declined] == [None] * len(declined)
    assert quick_answer(_ok(), "HEAD") is None


@pytest.mark.parametrize("reused", [True, False], ids=["keep-alive", "new connection"])
def test_an_answer_while_a_large_request_is_still_going_out_ends_the_leg_with_that_answer(reused: bool) -> None:
    # The target answers 413 after the head and closes: the leg is that answer, at once (not a reset, not a
    # timeout after the whole deadline), and the connection, its request never finished, is not reused.
    with ScriptedServer({"/keep": [_ok()]}) as srv:
        client = _client(srv.port, timeout_s=20.0)
        try:
            if reused:
                assert _exchange(client, "/keep").body == OK
            t0 = time.monotonic()
            r = _exchange(client, "/early", method="POST", body=b"x" * (64 << 20))
            took = time.monotonic() - t0
            after = _exchange(client, "/keep")
        finally:
            client.close()
    assert (r.status, r.error_kind, r.body) == (413, "http_4xx", b"")
    assert took < 10.0
    assert after.body == OK
    assert srv.connections == 2  # /early's connection closed, /keep on a new one


EXPECT = [("Expect", "100-continue"), ("Content-Type", "application/json")]


def test_expect_100_continue_sends_the_body_after_the_interim_answer() -> None:
    with ScriptedServer({"/c": [_ok()]}) as srv:
        client = _client(srv.port)
        try:
            r = _exchange(client, "/c", method="POST", body=b'{"x": 1}', headers=EXPECT)
            again = _exchange(client, "/c", method="POST", body=b'{"x": 2}', headers=EXPECT)
        finally:
            client.close()
    assert [(x.status, x.body, x.error_kind) for x in (r, again)] == [(200, OK, None)] * 2
    assert [b for b, _ in srv.bodies] == [b'{"x": 1}', b'{"x": 2}']
    assert b"content-length: 8" in srv.requests[0].lower()
    assert srv.connections == 1  # the 100 Continue and the final answer both read: the connection went on


def test_expect_100_continue_without_an_interim_answer_sends_the_body_after_a_second() -> None:
    with ScriptedServer({"/silent": [_ok()]}) as srv:
        client = _client(srv.port, timeout_s=5.0)
        try:
            r = _exchange(client, "/silent", method="PUT", body=b'{"x": 1}', headers=EXPECT)
        finally:
            client.close()
    assert (r.status, r.body, r.error_kind) == (200, OK, None)
    (body, body_at), = srv.bodies
    assert body == b'{"x": 1}'
    assert 0.9 <= body_at - srv.heads_at[0] < 3.0  # waited for a 100 Continue, as curl waits, then sent it


def test_expect_100_continue_refused_by_a_final_answer_never_sends_the_body() -> None:
    with ScriptedServer({"/refuse": [], "/keep": [_ok()]}) as srv:
        client = _client(srv.port, timeout_s=5.0)
        try:
            r = _exchange(client, "/refuse", method="POST", body=b'{"x": 1}', headers=EXPECT)
            gevent.sleep(1.2)  # past the wait for 100 Continue: nothing may be sent late
            after = _exchange(client, "/keep")
        finally:
            client.close()
    assert (r.status, r.error_kind) == (417, "http_4xx")
    assert srv.bodies == [(b"", srv.bodies[0][1])]  # only /keep's (empty) body arrived
    assert after.body == OK and srv.connections == 2  # the refused request's connection was not reused


_STREAM_SERVER = r"""
import socket, sys, time
srv = socket.socket()
srv.bind(("127.0.0.1", 0))
srv.listen()
print(srv.getsockname()[1], flush=True)
conn, _ = srv.accept()
buf = b""
while b"\r\n\r\n" not in buf:
    buf += conn.recv(65536)
read_at = time.perf_counter()
conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
             b"a\r\ndata: {}\n\n\r\n")
time.sleep(0.05)
conn.sendall(b"9\r\ndata: 1\n\n\r\n")
token_at = time.perf_counter()
time.sleep(0.4)
conn.sendall(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")
print((token_at - read_at) * 1000.0, flush=True)
conn.recv(1)
"""


def test_stream_arrivals_are_the_kernel_receive_times_not_when_a_busy_loop_read_them() -> None:
    import subprocess
    import sys

    import gevent.monkey

    block = gevent.monkey.get_original("time", "sleep")  # the test session is monkey-patched (conftest)
    server = subprocess.Popen([sys.executable, "-c", _STREAM_SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client = _client(port)
        results: list[Any] = []
        client.start("GET", "/stream", RequestHead([]), b"", lambda token, result, done: results.append(result), None)
        gevent.sleep(0.01)
        block(0.2)  # the loop is busy while the first token arrives (50 ms after the request was read)
        while not results:
            gevent.sleep(0.005)
        served_ms = float(server.stdout.readline())
        client.close()
    finally:
        server.kill()
        server.wait()
    result = results[0]
    assert result.error_kind is None, result.error_detail
    token_bytes = len(b"data: {}\n\n") + len(b"data: 1\n\n")
    first_token_ms = next(at for size, at in result.arrivals if size >= token_bytes)
    # read when the loop was free again, about 210 ms after the send; received about 50 ms after it
    assert abs(first_token_ms - served_ms) < 10.0, (first_token_ms, served_ms, result.arrivals)


def test_connected_legs_leave_the_connect_sweep_and_the_answer_deadline_still_holds() -> None:
    """With many slow answers open, the connect-timeout sweep walks only legs still connecting (it walked every
    open leg every 10 ms); a connected leg still ends at the answer deadline, a slow one answered in time not."""
    with ScriptedServer({"/slow": [0.6, _ok()], "/hang": [3.0, _ok()]}) as srv:
        client = _client(srv.port, timeout_s=1.5)
        results: list[Any] = []
        try:
            for i in range(40):
                client.start("GET", "/hang" if i % 4 == 0 else "/slow", RequestHead([]), b"",
                             lambda token, result, done: results.append((token, result)), i)
            deadline = time.monotonic() + 0.4
            while time.monotonic() < deadline and client._connecting:
                gevent.sleep(0.02)
            assert not client._connecting and len(client._inflight) == 40 - len(results)
            deadline = time.monotonic() + 5
            while len(results) < 40 and time.monotonic() < deadline:
                gevent.sleep(0.02)
        finally:
            client.close()
    kinds = {token: (r.status, r.error_kind, r.error_detail) for token, r in results}
    assert len(kinds) == 40
    assert all(kinds[i] == (None, "timeout", "no complete answer within 1.5 s") for i in range(0, 40, 4))
    assert all(kinds[i] == (200, None, None) for i in range(40) if i % 4)
