"""gRPC legs (protocol kserve_v2_grpc): unary calls through grpcio, made by a gRPC process of their own.

A leg is one unary call. `start` (on the dispatcher's send loop) builds the message and queues it for the
gRPC process (harness.replay.grpc_process; one per replay process, a channel per target), written at the end
of the loop turn (the calls of a turn in one frame, one write). The dispatcher hands a pair over up to
`lead_s` (20 ms) before its time with `start(..., at=intended)`; that process starts the call with grpc.aio
at that time, on a timer of its own, so the send loop's pauses (the finisher, a recorder flush) do not delay
sends. Outcomes come back in batches through one io watcher and are handed to
`done(token, result, done_at)` like an HTTP leg's. The send loop never runs grpcio: under gevent (the
replay's process is monkey-patched by Locust) grpcio can only run in its gevent mode, which costs each call
a thread-pool hand-off and often a new greenlet (about 0.27 ms of the send loop per call). The leg's
`sent_at` and `done_at` are taken in the gRPC process, right before the call is handed to grpcio and when
its outcome is in: send lag includes the hand-off, latency is not stretched by the replay's own work.

One channel per target, one HTTP/2 connection, calls multiplexed on it as a gRPC client does. No retries
(`grpc.enable_retries` 0, no `wait_for_ready`: a call to a target that is down fails at once), one deadline
per call (replay.timeout_s), the answer capped at max_response_bytes (`grpc.max_receive_message_length`:
a larger message is `too_large`). Captured headers become the call's metadata, lower-cased, without the
ones gRPC owns or HTTP/1.1 alone means (content-type, te, host, user-agent, accept*, grpc-*); a `-bin`
header's value is base64 as captured and sent as bytes.

TLS (grpcs://): verified against `tls.ca_file` (else the system's roots), `tls.server_name` as the name
checked, `client_cert`/`client_key` for mutual TLS. grpcio cannot turn verification off, so `verify: false`
pins the certificate the server presents: it is fetched without verification when the transport is made
and becomes the channel's only root, with a name it carries as `grpc.ssl_target_name_override`. The pre-run
check fetches it once and passes it to every replay process in the target's settings (`PINNED_KEYS` of
harness.replay.tls); a client made without it fetches it itself. Its dates
are still checked (an expired certificate is refused by grpcio, and named so by the pre-run check).

The gRPC status of a failed call maps to the error kinds (and to `status_code`, by the HTTP mapping of
google.rpc.Code):

| gRPC status | error_kind | status_code |
|---|---|---|
| OK | none | 200 |
| DEADLINE_EXCEEDED | timeout | null |
| UNAVAILABLE | connect (no connection could be made), tls (the handshake failed), else reset | null |
| CANCELLED | reset (the target cancelled the call; calls still open when the replay ends: timeout) | null |
| RESOURCE_EXHAUSTED, the answer over max_receive_message_length | too_large | null |
| INVALID_ARGUMENT, FAILED_PRECONDITION, OUT_OF_RANGE | http_4xx | 400 |
| UNAUTHENTICATED / PERMISSION_DENIED / NOT_FOUND | http_4xx | 401 / 403 / 404 |
| ALREADY_EXISTS, ABORTED / RESOURCE_EXHAUSTED (other) | http_4xx | 409 / 429 |
| UNIMPLEMENTED | http_5xx | 501 |
| UNKNOWN, INTERNAL, DATA_LOSS | http_5xx | 500 |

A failed call's body (the leg's `output_json`) says why, as JSON: `{"grpc_status": name, "grpc_code": n,
"details": ..., "trailing_metadata": {...}}`, the trailing metadata only when it is small (up to 1 kB), with
credential-like keys masked as captured headers are (harness.traffic.redaction) and `-bin` values in base64.
`response_bytes` is the response message's serialized size (0 for a failed call); the answer is read into
the V2 JSON form by the protocol reader (harness.protocols.kserve_v2_grpc), in the finisher, like every answer.
"""
from __future__ import annotations

import base64
import binascii
import json
import os
import re
import subprocess
import sys
import time
from typing import Any, Mapping
from urllib.parse import urlsplit

import gevent
import gevent.event
import grpc

