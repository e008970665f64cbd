"""Sending one leg exactly as captured: geventhttpclient's HTTPClient without its hidden habits.

- No retries: HTTPClient retries idempotent requests when a pooled connection closes (up to pool size
  + 1 times), which would make a failing candidate look like a slow success. The pool wrapper below
  hands out one socket per request; a second ask within the same request is refused as a reset.
- No headers of its own: no User-Agent, no Accept-Encoding; only Host and Content-Length are added.
- No cookie jar: every leg carries exactly the captured (redacted, overridden) headers.
- One deadline for the whole exchange (gevent.Timeout), not per socket operation.
- A body cap: answers over max_response_bytes are cut and recorded as too_large.
- Event streams (`Content-Type: text/event-stream`) are read as they arrive: each read is recorded as
  (bytes so far, ms since the send) in `arrivals`, from which the protocol reader times the tokens. A
  stream whose connection ends before the HTTP message does (a chunked body without its last chunk,
  a Content-Length not reached, a reset) keeps what arrived and is recorded as truncated_stream.
"""
from __future__ import annotations

import errno
import socket
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import gevent
from gevent.local import local
from geventhttpclient import HTTPClient
from geventhttpclient.header import Headers

__all__ = ["TargetClient", "SendResult"]

_CHUNK = 65536


@dataclass(slots=True)
class SendResult:
    status: int | None
    body: bytes
    error_kind: str | None
    error_detail: str | None
    response_bytes: int
    headers: dict[str, str] | None = None
    arrivals: list[tuple[int, float]] | None = None  # streams only: (bytes received so far, ms since the send)


class _OneSocketPerRequest:
    """Wraps a ConnectionPool so that one request gets one socket and no silent retry."""

    def __init__(self, pool: object, state: local) -> None:
        self._pool = pool
        self._state = state

    def get_socket(self) -> object:
        if getattr(self._state, "taken", False):
            raise ConnectionResetError(errno.ECONNRESET, "connection closed before the answer (not retried)")
        self._state.taken = True
        return self._pool.get_socket()  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> object:
        return getattr(self._pool, name)


