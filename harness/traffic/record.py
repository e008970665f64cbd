"""The request model every capture reader produces."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import orjson

from ..jsonpath import MISSING

__all__ = ["CapturedRequest", "CapturedResponse", "BadRecord", "json_like"]


class _Unset:
    """Marks a per-record cache that is not filled yet."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<unset>"


_UNSET: Any = _Unset()
NOT_PARSED: Any = _UNSET  # CapturedRequest.parsed_body(): the body was not parsed yet


@dataclass(frozen=True, slots=True)
class CapturedResponse:
    """A response that production gave (GoReplay, HAR): kept as a third, "production" reference."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""


@dataclass(frozen=True, slots=True)
class CapturedRequest:
    """One captured request.

    `line` is where it came from: a 1-based line number for line formats, the 1-based entry number for
    HAR, the row number for Parquet, the payload index for GoReplay (readers.record_unit names it). `ts`
    is epoch seconds (float, UTC). `path` includes the query string. `headers` keep their captured order
    and case; names may repeat. `meta` holds every other field of the record (they can feed segments).

    Two caches ride along, outside the fields that compare, print or pickle: the body parsed as JSON
    (`json_body()`; the JSONL reader hands over the value it parsed already) and a lower-cased header
    index (`header()`). `dataclasses.replace` starts a copy with empty caches, so a changed body is
    never answered from the old one's parse.
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
    _doc: Any = field(default=_UNSET, init=False, repr=False, compare=False)
    _hindex: Any = field(default=None, init=False, repr=False, compare=False)

    def __init__(self, source: str, line: int, ts: float, method: str, path: str,
                 headers: tuple[tuple[str, str], ...] = (), body: bytes = b"", meta: Mapping[str, Any] = _UNSET,
                 response: CapturedResponse | None = None, _doc: Any = _UNSET, *, _set: Any = object.__setattr__) -> None:
        """What dataclass would write (meta defaults to a new dict), a little faster: readers make millions.
        `_doc` is for readers that parsed the body already: it must equal what json_body() would parse;
        dataclasses.replace never passes it, so a copy starts with an empty cache."""
        _set(self, "source", source)
        _set(self, "line", line)
        _set(self, "ts", ts)
        _set(self, "method", method)
        _set(self, "path", path)
        _set(self, "headers", headers)
        _set(self, "body", body)
        _set(self, "meta", {} if meta is _UNSET else meta)
        _set(self, "response", response)
        _set(self, "_doc", _doc)
        _set(self, "_hindex", None)

    def header(self, name: str) -> str | None:
        """The value of the first header named `name`, whatever the case; None when there is none."""
        index = self._hindex
        if index is None:
            index = self._header_index()
        return index.get(name.lower())

    def _header_index(self) -> dict[str, str]:
        """Lower-cased name -> value of its first occurrence; built once, then cached."""
        index = self._hindex
        if index is None:
            # Built from the back, so that earlier headers overwrite later ones: the first one wins.
            index = {k.lower(): v for k, v in reversed(self.headers)}
            object.__setattr__(self, "_hindex", index)
        return index  # type: ignore[no-any-return]

    def json_body(self) -> Any:
        """The body as a JSON value when it is a JSON object or array (``{``/``[`` first), else
        ``jsonpath.MISSING``; parsed once, then cached. Callers must not change what it returns."""
        doc = self._doc
        if doc is _UNSET:
            doc = _parse_body(self.body)
            object.__setattr__(self, "_doc", doc)
        return doc

    def parsed_body(self) -> Any:
        """json_body() where the body was parsed already (by a reader or a caller), else NOT_PARSED: for
        writers that would otherwise parse it a second time."""
        return self._doc

    def __getstate__(self) -> list[Any]:
        # The caches are left out: they are cheap to rebuild and the parse can be large.
        return [self.source, self.line, self.ts, self.method, self.path, self.headers, self.body, self.meta,
                self.response]

    def __setstate__(self, state: list[Any]) -> None:
        for name, value in zip(_STATE_FIELDS, state):
            object.__setattr__(self, name, value)
        object.__setattr__(self, "_doc", _UNSET)
        object.__setattr__(self, "_hindex", None)


_STATE_FIELDS = ("source", "line", "ts", "method", "path", "headers", "body", "meta", "response")


_WHITESPACE = b" \t\r\n"


def json_like(body: bytes) -> bool:
    """Whether a body may be a JSON object or array: its first byte, past the whitespace JSON allows before it."""
    head = body[:1]
    if head == b"{" or head == b"[":
        return True
    return bool(head) and head in _WHITESPACE and body.lstrip(_WHITESPACE)[:1] in (b"{", b"[")


def _parse_body(body: bytes) -> Any:
    if not json_like(body):
        return MISSING
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        import json

        try:
            return json.loads(body)
        except (ValueError, RecursionError):
            return MISSING


def _keep_doc(old: CapturedRequest, new: CapturedRequest) -> None:
    """`new` has the very body of `old` (the same bytes object): it takes over old's parse, if any."""
    if new.body is old.body and old._doc is not _UNSET:
        object.__setattr__(new, "_doc", old._doc)


@dataclass(frozen=True, slots=True)
class BadRecord:
    """A record a reader could not turn into a CapturedRequest; readers yield it and go on."""

    source: str
    line: int
    reason: str