from ..error_kinds import HARNESS_ERROR
from ..protocols.kserve_v2_grpc import GrpcRequestError, request_for
from ..traffic.redaction import Redactor
from ..frames import FrameReader, child_env, frame
from .tls import pinned_certificate
from .transport import Done
from .wire import RequestHead, SendResult

__all__ = ["GrpcClient", "status_result", "metadata_of", "error_body"]


_DROP = frozenset({"content-type", "content-length", "te", "host", "user-agent", "accept", "accept-encoding",
                   "connection", "keep-alive", "transfer-encoding", "upgrade", "expect"})
_CODES: dict[grpc.StatusCode, tuple[str | None, int | None]] = {
    grpc.StatusCode.OK: (None, 200),
    grpc.StatusCode.INVALID_ARGUMENT: ("http_4xx", 400),
    grpc.StatusCode.FAILED_PRECONDITION: ("http_4xx", 400),
    grpc.StatusCode.OUT_OF_RANGE: ("http_4xx", 400),
    grpc.StatusCode.UNAUTHENTICATED: ("http_4xx", 401),
    grpc.StatusCode.PERMISSION_DENIED: ("http_4xx", 403),
    grpc.StatusCode.NOT_FOUND: ("http_4xx", 404),
    grpc.StatusCode.ALREADY_EXISTS: ("http_4xx", 409),
    grpc.StatusCode.ABORTED: ("http_4xx", 409),
    grpc.StatusCode.RESOURCE_EXHAUSTED: ("http_4xx", 429),
    grpc.StatusCode.UNIMPLEMENTED: ("http_5xx", 501),
    grpc.StatusCode.UNKNOWN: ("http_5xx", 500),
    grpc.StatusCode.INTERNAL: ("http_5xx", 500),
    grpc.StatusCode.DATA_LOSS: ("http_5xx", 500),
    grpc.StatusCode.DEADLINE_EXCEEDED: ("timeout", None),
    grpc.StatusCode.UNAVAILABLE: ("reset", None),
    grpc.StatusCode.CANCELLED: ("reset", None),
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
_TOO_LARGE = re.compile(r"(?i)received message larger than max|message larger than max")
_NO_CONNECTION = re.compile(r"(?i)failed to connect|connection refused|connect failed|no route|name resolution|"
                            r"dns resolution failed|unreachable")
_TLS = re.compile(r"(?i)handshake|ssl|certificate|tls")
_READY_WAIT_S = 0.25
_START_WAIT_S = 5.0
_CLOSE_WAIT_S = 5.0  # the gRPC process reports the calls it cancels, then exits
_TRAILING_MAX = 1024
# How early the dispatcher may hand a call over: the gRPC process starts it at its time on a timer of its own,
# so the send loop's pauses up to this long (the finisher, a recorder flush, the machine's other work) never
# delay a send, and one wake and one pipe write carry the calls of about lead_s / 2.
_LEAD_S = 0.02
_REDACTOR = Redactor()


def metadata_of(head: RequestHead) -> tuple[tuple[str, str | bytes], ...]:
    """The call's metadata from a request's header lines (ValueError naming a `-bin` value that is not base64)."""
    out: list[tuple[str, str | bytes]] = []
    for name, value in head.headers:
        key = name.lower()
        if key in _DROP or key.startswith("grpc-") or key.startswith(":"):
            continue
        if key.endswith("-bin"):
            try:
                out.append((key, base64.b64decode(value + "=" * (-len(value) % 4), validate=True)))
            except (binascii.Error, ValueError):
                raise ValueError(f"metadata {name}: a -bin value must be base64") from None
        else:
            out.append((key, value))
    return tuple(out)


def error_body(code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str | bytes], ...] = ()) -> bytes:
    """What a failed call's leg keeps as its body: the status, its message and, when small, the trailing
    metadata (credential-like keys masked; `-bin` values in base64)."""
    doc: dict[str, Any] = {"grpc_status": code.name, "grpc_code": code.value[0], "details": details[:1000]}
    if trailing:
        pairs = tuple((k, base64.b64encode(v).decode() if isinstance(v, bytes) else str(v)) for k, v in trailing)
        shown = dict(_REDACTOR.headers(pairs))
        text = json.dumps(shown, ensure_ascii=False)
        if len(text) <= _TRAILING_MAX:
            doc["trailing_metadata"] = shown
        else:
            doc["trailing_metadata_chars"] = len(text)
    return json.dumps(doc, ensure_ascii=False, separators=(",", ":")).encode()


