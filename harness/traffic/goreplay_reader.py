"""GoReplay ``.gor`` capture reader (``gor --input-raw :80 --output-file requests.gor``).

Format (https://github.com/buger/goreplay/wiki/Saving-and-Replaying-from-file, kept in the repo
as docs/Saving-and-Replaying-from-file.md; checked against ``protocol.go``, ``output_file.go``
and ``input_file.go`` of github.com/buger/goreplay): each payload is written as its data
followed by the separator ``"\\n🐵🙈🙉\\n"``; the data starts with one meta line

    <type> <id> <timestamp> [<latency>]\\n

then the raw HTTP message. ``type`` is 1 (request), 2 (the original response, captured with
``--input-raw-track-response``) or 3 (a response from a replay target); request and responses
share ``id``; ``timestamp`` is Unix nanoseconds of the request start (also on responses);
``latency`` (nanoseconds, 4th field, optional) is the round-trip time of a response.

How this reader maps it:

* a type-1 payload -> CapturedRequest; ``line`` = the payload index (1-based, empty payloads
  not counted); ``meta["request_id"]`` = the GoReplay id, ``meta["http_version"]``,
  ``meta["host"]`` (Host header, or the host of an absolute-form request target).
* HTTP messages may use CRLF or bare LF line endings. The body is the bytes after the blank line:
  de-chunked when ``Transfer-Encoding: chunked`` (then "chunked" is removed from the headers,
  since the body no longer is), cut to ``Content-Length`` when longer, and marked
  ``meta["body_truncated"] = True`` when shorter (a capture that lost packets). A request with
  neither header and only line breaks after the head has an empty body.
* a type-2 payload -> ``response`` (CapturedResponse) of the request with its id, and
  ``meta["response_latency_ms"]`` when it has a latency; type 3 -> ``meta["replayed_response_status"]``
  (and ``meta["replayed_latency_ms"]``).
* timestamps out of order are yielded as they come, in file order (sorting is a later stage).
* the last payload may lack the trailing separator; a separator line ending in CRLF (a file
  saved by a Windows editor) is accepted; ``.gor.gz`` (GoReplay's gzip output) is read too.
* a malformed meta line, request line, header or chunked body -> BadRecord with the payload index.

**Bounded matching.** A response may come many payloads after its request (or, rarely, before
it). Requests wait in a queue in file order until they have both their original and replayed
response, or until ``pending_limit`` (default 10,000) more payloads have been read, or the file
ends; at most ``pending_limit`` payloads are held, so memory is bounded whatever the file size.
The queue is emptied in order, so output stays in file order. A response whose request is not
found within that window is a BadRecord (the information would otherwise be lost silently),
except for the responses of a request that was itself a BadRecord.
"""
from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .jsonl_reader import RecordError, check_method, clean_headers, iter_raw_lines, split_target
from .record import BadRecord, CapturedRequest, CapturedResponse
from .timestamps import TimestampError, epoch_from_ns

__all__ = ["iter_gor", "PENDING_LIMIT", "PAYLOAD_SEPARATOR"]

PAYLOAD_SEPARATOR = "\n🐵🙈🙉\n".encode("utf-8")
PENDING_LIMIT = 10_000
_SEP_LINE = PAYLOAD_SEPARATOR[1:]
_SEP_LINE_CRLF = _SEP_LINE[:-1] + b"\r\n"
_SEP_BARE = _SEP_LINE[:-1]
_INT = re.compile(rb"[0-9]{1,20}")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_STATUS = re.compile(r"[0-9]{3}")


# --------------------------------------------------------------------------------------------
# one HTTP message


