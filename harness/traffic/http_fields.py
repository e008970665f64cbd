"""What HTTP/1.1 lets a request head carry (RFC 9110 field names and values): the capture readers check it, so
that a record no request could carry is a bad record with its line, not a failed leg at send time; the
replay checks the scenario's own headers with it.

A captured value outside Latin-1 (a capture that decoded the client's UTF-8 bytes as text) is sent as those
UTF-8 bytes, as the client sent it: obs-text, which HTTP/1.1 carries and servers read as bytes."""
from __future__ import annotations

import re

__all__ = ["TOKEN_RE", "CONTROL_RE", "wire_value", "header_problem"]

TOKEN_RE = re.compile(r"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# what a field value may not hold (HTTP/1.1: VCHAR, SP, HTAB and obs-text bytes 0x80-0xFF)
CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


def wire_value(value: str) -> str:
    """The value as the head's Latin-1 text: characters past U+00FF become their UTF-8 bytes."""
    try:
        value.encode("latin-1")
        return value
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass").decode("latin-1")


def header_problem(name: object, value: object) -> str | None:
    """Why a header cannot be sent (None when it can)."""
    if not isinstance(name, str) or not TOKEN_RE.fullmatch(name):
        return f"invalid header field name {name!r}"
    if CONTROL_RE.search(str(value)):
        return f"invalid value for header field {name!r}: {str(value)[:80]!r} (a control character)"
    return None
