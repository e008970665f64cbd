"""gRPC legs (protocol kserve_v2_grpc): unary calls through grpcio, started without a greenlet per leg.

A leg is one unary call started with `future()` from the dispatcher's send loop (it returns at once: the
call is queued to grpcio's core, which owns the HTTP/2 connection) and finished by the future's done
callback, which hands the `SendResult` to `done(token, result, done_at)` like an evented HTTP leg. grpcio
runs under gevent through `grpc.experimental.gevent.init_gevent()` (called once, before the first channel):
its completion queue is polled cooperatively, so a call in flight never blocks the loop (the replay process
is monkey-patched by Locust; without init_gevent grpcio's polling thread would hold the hub).

One channel per target, one HTTP/2 connection, calls multiplexed on it as a gRPC client does. No retries
(`grpc.enable_retries` 0, no `wait_for_ready`: a call to a target that is down fails at once), one deadline
per call (replay.timeout_s), the answer capped at max_response_bytes (`grpc.max_receive_message_length`:
a larger message is `too_large`). Captured headers become the call's metadata, lower-cased, without the
ones gRPC owns or HTTP/1.1 alone means (content-type, te, host, user-agent, accept*, grpc-*); a `-bin`
header's value is base64 as captured and sent as bytes.

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

`response_bytes` is the response message's serialized size; the answer is read into the V2 JSON form by
the protocol reader (harness.protocols.kserve_v2_grpc), in the finisher, like every answer.
"""
from __future__ import annotations

import base64
import binascii
import re
import time
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import grpc

from ..error_kinds import HARNESS_ERROR
from ..protocols.kserve_v2_grpc import GrpcRequestError, request_for
from .http_client import RequestHead, SendResult

__all__ = ["GrpcClient", "init_grpc_gevent", "status_result", "metadata_of"]

Done = Callable[[Any, SendResult, float], None]

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
_TOO_LARGE = re.compile(r"(?i)received message larger than max|message larger than max")
_NO_CONNECTION = re.compile(r"(?i)failed to connect|connection refused|connect failed|no route|name resolution|"
                            r"dns resolution failed|unreachable")
_TLS = re.compile(r"(?i)handshake|ssl|certificate|tls")
_gevent_ready = False
_READY_WAIT_S = 0.25


def init_grpc_gevent() -> None:
    """grpcio's gevent integration, once per process and before any channel exists. Only where gevent has
    patched the standard library (the replay's processes): grpcio polls with gevent's primitives then."""
    global _gevent_ready
    if _gevent_ready:
        return
    from gevent import monkey  # noqa: PLC0415

    if monkey.is_module_patched("threading"):
        from grpc.experimental import gevent as grpc_gevent  # noqa: PLC0415

        grpc_gevent.init_gevent()
    _gevent_ready = True


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


def status_result(code: grpc.StatusCode, details: str, closing: bool = False) -> SendResult:
    """The SendResult of a call that ended with a status other than OK."""
    kind, status = _CODES.get(code, ("http_5xx", 500))
    detail = f"gRPC {code.name}: {details}"[:300]
    if code == grpc.StatusCode.UNAVAILABLE:
        kind = "tls" if _TLS.search(details) else "connect" if _NO_CONNECTION.search(details) else "reset"
    elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and _TOO_LARGE.search(details):
        kind, status = "too_large", None
    elif code == grpc.StatusCode.CANCELLED and closing:
        kind = "timeout"
    headers = {"grpc-status": str(code.value[0]), "grpc-message": details[:300]}
    return SendResult(status, b"", kind, detail, 0, headers)