def _decode(line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        return line.decode("latin-1")


def _split_message(data: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
    """(start line, headers, raw body) of an HTTP/1 message with CRLF or LF line endings."""
    pos = 0
    start: str | None = None
    headers: list[tuple[str, str]] = []
    n = len(data)
    while pos < n:
        nl = data.find(b"\n", pos)
        end = n if nl < 0 else nl
        line = data[pos:end]
        pos = n if nl < 0 else nl + 1
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line:
            if start is None:
                continue  # blank lines before the start line are ignored (RFC 9112 2.2)
            return start, headers, data[pos:]
        text = _decode(line)
        if start is None:
            start = text
        elif text[0] in " \t" and headers:  # obsolete line folding
            name, value = headers[-1]
            headers[-1] = (name, f"{value} {text.strip()}")
        else:
            name, sep, value = text.partition(":")
            if not sep or not name or name != name.strip():
                raise RecordError(f"malformed header line {text[:100]!r}")
            headers.append((name, value.strip(" \t")))
    if start is None:
        raise RecordError("empty HTTP message")
    return start, headers, b""


def _dechunk(data: bytes) -> bytes:
    out = bytearray()
    pos = 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            raise RecordError("malformed chunked body: missing chunk size line")
        size_text = data[pos:nl].rstrip(b"\r").split(b";", 1)[0].strip()
        if not _HEX.fullmatch(size_text):
            raise RecordError(f"malformed chunked body: bad chunk size {size_text[:20]!r}")
        size = int(size_text, 16)
        pos = nl + 1
        if size == 0:
            return bytes(out)  # trailers, if any, are ignored
        if pos + size > len(data):
            raise RecordError("malformed chunked body: chunk runs past the end of the payload")
        out += data[pos:pos + size]
        pos += size
        if data.startswith(b"\r\n", pos):
            pos += 2
        elif data.startswith(b"\n", pos):
            pos += 1
        else:
            raise RecordError("malformed chunked body: chunk not followed by a line break")


def _header(headers: list[tuple[str, str]] | tuple[tuple[str, str], ...], name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name:
            return v
    return None


def _body(
    headers: list[tuple[str, str]], raw: bytes, meta: dict[str, Any], is_request: bool
) -> tuple[list[tuple[str, str]], bytes]:
    te = _header(headers, "transfer-encoding")
    codings = [c.strip().lower() for c in te.split(",")] if te is not None else []
    if codings and codings[-1] == "chunked":
        body = _dechunk(raw)
        rest = ", ".join(c for c in codings[:-1] if c)
        kept: list[tuple[str, str]] = []
        for k, v in headers:
            if k.lower() == "transfer-encoding":
                if rest:
                    kept.append((k, rest))
                continue
            kept.append((k, v))
        return kept, body
    cl = _header(headers, "content-length")
    if cl is not None:
        if not _INT.fullmatch(cl.strip().encode("latin-1", "replace")):
            raise RecordError(f"invalid Content-Length {cl[:30]!r}")
        length = int(cl.strip())
        if len(raw) < length:
            meta["body_truncated"] = True
            return headers, raw
        return headers, raw[:length]
    if is_request and not raw.strip(b"\r\n"):
        return headers, b""
    return headers, raw


def _parse_request(http: bytes, source: str, index: int, ts: float, gor_id: str) -> CapturedRequest:
    start, raw_headers, raw_body = _split_message(http)
    parts = start.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise RecordError(f"malformed request line {start[:100]!r}")
    method = check_method(parts[0])
    path, target_host = split_target(parts[1])
    meta: dict[str, Any] = {"request_id": gor_id, "http_version": parts[2]}
    body_headers, body = _body(raw_headers, raw_body, meta, is_request=True)
    headers, authority = clean_headers(body_headers)
    host = _header(headers, "host") or authority or target_host
    if host:
        meta["host"] = host
    return CapturedRequest(
        source=source, line=index, ts=ts, method=method, path=path,
        headers=headers, body=body, meta=meta,
    )


def _parse_response(http: bytes) -> CapturedResponse:
    start, raw_headers, raw_body = _split_message(http)
    parts = start.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not _STATUS.fullmatch(parts[1]):
        raise RecordError(f"malformed status line {start[:100]!r}")
    scratch: dict[str, Any] = {}
    try:
        body_headers, body = _body(raw_headers, raw_body, scratch, is_request=False)
    except RecordError:
        body_headers, body = raw_headers, raw_body  # a production response is kept as captured
    headers, _ = clean_headers(body_headers)
    return CapturedResponse(status=int(parts[1]), headers=headers, body=body)


# --------------------------------------------------------------------------------------------
# matching requests and responses, in file order, within a bounded window


class _Item:
    __slots__ = ("index", "gor_id", "request", "meta", "response", "replayed", "bad", "orphan",
                 "consumed")

    def __init__(self, index: int, gor_id: str | None = None) -> None:
        self.index = index
        self.gor_id = gor_id
        self.request: CapturedRequest | None = None
        self.meta: dict[str, Any] = {}
        self.response: CapturedResponse | None = None
        self.replayed = False
        self.bad: BadRecord | None = None
        self.orphan: tuple[int, CapturedResponse, float | None] | None = None
        self.consumed = False

    @property
    def done(self) -> bool:
        if self.request is not None:
            return self.response is not None and self.replayed
        return self.orphan is None or self.consumed


def _attach(item: _Item, kind: int, response: CapturedResponse, latency_ms: float | None) -> None:
    if kind == 2:
        item.response = response
        if latency_ms is not None:
            item.meta["response_latency_ms"] = latency_ms
    else:
        item.replayed = True
        item.meta["replayed_response_status"] = response.status
        if latency_ms is not None:
            item.meta["replayed_latency_ms"] = latency_ms


class _Matcher:
    def __init__(self, source: str, limit: int) -> None:
        self.source = source
        self.limit = max(1, limit)
        self.queue: deque[_Item] = deque()
        self.requests: dict[str, _Item] = {}
        self.orphans: dict[tuple[str, int], _Item] = {}
        self.bad_ids: OrderedDict[str, None] = OrderedDict()

    def add(self, index: int, payload: bytes) -> None:
        nl = payload.find(b"\n")
        meta_line = (payload if nl < 0 else payload[:nl]).rstrip(b"\r")
        http = b"" if nl < 0 else payload[nl + 1:]
        fields = meta_line.split()
        if (
            len(fields) not in (3, 4)
            or fields[0] not in (b"1", b"2", b"3")
            or not all(_INT.fullmatch(f) for f in fields[2:])
        ):
            self._bad(index, None, f"malformed GoReplay meta line {meta_line[:100]!r} "
                               "(expected '<type 1|2|3> <id> <timestamp-ns> [<latency-ns>]')")
            return
        kind = int(fields[0])
        gor_id = _decode(fields[1])
        latency_ms = int(fields[3]) / 1e6 if len(fields) == 4 else None
        if kind == 1:
            try:
                ts = epoch_from_ns(int(fields[2]))
                request = _parse_request(http, self.source, index, ts, gor_id)
            except (RecordError, TimestampError) as exc:
                self._bad(index, gor_id, str(exc))
                return
            item = _Item(index, gor_id)
            item.request = request
            item.meta = dict(request.meta)
            for k in (2, 3):
                orphan = self.orphans.pop((gor_id, k), None)
                if orphan is not None and orphan.orphan is not None:
                    orphan.consumed = True
                    _attach(item, k, orphan.orphan[1], orphan.orphan[2])
            self.requests[gor_id] = item
            self.queue.append(item)
            return
        try:
            response = _parse_response(http)
        except RecordError as exc:
            what = "original" if kind == 2 else "replayed"
            self._bad(index, None, f"{what} response for request id {gor_id}: {exc}")
            return
        target = self.requests.get(gor_id)
        if target is not None and (
            (kind == 2 and target.response is None) or (kind == 3 and not target.replayed)
        ):
            _attach(target, kind, response, latency_ms)
        elif gor_id in self.bad_ids:
            pass  # the request was already reported as a BadRecord
        else:
            item = _Item(index, gor_id)
            item.orphan = (kind, response, latency_ms)
            self.orphans[(gor_id, kind)] = item
            self.queue.append(item)

    def _bad(self, index: int, gor_id: str | None, reason: str) -> None:
        item = _Item(index, gor_id)
        item.bad = BadRecord(self.source, index, reason)
        self.queue.append(item)
        if gor_id is not None:
            self.bad_ids[gor_id] = None
            while len(self.bad_ids) > self.limit:
                self.bad_ids.popitem(last=False)

    def ready(self, current_index: int | None) -> Iterator[CapturedRequest | BadRecord]:
        """Emit the head of the queue while it is complete or out of the window (None: all)."""
        while self.queue:
            head = self.queue[0]
            if current_index is not None and not head.done and current_index - head.index < self.limit:
                return
            self.queue.popleft()
            if head.bad is not None:
                yield head.bad
            elif head.request is not None:
                if head.gor_id is not None and self.requests.get(head.gor_id) is head:
                    del self.requests[head.gor_id]
                r = head.request
                yield CapturedRequest(
                    source=r.source, line=r.line, ts=r.ts, method=r.method, path=r.path,
                    headers=r.headers, body=r.body, meta=head.meta, response=head.response,
                )
            elif head.orphan is not None and not head.consumed:
                kind = head.orphan[0]
                key = (head.gor_id or "", kind)
                if self.orphans.get(key) is head:
                    del self.orphans[key]
                what = "original" if kind == 2 else "replayed"
                yield BadRecord(
                    self.source, head.index,
                    f"{what} response for request id {head.gor_id} whose request is not within "
                    f"{self.limit} payloads",
                )


# --------------------------------------------------------------------------------------------
# payloads


def _payloads(path: Path) -> Iterator[tuple[bytes, bool] | BadRecord]:
    """(payload bytes, ended by a separator) in file order; a broken stream ends with a BadRecord."""
    buf: list[bytes] = []
    for item in iter_raw_lines(path):
        if isinstance(item, BadRecord):
            yield item  # the cut payload in buf is dropped
            return
        _, raw = item
        if raw == _SEP_LINE or raw == _SEP_LINE_CRLF or raw == _SEP_BARE:
            data = b"".join(buf)
            buf = []
            if raw == _SEP_LINE_CRLF and data.endswith(b"\r\n"):
                data = data[:-2]
            elif data.endswith(b"\n"):
                data = data[:-1]
            yield data, True
        else:
            buf.append(raw)
    if buf:
        yield b"".join(buf), False


def iter_gor(path: Path, pending_limit: int = PENDING_LIMIT) -> Iterator[CapturedRequest | BadRecord]:
    """Requests of a GoReplay file in file order, with their captured responses attached."""
    source = str(path)
    matcher = _Matcher(source, pending_limit)
    index = 0
    for item in _payloads(path):
        if isinstance(item, BadRecord):
            yield from matcher.ready(None)
            yield BadRecord(source, index + 1, f"GoReplay stream broken: {item.reason}")
            return
        payload, _ = item
        if not payload.strip():
            continue
        index += 1
        matcher.add(index, payload)
        yield from matcher.ready(index)
    yield from matcher.ready(None)
