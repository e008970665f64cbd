"""Compressed answers through real replays, with and without `Expect: 100-continue` (the body then waits
for the interim answer): a bomb is too_large at bounded memory and the run goes on, a lying
Content-Encoding is bad_encoding, chunked and streamed (SSE) compressed answers are decoded as they arrive."""
from __future__ import annotations

import gzip
import json
import resource
import socketserver
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import brotli
import pytest

from replay_helpers import replay, scenario_dict, write_capture

pytestmark = pytest.mark.integration

ANSWER = json.dumps({"prediction": "legit", "confidence": 0.25, "notes": "x" * 3000}).encode()
_MEMBER = gzip.compress(b"\0" * (1 << 20), 9)
BOMB = _MEMBER * 2048  # 2 GiB once inflated, about 2 MB on the wire


def _chunked(pieces: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces if p) + b"0\r\n\r\n"


class EncodingServer:
    """Answers by path: /gzip /br /deflate /zstd-free paths, /bomb, /lying (says gzip, is JSON), /chunked-gzip,
    /sse-gzip (an event stream, gzip, flushed event by event)."""

    def __init__(self) -> None:
        outer = self

        class Handler(socketserver.StreamRequestHandler):
            disable_nagle_algorithm = True

            def handle(self) -> None:
                while True:
                    line = self.rfile.readline(65537)
                    if not line:
                        return
                    path = line.split(b" ")[1].decode()
                    length, expect = 0, False
                    while True:
                        h = self.rfile.readline(65537)
                        if h in (b"\r\n", b""):
                            break
                        k, _, v = h.decode("latin-1").partition(":")
                        if k.lower() == "content-length":
                            length = int(v)
                        expect |= k.lower() == "expect"
                    if expect:
                        self.wfile.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                        self.wfile.flush()
                    self.rfile.read(length)
                    outer.answer(self.wfile, path.split("?")[0])

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def answer(w: Any, path: str) -> None:
        def send(body: bytes, encoding: str | None, ctype: str = "application/json") -> None:
            enc = f"Content-Encoding: {encoding}\r\n" if encoding else ""
            w.write(f"HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\n{enc}Content-Length: {len(body)}\r\n\r\n".encode()
                    + body)

        if path == "/gzip":
            send(gzip.compress(ANSWER), "gzip")
        elif path == "/br":
            send(brotli.compress(ANSWER), "br")
        elif path == "/deflate":
            send(zlib.compress(ANSWER), "deflate")
        elif path == "/bomb":
            send(BOMB, "gzip")
        elif path == "/lying":
            send(ANSWER, "gzip")
        elif path == "/chunked-gzip":
            body = gzip.compress(ANSWER)
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Encoding: gzip\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n" + _chunked([body[i:i + 100] for i in range(0, len(body), 100)]))
        elif path == "/sse-gzip":
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nContent-Encoding: gzip\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n")
            z = zlib.compressobj(wbits=31)
            for i in range(5):
                event = json.dumps({"choices": [{"delta": {"content": f"tok{i} "}, "index": 0}]})
                w.write(_chunked([z.compress(f"data: {event}\n\n".encode()) + z.flush(zlib.Z_SYNC_FLUSH)])[:-5])
                w.flush()
                time.sleep(0.02)
            w.write(_chunked([z.compress(b"data: [DONE]\n\n") + z.flush()]))
        else:
            send(b"{}", None)
        w.flush()


@pytest.fixture()
def server() -> Any:
    s = EncodingServer()
    yield s
    s.close()


def _records(paths: list[str], headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return [{"ts": 1_700_000_000 + i * 0.05, "method": "POST", "path": p, "body": {"i": i},
             "headers": {"Accept-Encoding": "gzip, deflate, br", **(headers or {})}} for i, p in enumerate(paths)]


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100"])
def test_codings_bombs_and_lies_through_a_replay(tmp_path: Path, server: EncodingServer, expect: bool) -> None:
    paths = ["/gzip", "/br", "/deflate", "/chunked-gzip", "/bomb", "/lying", "/gzip"]
    cap = write_capture(tmp_path / "c.jsonl", _records(paths, {"Expect": "100-continue"} if expect else None))
    before_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    con, _ = replay(tmp_path, scenario_dict(cap, server.url, None, timeout_s=10, max_response_bytes=8 << 20))
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before_kb) / 1024
    rows = con.execute("select path, error_kind, error_detail, response_bytes, decoded_bytes, content_encoding, "
                       "prediction from legs join requests using (order_idx) order by order_idx").fetchall()
    by_path = {r[0]: r[1:] for r in rows}
    assert len(rows) == len(paths)  # the run went on after the bomb
    for p in ("/gzip", "/br", "/deflate", "/chunked-gzip"):
        kind, _, wire, decoded, encoding, prediction = by_path[p]
        assert (kind, decoded, prediction) == (None, len(ANSWER), "legit"), p
        assert wire < 200 and encoding in ("gzip", "br", "deflate"), p
    kind, detail, wire, decoded, _, _ = by_path["/bomb"]
    assert kind == "too_large" and "decoded answer (gzip) over the cap" in detail
    assert wire == len(BOMB) and (8 << 20) < decoded < (9 << 20)
    assert grown_mb < 300  # 2 GiB inflated would be 2,048 MB here; a capped decode keeps to the cap and the wire
    kind, detail, *_ = by_path["/lying"]
    assert kind == "bad_encoding" and detail.startswith("Content-Encoding gzip: the answer is not gzip data")


@pytest.mark.parametrize("expect", [False, True], ids=["plain", "expect-100"])
def test_a_gzip_event_stream_is_decoded_as_it_arrives(tmp_path: Path, server: EncodingServer, expect: bool) -> None:
    cap = write_capture(tmp_path / "c.jsonl", _records(["/sse-gzip"] * 3, {"Expect": "100-continue"} if expect else None))
    s = scenario_dict(cap, server.url, None, timeout_s=10)
    s["targets"]["baseline"]["protocol"] = "openai"
    con, _ = replay(tmp_path, s)
    rows = con.execute("select error_kind, streamed, token_chunks, output_json, time_to_first_token_ms, latency_ms, "
                       "response_bytes, decoded_bytes from legs").fetchall()
    assert len(rows) == 3
    for kind, streamed, chunks, output, ttft, latency, wire, decoded in rows:
        assert (kind, streamed, chunks) == (None, True, 5)
        assert json.loads(output)["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 tok4 "
        assert ttft < latency - 60  # the first token came well before the end: timed on arrival, not at the end
        assert decoded > wire