class GrpcClient:
    """One target's channel; `evented()` is itself, so the dispatcher starts its legs as it starts evented
    HTTP legs (no greenlet per leg)."""

    base_path = ""

    def __init__(self, url: str, *, timeout_s: float, connect_timeout_s: float, max_response_bytes: int,
                 tls: Mapping[str, Any] | None = None) -> None:
        init_grpc_gevent()
        parts = urlsplit(url)
        host = parts.hostname or "127.0.0.1"
        secure = parts.scheme == "grpcs"
        port = parts.port or (443 if secure else 80)
        self.target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_response_bytes = max_response_bytes
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", max(min(max_response_bytes, 2**31 - 1), 1)),
            ("grpc.max_send_message_length", -1),
            ("grpc.enable_retries", 0),
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 1000),
        ]
        if secure:
            options.extend(_tls_options(tls))
            self._channel = grpc.secure_channel(self.target, _credentials(tls), options=options)
        else:
            self._channel = grpc.insecure_channel(self.target, options=options)
        self._ready = grpc.channel_ready_future(self._channel)  # starts connecting now, without waiting
        self._calls: dict[str, Any] = {}
        self._inflight: dict[Any, None] = {}
        self._closing = False
        self._last: tuple[Any, str, str, tuple[str, bytes] | GrpcRequestError] | None = None
        self._metadata: dict[int, tuple[RequestHead, Any]] = {}

    def evented(self) -> GrpcClient:
        return self

    def resolve(self) -> None:
        """Wait, briefly, for the channel that started connecting when the client was made: a first call that
        had to connect the channel would leave late and hold the sends behind it. The dispatcher calls this
        once, inside the replay's start delay (0.3 s), so the wait is bounded below it; a target that cannot
        be reached by then is left to the legs, each recording its failure."""
        try:
            self._ready.result(timeout=_READY_WAIT_S)
        except grpc.FutureTimeoutError:
            pass

    def _call(self, path: str) -> Any:
        call = self._calls.get(path)
        if call is None:  # bytes in, bytes out: the messages are built and read outside the call
            call = self._calls[path] = self._channel.unary_unary(path, _registered_method=True)
        return call

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

    def start(self, method: str, uri: str, head: RequestHead, body: bytes, done: Done, token: Any) -> None:
        """Start the call now; `done` is called once, later (or now, for a request that cannot be sent)."""
        try:
            if head.error is not None:
                raise ValueError(head.error)
            path, payload = self._request(method, uri, body)
            metadata = self._meta(head)
        except ValueError as exc:
            done(token, SendResult(None, b"", HARNESS_ERROR, f"{type(exc).__name__}: {exc}"[:300], 0), time.time())
            return
        try:
            future = self._call(path).future(payload, timeout=self.timeout_s, metadata=metadata or None)
        except Exception as exc:  # noqa: BLE001 - grpcio refusing the call (bad metadata): nothing was sent
            done(token, SendResult(None, b"", HARNESS_ERROR, f"{type(exc).__name__}: {exc}"[:300], 0), time.time())
            return
        self._inflight[future] = None
        future.add_done_callback(lambda f: self._finished(f, path, done, token))

    def _finished(self, future: Any, path: str, done: Done, token: Any) -> None:
        done_at = time.time()
        self._inflight.pop(future, None)
        try:
            raw = future.result()
        except grpc.RpcError as exc:
            code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
            details = (exc.details() if hasattr(exc, "details") else None) or ""
            done(token, status_result(code, details, self._closing), done_at)
            return
        except grpc.FutureCancelledError:
            done(token, status_result(grpc.StatusCode.CANCELLED, "cancelled", self._closing), done_at)
            return
        except Exception as exc:  # noqa: BLE001 - any other failure of the call is still this leg's end
            done(token, SendResult(None, b"", HARNESS_ERROR, f"{type(exc).__name__}: {exc}"[:300], 0), done_at)
            return
        done(token, SendResult(200, raw, None, None, len(raw), {":path": path, "content-type": "application/grpc"},
                               None, len(raw)), done_at)

    def send(self, method: str, path: str, head: RequestHead, body: bytes) -> SendResult:
        """One call, waiting for its end (the dispatcher's greenlet path; cooperative under init_gevent)."""
        import gevent.event  # noqa: PLC0415

        box: list[SendResult] = []
        ready = gevent.event.Event()

        def got(_token: Any, result: SendResult, _done_at: float) -> None:
            box.append(result)
            ready.set()

        self.start(method, path, head, body, got, None)
        ready.wait(self.timeout_s + 5)
        return box[0] if box else SendResult(None, b"", "timeout", f"no answer within {self.timeout_s:g} s", 0)

    def close(self) -> None:
        """Cancel what is still open (those legs end as timeouts) and close the channel; once (the dispatcher
        closes a client as its evented side and as its client)."""
        if self._closing:
            return
        self._closing = True
        self._ready.cancel()
        for future in list(self._inflight):
            future.cancel()
        self._channel.close()


def _credentials(tls: Mapping[str, Any] | None) -> grpc.ChannelCredentials:
    tls = tls or {}

    def read(key: str) -> bytes | None:
        path = tls.get(key)
        if not path:
            return None
        with open(path, "rb") as f:
            return f.read()

    return grpc.ssl_channel_credentials(root_certificates=read("ca_file"), private_key=read("client_key"),
                                        certificate_chain=read("client_cert"))


def _tls_options(tls: Mapping[str, Any] | None) -> list[tuple[str, Any]]:
    name = (tls or {}).get("server_name")
    return [("grpc.ssl_target_name_override", name)] if name else []
