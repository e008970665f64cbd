"""Which leg outcomes count as errors, shared by the replay, the live sequential check and the judgement.

An error is what breaks a consumer: no answer in time, a refused or reset connection, a failed TLS
handshake, a 5xx, an answer that is not JSON, too large, compressed in a way that cannot be decoded
(bad_encoding), a cut stream, or a batch answered with more or fewer rows than it asked for. A 4xx is the
request's fault and is counted apart, except in a paired run where the other version answered the same
request without a 4xx: then it is a request production accepts and this version refuses (a stricter input
check, a route gone, a 429 under the load the other one took), and it is this version's error
(`pair_failed`, `failed_sql`). A 3xx (harness follows no redirect: a model API's clients rarely do, and a
redirect is not an answer) follows the same rule: a route that redirects where the other version answers
(a trailing slash added to a route, a moved path) is the redirecting version's error; a request both
redirect, or a 304 both send, is nobody's. An answer that breaks the output schema is judged by the schema
gate.

`harness_error` is a leg that harness itself could not carry out or read (a bug in a reader, a request
the capture holds that cannot be written): kept in `legs` with its detail, left out of every model gate
(the pair is not judged), counted in the report, and above HARNESS_ERROR_TOLERANCE of the legs the run is
incomplete (exit 4). Which exception is which kind is decided by type in `exception_kind`, the one place
the transport boundary (harness.replay.wire.error_result) asks."""
from __future__ import annotations

import errno
import http.client
import socket
import ssl

__all__ = ["ERROR_KINDS", "CONSUMER_ERROR_KINDS", "CONSUMER_ERROR_KINDS_SQL", "HARNESS_ERROR", "HARNESS_ERROR_TOLERANCE",
           "REFUSAL_KINDS", "exception_kind", "pair_failed", "failed_sql", "failed_sql_of", "status_kind"]

HARNESS_ERROR = "harness_error"
# The share of legs that may end in harness_error before the run is incomplete: one in a thousand lets a
# rare oddity through, recorded, while a reader that trips on every candidate answer (half the legs) stops
# the verdict.
HARNESS_ERROR_TOLERANCE = 0.001

# Every kind a leg's error_kind can hold (null: the exchange succeeded).
ERROR_KINDS = ("timeout", "connect", "reset", "http_3xx", "http_4xx", "http_5xx", "invalid_json", "schema", "too_large",
               "truncated_stream", "skipped_in_flight_limit", HARNESS_ERROR, "row_count_mismatch", "bad_encoding",
               "tls", "model_error")
CONSUMER_ERROR_KINDS = frozenset({"timeout", "connect", "reset", "http_5xx", "invalid_json", "too_large",
                                  "truncated_stream", "row_count_mismatch", "bad_encoding", "tls", "model_error"})
# as a SQL list, for `error_kind in (...)`
CONSUMER_ERROR_KINDS_SQL = ", ".join(f"'{k}'" for k in sorted(CONSUMER_ERROR_KINDS))


# Answers that are no error by themselves (the request's fault, or a redirect), only where the other version
# of the pair answered the same request otherwise.
REFUSAL_KINDS = ("http_3xx", "http_4xx")
_REFUSAL_KINDS_SQL = ", ".join(f"'{k}'" for k in REFUSAL_KINDS)


def status_kind(status: int) -> str | None:
    """The error kind of a complete HTTP answer, by its status (1xx never reaches here: not a final answer)."""
    return "http_5xx" if status >= 500 else "http_4xx" if status >= 400 else "http_3xx" if status >= 300 else None


def pair_failed(kind: str | None, other: str | None, paired: bool = True) -> bool:
    """Whether a leg failed, given its pair's other leg (`paired`: there is one)."""
    if kind in CONSUMER_ERROR_KINDS:
        return True
    return paired and kind in REFUSAL_KINDS and other != kind


def failed_sql(leg: str, other: str | None = None) -> str:
    """pair_failed in SQL, for the legs aliased `leg` and, where the run is paired, `other` (left joined: a
    missing other leg is no pair)."""
    if other is None:
        return failed_sql_of(f"{leg}.error_kind")
    return failed_sql_of(f"{leg}.error_kind", f"{other}.error_kind", f"{other}.order_idx is not null")


def failed_sql_of(kind: str, other_kind: str | None = None, other_present: str | None = None) -> str:
    """pair_failed in SQL over column expressions: the leg's error kind and, in a paired run, the other leg's
    and a condition true where the other leg exists (the pairs view names its columns baseline_*, candidate_*)."""
    own = f"coalesce({kind} in ({CONSUMER_ERROR_KINDS_SQL}), false)"
    if other_kind is None:
        return own
    return (f"coalesce({own} or ({kind} in ({_REFUSAL_KINDS_SQL}) and {other_present}"
            f" and {other_kind} is distinct from {kind}), false)")


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
