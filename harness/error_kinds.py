"""Which leg outcomes count as errors, shared by the live sequential check and the final judgement.

An error is what breaks a consumer: no answer in time, a refused or reset connection, a failed TLS
handshake, a 5xx, an answer that is not JSON, too large, compressed in a way that cannot be decoded, or a
cut stream. A 4xx is the request's fault and is counted apart; an
answer that breaks the output schema is judged by the schema gate."""
from __future__ import annotations

__all__ = ["CONSUMER_ERROR_KINDS"]

CONSUMER_ERROR_KINDS = frozenset({"timeout", "connect", "reset", "http_5xx", "invalid_json", "too_large",
                                  "truncated_stream", "client", "bad_encoding", "tls"})