def status_result(code: grpc.StatusCode, details: str, closing: bool = False,
                  trailing: tuple[tuple[str, str | bytes], ...] = (), sent_at: float | None = None) -> SendResult:
    """The SendResult of a call that ended with a status other than OK."""
    kind, status = _CODES.get(code, ("http_5xx", 500))
    detail = f"gRPC {code.name}: {details}"[:300]
    if code == grpc.StatusCode.UNAVAILABLE:
        kind = "tls" if _TLS.search(details) else "connect" if _NO_CONNECTION.search(details) else "reset"
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE.search(details):
        kind, status = "too_large", None
    elif code == grpc.StatusCode.CANCELLED and closing:
        kind, detail = "timeout", f"gRPC {code.name}: still open when the replay ended"
    headers = {"grpc-status": str(code.value[0]), "grpc-message": details[:300], "content-type": "application/json"}
    return SendResult(status, error_body(code, details, trailing), kind, detail, 0, headers, None, 0, sent_at)


class _GrpcProcess:
    """The gRPC process of this replay process (harness.replay.grpc_process), shared by its gRPC targets:
    the legs of a pair go to it in one write, and it is woken once for both."""

    def __init__(self) -> None:
        self.pending: dict[int, tuple[GrpcClient, Done, Any, str, float]] = {}
        self.clients: dict[int, GrpcClient] = {}
        self.failed: str | None = None
        self._next_call = 0
        self._next_channel = 0
        self._frames = FrameReader()
        self._messages: list[Any] = []  # for the next frame: a frame carries a loop turn's messages
        self._out = bytearray()
        self._flushing = False
        to_child, self._child_in = os.pipe()
        self._child_out, from_child = os.pipe()
        # -P: the working folder stays off the process's import path (a stray grpc.py there must not win)
        self._proc = subprocess.Popen([sys.executable, "-P", "-m", "harness.replay.grpc_process", str(to_child),
                                       str(from_child)], env=child_env(),
                                      pass_fds=(to_child, from_child), stdin=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL)
        os.close(to_child)
        os.close(from_child)
        os.set_blocking(self._child_in, False)
        os.set_blocking(self._child_out, False)
        self._loop = gevent.get_hub().loop
        self._reading = self._loop.io(self._child_out, 1)
        self._reading.start(self._readable)
        self._writing = self._loop.io(self._child_in, 2)

    def open(self, client: GrpcClient, settings: dict[str, Any]) -> int:
        number = self._next_channel
        self._next_channel += 1
        self.clients[number] = client
        self.send(("o", number, settings))
        return number

    def call(self, client: GrpcClient, path: str, payload: bytes, metadata: Any, done: Done, token: Any,
             at: float | None) -> None:
        call_id = self._next_call
        self._next_call += 1
        self.pending[call_id] = (client, done, token, path, at or 0.0)
        self.send(("c", client.channel, call_id, path, payload, metadata, at))

    def send(self, message: Any) -> None:
        if self.failed is not None:
            return
        self._messages.append(message)
        if self._writing.active:  # the pipe was full: the write watcher sends the rest, in order
            return
        if len(self._messages) >= 512:
            self._flush()
        elif not self._flushing:  # at the end of this loop turn: the other leg of the pair goes in the same write
            self._flushing = True
            self._loop.run_callback(self._flush)

    def _flush(self) -> None:
        self._flushing = False
        if self.failed is not None:
            return
        if self._messages:
            self._out += frame(self._messages)
            self._messages = []
        if not self._out:
            return
        try:
            sent = os.write(self._child_in, self._out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self.lost(f"the gRPC client process cannot be written to: {exc.strerror or exc}")
            return
        del self._out[:sent]
        if self._out and not self._writing.active:
            self._writing.start(self._flush)
        elif not self._out and self._writing.active:
            self._writing.stop()

    def _readable(self) -> None:
        while True:
            try:
                chunk = os.read(self._child_out, 1 << 20)
            except BlockingIOError:
                return
            except OSError as exc:
                self.lost(f"the gRPC client process cannot be read from: {exc.strerror or exc}")
                return
            if not chunk:
                code = self._proc.poll()
                self.lost("the gRPC client process exited" + (f" (code {code})" if code is not None else ""))
                return
            for messages in self._frames.feed(chunk):
                for message in messages:
                    self._handle(message)

    def _handle(self, message: Any) -> None:
        kind = message[0]
        if kind == "d":
            _, call_id, sent_at, done_at, number, details, answer, trailing = message
            entry = self.pending.pop(call_id, None)
            if entry is None:
                return
            client, done, token, path, at = entry
            if number == 0:
                result = SendResult(200, answer, None, None, len(answer), {":path": path, "content-type": "application/grpc"},
                                    None, len(answer), sent_at)
            else:
                code = _BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN)
                result = status_result(code, details, client.closing, trailing, sent_at)
            done(token, result, done_at if sent_at is not None else max(done_at, at))  # never sent: not before its time
        elif kind == "e":
            _, call_id, sent_at, done_at, detail = message
            entry = self.pending.pop(call_id, None)
            if entry is not None:
                entry[1](entry[2], SendResult(None, b"", HARNESS_ERROR, detail, 0, None, None, None, sent_at), done_at)
        elif kind in ("up", "ready", "b"):
            target = self.clients.get(message[1])
            if target is not None:
                {"up": target.up, "ready": target.ready, "b": target.ended}[kind].set()

    def lost(self, why: str) -> None:
        """The process is gone: every open leg ends now (as a timeout where its target is closing)."""
        global _shared
        if _shared is self:
            _shared = None
        self.failed = why
        self._reading.stop()
        self._writing.stop()
        for client in self.clients.values():
            client.up.set()
            client.ended.set()
        self.end_pending(None)

    def end_pending(self, client: GrpcClient | None) -> None:
        """End the open legs of `client` (all of them: None) without their answers."""
        now = time.time()
        for call_id, (owner, done, token, _, at) in list(self.pending.items()):
            if client is None or owner is client:
                del self.pending[call_id]
                result = _closed() if owner.closing else SendResult(None, b"", HARNESS_ERROR, self.failed or "", 0)
                done(token, result, max(now, at))

    def release(self, client: GrpcClient) -> None:
        """`client` is closed: the process ends with the last one."""
        global _shared
        self.clients.pop(client.channel, None)
        if self.clients:
            return
        if _shared is self:
            _shared = None
        self.send(("q",))
        self._flush()
        self._reading.stop()
        self._writing.stop()
        for fd in (self._child_in, self._child_out):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self._proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=2)


