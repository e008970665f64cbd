"""The transport interface: what the dispatcher asks of a target's client, whatever the wire.

A transport sends one leg at a time and never blocks the caller: `start` writes the request (or queues it)
and returns; `done(token, result, done_at)` is called once per leg, later, on the event loop (it runs in
the hub and must not block), with a `SendResult` (harness.replay.wire) and the epoch time the answer was
complete. Legs run concurrently; a transport keeps its own deadlines (`timeout_s` for the whole exchange,
`connect_timeout_s` for the connection, TLS handshake included) and never retries.

A transport:
- adds nothing the capture did not carry (no headers of its own, no cookie jar, no retries),
- caps the answer at `max_response_bytes` (too_large) and returns it as received (the finisher decodes it),
- maps every failure to an error kind (harness.error_kinds): it never raises from `start`.

A transport may also have `warm(n)`: open n connections ahead of the first send, sending nothing on them (the
dispatcher calls it, when present, while it waits for the first intended send).
A transport that starts something slow (the gRPC transport's process) may also have `wait_started()`: the
dispatcher calls it once when it is made, before the replay's clock starts.

Transports by URL scheme: `TRANSPORTS` (http and https: harness.replay.http_transport). Another wire
(gRPC) registers its scheme there with a factory of the same signature. `MockTransport` answers from a
function, without sockets, for tests that drive the dispatcher.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol
from urllib.parse import urlsplit

import gevent
import gevent.event

from .wire import RequestHead, SendResult, error_result

__all__ = ["Transport", "Done", "Limits", "TRANSPORTS", "open_transport", "MockTransport", "send_one"]

Done = Callable[[Any, SendResult, float], None]


@dataclass(frozen=True)
class Limits:
    timeout_s: float  # the whole exchange, from the send to the last byte of the answer
    connect_timeout_s: float  # the connection (and its TLS handshake)
    max_response_bytes: int


class Transport(Protocol):
    def prepare(self) -> None:
        """Work done once before the first intended send (resolving the target's name), so that the send
        schedule never waits for it. A failure is kept, and every leg then fails with it."""

    def start(self, method: str, path: str, head: RequestHead, body: bytes, done: Done, token: Any) -> None:
        """Send one leg now: `path` as captured (the transport puts the target URL's path before it).
        `done(token, result, done_at)` is called exactly once, later or (a request that cannot be sent) now."""

    def close(self) -> None:
        """Close every connection; legs still open end as timeouts (their `done` is called)."""


Factory = Callable[[str, Limits, Mapping[str, Any] | None], Transport]


def _http(url: str, limits: Limits, tls: Mapping[str, Any] | None) -> Transport:
    from .http_transport import HttpTransport

    return HttpTransport(url, limits, tls)


TRANSPORTS: dict[str, Factory] = {"http": _http, "https": _http}


def open_transport(url: str, limits: Limits, tls: Mapping[str, Any] | None = None) -> Transport:
    """The transport for a target URL, by its scheme (ValueError naming the scheme when none serves it)."""
    scheme = urlsplit(url).scheme.lower()
    factory = TRANSPORTS.get(scheme)
    if factory is None:
        raise ValueError(f"no transport for {scheme or 'a URL without a scheme'}:// ({url}); "
                         f"known: {', '.join(sorted(TRANSPORTS))}")
    return factory(url, limits, tls)


Handler = Callable[[str, str, RequestHead, bytes], SendResult]


class MockTransport:
    """A transport whose answers come from `handler(method, path, head, body)` (as httpx's MockTransport):
    no sockets. `done` is called on the loop's next turn, as a real transport calls it; an exception in
    the handler is the leg's error, as a real transport maps failures."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.sent: list[tuple[str, str, RequestHead, bytes]] = []
        self._loop = gevent.get_hub().loop
        self.closed = False

    def prepare(self) -> None:
        pass

    def start(self, method: str, path: str, head: RequestHead, body: bytes, done: Done, token: Any) -> None:
        self.sent.append((method, path, head, body))
        try:
            result = self.handler(method, path, head, body)
        except Exception as exc:  # noqa: BLE001 - a transport maps failures to error kinds, never raises
            result = error_result(exc)
        self._loop.run_callback(lambda: done(token, result, time.time()))

    def close(self) -> None:
        self.closed = True


def send_one(transport: Transport, method: str, path: str, head: RequestHead | list[tuple[str, str]],
             body: bytes = b"") -> SendResult:
    """One leg, waited for (for checks and tests: the replay itself never waits on a leg)."""
    if not isinstance(head, RequestHead):
        head = RequestHead(head)
    answer: gevent.event.AsyncResult = gevent.event.AsyncResult()
    transport.start(method, path, head, body, lambda _token, result, _done: answer.set(result), None)
    result: SendResult = answer.get()
    return result
