"""Which leg outcomes count as errors, shared by the replay, the live sequential check and the judgement.

An error is what breaks a consumer: no answer in time, a refused or reset connection, a failed TLS
handshake, a 5xx, an answer that is not JSON, too large, compressed in a way that cannot be decoded
(bad_encoding), a cut stream, or a batch answered with more or fewer rows than it asked for. A 4xx is the
request's fault and is counted apart; an answer that breaks the output schema is judged by the schema gate.

`harness_error` is a leg that harness itself could not carry out or read (a bug in a reader, a request
the capture holds that cannot be written): kept in `legs` with its detail, left out of every model gate
(the pair is not judged), counted in the report, and above HARNESS_ERROR_TOLERANCE of the legs the run is
incomplete (exit 4). Which exception is which kind is decided by type in `exception_kind`, the one place
the transport boundary (harness.replay.http_client.error_result) asks."""
from __future__ import annotations

import errno
import http.client
import socket
import ssl

__all__ = ["ERROR_KINDS", "CONSUMER_ERROR_KINDS", "CONSUMER_ERROR_KINDS_SQL", "HARNESS_ERROR", "HARNESS_ERROR_TOLERANCE",
           "exception_kind"]

HARNESS_ERROR = "harness_error"
# The share of legs that may end in harness_error before the run is incomplete: one in a thousand lets a
# rare oddity through, recorded, while a reader that trips on every candidate answer (half the legs) stops
# the verdict.
HARNESS_ERROR_TOLERANCE = 0.001

# Every kind a leg's error_kind can hold (null: the exchange succeeded).
ERROR_KINDS = ("timeout", "connect", "reset", "http_4xx", "http_5xx", "invalid_json", "schema", "too_large",
               "truncated_stream", "skipped_in_flight_limit", HARNESS_ERROR, "row_count_mismatch", "bad_encoding",
               "tls")
CONSUMER_ERROR_KINDS = frozenset({"timeout", "connect", "reset", "http_5xx", "invalid_json", "too_large",
                                  "truncated_stream", "row_count_mismatch", "bad_encoding", "tls"})
# as a SQL list, for `error_kind in (...)`
CONSUMER_ERROR_KINDS_SQL = ", ".join(f"'{k}'" for k in sorted(CONSUMER_ERROR_KINDS))

_CONNECT_ERRNOS = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})


def exception_kind(exc: BaseException) -> str:
    """The error kind of an exchange that raised before an answer was complete. Only failures of the
    connection or of the target's HTTP are the target's; anything else is harness_error."""
    if isinstance(exc, ssl.SSLError):  # before OSError, its base
        # the peer closing the connection is a reset; a refused certificate or handshake is tls
        return "reset" if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)) else "tls"
    if isinstance(exc, ConnectionRefusedError):
        return "connect"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(exc, (ConnectionError, http.client.HTTPException)):  # reset, broken pipe, an answer not HTTP
        return "reset"
    if isinstance(exc, OSError) and exc.errno is not None:
        return "connect" if exc.errno in _CONNECT_ERRNOS else "reset"
    return HARNESS_ERROR
