"""The request model every capture reader produces."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

__all__ = ["CapturedRequest", "CapturedResponse", "BadRecord"]


@dataclass(frozen=True, slots=True)
class CapturedResponse:
    """A response that production gave (GoReplay, HAR): kept as a third, "production" reference."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class CapturedRequest:
    """One captured request.

    `line` is where it came from: a 1-based line number for line formats, the entry index for HAR,
    the payload index for GoReplay. `ts` is epoch seconds (float, UTC). `path` includes the query
    string. `headers` keep their captured order and case; names may repeat. `meta` holds every
    other field of the record (they can feed segments).
    """

    source: str
    line: int
    ts: float
    method: str
    path: str
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    meta: Mapping[str, Any] = field(default_factory=dict)
    response: CapturedResponse | None = None

    def header(self, name: str) -> str | None:
        lname = name.lower()
        for k, v in self.headers:
            if k.lower() == lname:
                return v
        return None


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record a reader could not turn into a CapturedRequest; readers yield it and go on."""

    source: str
    line: int
    reason: str