class TargetClient:
    def __init__(self, url: str, *, timeout_s: float, connect_timeout_s: float, concurrency: int,
                 max_response_bytes: int) -> None:
        parts = urlsplit(url)
        self.base_path = parts.path.rstrip("/")
        self.timeout_s = timeout_s
        self.max_response_bytes = max_response_bytes
        self._state = local()
        self._client = HTTPClient(parts.hostname or "127.0.0.1", port=parts.port, ssl=parts.scheme == "https",
                                  insecure=True, connection_timeout=connect_timeout_s, network_timeout=timeout_s,
                                  concurrency=concurrency, headers=Headers())
        self._client.default_headers = Headers()
        self._client._connection_pool = _OneSocketPerRequest(self._client._connection_pool, self._state)  # type: ignore[assignment]

    def close(self) -> None:
        self._client.close()

    def send(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> SendResult:
        self._state.taken = False
        self._state.t0 = time.perf_counter()
        try:
            with gevent.Timeout(self.timeout_s):
                return self._exchange(method, self.base_path + path, headers, body)
        except gevent.Timeout:
            return SendResult(None, b"", "timeout", f"no complete answer within {self.timeout_s:g} s", 0)
        except ConnectionRefusedError as exc:
            return SendResult(None, b"", "connect", str(exc), 0)
        except (ConnectionResetError, BrokenPipeError) as exc:
            return SendResult(None, b"", "reset", str(exc), 0)
        except socket.timeout as exc:
            return SendResult(None, b"", "timeout", str(exc) or "socket timeout", 0)
        except OSError as exc:
            kind = "connect" if exc.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH) else "reset"
            return SendResult(None, b"", kind, f"{type(exc).__name__}: {exc}", 0)
        except Exception as exc:  # noqa: BLE001 - geventhttpclient's parse errors have no common base
            name = type(exc).__name__
            kind = "reset" if "Closed" in name or "Parse" in name or "Incomplete" in name else "client"
            return SendResult(None, b"", kind, f"{name}: {exc}"[:300], 0)

    def _exchange(self, method: str, uri: str, headers: list[tuple[str, str]], body: bytes) -> SendResult:
        hdrs = Headers()
        for k, v in headers:
            hdrs.add(k, v)
        response = self._client.request(method, uri, body=body, headers=hdrs)
        status = response.status_code
        resp_headers = {k.lower(): v for k, v in response.items()}
        try:
            declared = int(resp_headers.get("content-length", "-1"))
        except ValueError:
            declared = -1
        if declared > self.max_response_bytes:
            self._drop(response)
            return SendResult(status, b"", "too_large", f"Content-Length {declared} > cap {self.max_response_bytes}",
                              declared, resp_headers)
        if resp_headers.get("content-type", "").split(";")[0].strip().lower() == "text/event-stream":
            return self._read_stream(response, status, resp_headers)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = response.read(_CHUNK)
            if not chunk:
                break
            size += len(chunk)
            if size > self.max_response_bytes:
                return self._over_cap(response, status, size, "body", resp_headers)
            chunks.append(chunk)
        response.release()
        return SendResult(status, b"".join(chunks), _status_kind(status), None, size, resp_headers)

    def _read_stream(self, response: object, status: int, resp_headers: dict[str, str]) -> SendResult:
        t0: float = self._state.t0
        chunks: list[bytes] = []
        arrivals: list[tuple[int, float]] = []
        size = 0
        kind = _status_kind(status)
        detail = None
        while True:
            try:
                piece = _read_available(response)
            except (gevent.Timeout, TimeoutError):
                self._drop(response)
                raise  # the deadline, not the stream, ended it: send() records a timeout
            except Exception as exc:  # noqa: BLE001 - resets and geventhttpclient's parse errors alike
                kind = "truncated_stream"
                detail = f"the stream ended before the answer did: {type(exc).__name__}: {exc}"[:300]
                self._drop(response)
                break
            if piece is None:
                break
            if not piece:
                continue
            size += len(piece)
            if size > self.max_response_bytes:
                return self._over_cap(response, status, size, "stream", resp_headers)
            chunks.append(piece)
            arrivals.append((size, (time.perf_counter() - t0) * 1000.0))
        return SendResult(status, b"".join(chunks), kind, detail, size, resp_headers, arrivals)

    def _over_cap(self, response: object, status: int, size: int, what: str,
                  resp_headers: dict[str, str]) -> SendResult:
        self._drop(response)
        return SendResult(status, b"", "too_large", f"{what} over the cap of {self.max_response_bytes} bytes", size,
                          resp_headers)

    @staticmethod
    def _drop(response: object) -> None:
        # The rest of an oversized body is never read: the connection cannot be reused.
        pool, sock = getattr(response, "_pool", None), getattr(response, "_sock", None)
        if pool is not None and sock is not None:
            pool.release_socket(sock)  # closes it and frees its slot in the pool
        response._sock = response._pool = None  # type: ignore[attr-defined]


def _read_available(response: object) -> bytes | None:
    """What the answer has delivered so far, waiting for one socket read if nothing is buffered; None once
    the HTTP message is complete. geventhttpclient's read(n) waits for n bytes, which would hide when
    each event arrived."""
    buf: bytearray = response._body_buffer  # type: ignore[attr-defined]
    if not buf:
        if response.message_complete:  # type: ignore[attr-defined]
            return None
        sock = response._sock  # type: ignore[attr-defined]
        if sock is None:
            raise ConnectionError("connection closed before the end of the answer")
        data = sock.recv(_CHUNK)
        response.feed(data)  # type: ignore[attr-defined]  # b"" at EOF: completes a close-delimited body, else raises
        if not data and not response.message_complete:  # type: ignore[attr-defined]
            raise ConnectionError("connection closed before the end of the answer")
    out = bytes(buf)
    del buf[:]
    return out


def _status_kind(status: int) -> str | None:
    return "http_5xx" if status >= 500 else "http_4xx" if status >= 400 else None
