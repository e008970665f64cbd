"""What HTTP/1.1 lets a request head carry (RFC 9110 field names and values): the capture readers check it, so
that a record no request could carry is a bad record with its line, not a failed leg at send time; the
replay checks the scenario's own headers with it.

A captured value outside Latin-1 (a capture that decoded the client's UTF-8 bytes as text) is sent as those
UTF-8 bytes, as the client sent it: obs-text, which HTTP/1.1 carries and servers read as bytes."""
from __future__ import annotations

import re

__all__ = ["TOKEN_RE", "CONTROL_RE", "wire_value", "control_character", "header_problem"]

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


def control_character(value: str) -> str | None:
    """The first control character of a field value, named by its code point and position; the value itself is
    never quoted (it may be a credential: what is said here reaches bad_records and legs.error_detail)."""
    m = CONTROL_RE.search(value)
    return None if m is None else f"U+{ord(m.group()):04X} at character {m.start() + 1}"


def header_problem(name: object, value: object) -> str | None:
    """Why a header cannot be sent (None when it can)."""
    if not isinstance(name, str) or not TOKEN_RE.fullmatch(name):
        return f"invalid header field name {name!r}"
    bad = control_character(str(value))
    return None if bad is None else f"invalid value for header field {name!r}: a control character ({bad})"