_shared: _GrpcProcess | None = None


def _process() -> _GrpcProcess:
    global _shared
    if _shared is None:
        _shared = _GrpcProcess()
    return _shared


class GrpcClient:
    """One target's channel in the gRPC process: a transport (harness.replay.transport)."""

    lead_s = _LEAD_S  # the dispatcher hands a call over this much before its time at most (`start(at=...)`)

    def __init__(self, url: str, *, timeout_s: float, connect_timeout_s: float, max_response_bytes: int,
                 tls: Mapping[str, Any] | None = None) -> None:
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        secure = parts.scheme == "grpcs"
        port = parts.port or (443 if secure else 80)
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_response_bytes = max_response_bytes
        self.closing = False
        self.up = gevent.event.Event()
        self.ready = gevent.event.Event()
        self.ended = gevent.event.Event()
        self._failed: SendResult | None = None  # set: every leg ends so (the certificate could not be pinned)
        self._last: tuple[Any, str, str, tuple[str, bytes] | GrpcRequestError] | None = None
        self._metadata: dict[int, tuple[RequestHead, Any]] = {}
        settings: dict[str, Any] = {"target": self.target, "secure": secure, "timeout_s": timeout_s, "options": [
            ("grpc.max_receive_message_length", max(min(max_response_bytes, 2**31 - 1), 1)),
            ("grpc.max_send_message_length", -1),
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]}
        if secure:
            try:
                secured = _tls_settings(host, port, tls, connect_timeout_s)
                settings["options"] += secured.pop("options")
                settings.update(secured)
            except (OSError, ValueError) as exc:
                self._failed = SendResult(None, b"", "tls", f"TLS: {exc}"[:300], 0)
        self._process = _process()
        self.channel = self._process.open(self, settings)

    def wait_started(self) -> None:
        """Wait (bounded) for the gRPC process and this target's channel to be up and, briefly, for the
        channel to connect: called when the dispatcher is made, before the replay's clock starts, so that a
        process slow to start on a busy machine does not make the first legs late."""
        if self.up.wait(timeout=_START_WAIT_S):
            self.ready.wait(timeout=_READY_WAIT_S)

    def prepare(self) -> None:
        """Wait, briefly, for the channel that started connecting when it was opened: a first call that had
        to connect the channel would leave late and hold the sends behind it. The dispatcher calls this once,
        inside the replay's start delay (0.3 s), so the wait is bounded below it; a target that cannot be
        reached by then is left to the legs, each recording its failure."""
        self.ready.wait(timeout=_READY_WAIT_S)

    def _request(self, method: str, uri: str, body: bytes) -> tuple[str, bytes]:
        # Both legs of a pair carry the very same body object: it is translated once.
        last = self._last
        if last is not None and last[0] is body and last[1] == uri and last[2] == method:
            got = last[3]
        else:
            try:
                got = request_for(method, uri, body)
            except GrpcRequestError as exc:
                got = exc
            self._last = (body, uri, method, got)
        if isinstance(got, GrpcRequestError):
            raise got
        return got

    def _meta(self, head: RequestHead) -> Any:
        cached = self._metadata.get(id(head))
        if cached is not None and cached[0] is head:
            return cached[1]
        if len(self._metadata) > 4096:
            self._metadata.clear()
        meta = metadata_of(head)
        self._metadata[id(head)] = (head, meta)
        return meta

    def start(self, method: str, uri: str, head: RequestHead, body: bytes, done: Done, token: Any,
              at: float | None = None) -> None:
        """Hand the call to the gRPC process (written at the end of this loop turn), which starts it at `at`
        (epoch seconds; None or past: at once); `done` is called once, later (or now, for a request that cannot
        be sent: with its end time no earlier than `at`)."""
        try:
            if head.error is not None:
                raise ValueError(head.error)
            path, payload = self._request(method, uri, body)
            metadata = self._meta(head)
        except ValueError as exc:
            done(token, SendResult(None, b"", HARNESS_ERROR, f"{type(exc).__name__}: {exc}"[:300], 0),
                 max(time.time(), at or 0.0))
            return
        failed = self._failed
        if failed is None and self._process.failed is not None:
            failed = SendResult(None, b"", HARNESS_ERROR, self._process.failed, 0)
        if failed is not None or self.closing:
            done(token, failed or _closed(), max(time.time(), at or 0.0))
            return
        self._process.call(self, path, payload, metadata, done, token, at)

    def close(self) -> None:
        """Cancel what is still open (those legs end as timeouts), close the channel; once."""
        if self.closing:
            return
        self.closing = True
        if self._process.failed is None:
            self._process.send(("x", self.channel))
            self.ended.wait(timeout=_CLOSE_WAIT_S)
        self._process.end_pending(self)
        self._process.release(self)


def _closed() -> SendResult:
    return status_result(grpc.StatusCode.CANCELLED, "still open when the replay ended", closing=True)


def _tls_settings(host: str, port: int, tls: Mapping[str, Any] | None, timeout_s: float) -> dict[str, Any]:
    """The channel's credentials and name override (OSError / ValueError when the pinned certificate cannot
    be fetched)."""
    tls = tls or {}

    def read(key: str) -> bytes | None:
        path = tls.get(key)
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    out: dict[str, Any] = {"private_key": read("client_key"), "certificate_chain": read("client_cert"),
                           "root_certificates": read("ca_file")}
    name = tls.get("server_name")
    if tls.get("verify", True) is False:
        if tls.get("pinned_certificate"):  # pinned by the pre-run check (harness.run.check_targets)
            pem, name = str(tls["pinned_certificate"]), str(tls.get("pinned_name") or name or host)
        else:
            pem, name = pinned_certificate(host, port, tls, timeout_s)
        out["root_certificates"] = pem.encode()
    out["options"] = [("grpc.ssl_target_name_override", name)] if name else []
    return out
