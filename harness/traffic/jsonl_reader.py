"""JSONL capture reader, and the capture-record field mapping that CSV and Parquet reuse.

One JSON object per line (the "Capture record" of DESIGN.md)::

    {"ts": "2024-05-01T12:00:00.250+00:00", "method": "POST", "path": "/score?v=2",
     "headers": {"Content-Type": "application/json"}, "body": {"inputs": [1, 2]},
     "request_id": "r-1", "tenant": "acme"}

* ``ts``: ISO 8601 with a zone, or epoch seconds (number or numeric string); see timestamps.py.
* ``method``: upper-cased. ``path`` (or ``url``): starts with "/" and keeps the query string; an
  absolute ``http(s)://host/x?y`` is cut to ``/x?y`` and the host goes to ``meta["host"]``.
* ``headers``: an object of str -> str, or a list of ``[name, value]`` pairs (order kept).
  HTTP/2 pseudo-headers (``:authority`` ...) are dropped (``:authority`` becomes meta["host"]).
* ``body``: a JSON value -> ``json.dumps(value, separators=(",", ":"))`` as bytes; a string -> its
  UTF-8 bytes as is; null or absent -> ``b""``. ``body_b64``: base64 -> bytes (not both).
* every other top-level field goes into ``meta``.
* a gRPC call's record (``grpc_service``, ``grpc_method``, ``metadata``, ``message``) is read as the
  HTTP/2 request it is: see grpc_record.py.

Reading streams line by line (constant memory); ``.gz`` input is recognised by its magic bytes,
whatever the name. Blank lines are skipped. A bad line yields a BadRecord (1-based line number);
a gzip stream that is cut or corrupt yields one BadRecord after the last good line, then stops.
"""
from __future__ import annotations

import base64
import binascii
import gzip
import json
import math
import json.encoder as _json_encoder
import re
import zlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import orjson

from ..errors import TrafficError
from ..jsonpath import MISSING
from .grpc_record import grpc_to_http_fields, is_grpc_record
from .http_fields import TOKEN_RE, control_character
from .record import _UNSET, BadRecord, CapturedRequest, CapturedResponse
from .timestamps import TimestampError, parse_ts

__all__ = [
    "loads",
    "RecordError",
    "iter_jsonl",
    "open_capture",
    "iter_raw_lines",
    "request_from_fields",
    "split_target",
    "check_method",
    "clean_headers",
    "RECORD_FIELDS",
]

GZIP_MAGIC = b"\x1f\x8b"
_fromisoformat = datetime.fromisoformat
RECORD_FIELDS = frozenset({"ts", "method", "path", "url", "headers", "body", "body_b64"})
_BAD_TARGET_CHARS = re.compile(r"[\x00-\x20\x7f]")
_COMPACT_JSON = json.JSONEncoder(separators=(",", ":"))  # == json.dumps(v, separators=(",", ":"))


_LONG_DIGITS = re.compile(rb"\d{19}")


def loads(body: bytes, *, strict: bool = False) -> Any:
    """json.loads, through orjson (several times faster) where it can: what orjson refuses and the standard
    library accepts (UTF-16/32 bodies, ...) goes to json.loads, and so do bodies with a run of 19+ digits
    (orjson reads integers past 64 bits as floats; json.loads keeps them exact), so both agree.

    `strict` (a model's answer): NaN, Infinity and -Infinity, which Python's json writes and reads but JSON
    has not (RFC 8259), raise ValueError: a strict consumer (JSON.parse, Go, Java) rejects the whole answer."""
    constant = _no_constant if strict else None
    if _LONG_DIGITS.search(body):
        return json.loads(body, parse_constant=constant)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body, parse_constant=constant)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259 has no NaN or Infinity)")


def compact_json(value: Any) -> bytes:
    """A JSON value as compact bytes. orjson is several times faster than json, which stays as the
    fallback for what orjson refuses (integers beyond 64 bits, NaN)."""
    try:
        return orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError):
        return _COMPACT_JSON.encode(value).encode("utf-8")


# The standard library's C encoder, made once: json.dumps(v, separators=(",", ":"), ensure_ascii=False) makes an
# encoder per call, which was most of its cost on a small answer (about 6 us against 1 us). No circular check:
# what it encodes was parsed from JSON.
_COMPACT_TEXT = (_json_encoder.c_make_encoder(None, None, _json_encoder.encode_basestring, None, ":", ",", False,
                                              False, True)
                 if _json_encoder.c_make_encoder is not None else None)


def compact_text(value: Any) -> str:
    """json.dumps(value, separators=(",", ":"), ensure_ascii=False), the same text, faster."""
    if _COMPACT_TEXT is None:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return "".join(_COMPACT_TEXT(value, 0))


class RecordError(ValueError):
    """One record cannot be used; the message is the BadRecord reason."""


# --------------------------------------------------------------------------------------------
# files


def open_capture(path: Path) -> IO[bytes]:
    """Open a capture for binary reading; gzip is recognised by its magic bytes, not the name."""
    try:
        fh: IO[bytes] = open(path, "rb")
    except OSError as exc:
        raise TrafficError(f"{path}: cannot open capture: {exc.strerror or exc}") from None
    try:
        magic = fh.read(2)
        fh.seek(0)
    except OSError as exc:
        fh.close()
        raise TrafficError(f"{path}: cannot read capture: {exc.strerror or exc}") from None
    if magic == GZIP_MAGIC:
        fh.close()
        try:
            return gzip.GzipFile(filename=path, mode="rb")  # owns (and closes) its file
        except OSError as exc:
            raise TrafficError(f"{path}: cannot open capture: {exc.strerror or exc}") from None
    return fh


def iter_raw_lines(path: Path) -> Iterator[tuple[int, bytes] | BadRecord]:
    """``(line_number, raw_line)`` pairs, 1-based, newline kept; a broken gzip stream ends it.

    A file that is not gzip at all although it starts with the gzip magic is a TrafficError;
    a stream that breaks after some lines (cut download, disk full) yields one BadRecord
    naming the line where it broke, then stops.
    """
    source = str(path)
    fh = open_capture(path)
    lineno = 0
    try:
        lines = iter(fh)
        while True:
            try:
                raw = next(lines)
            except StopIteration:
                return
            except (EOFError, zlib.error, OSError) as exc:
                if lineno == 0 and isinstance(exc, gzip.BadGzipFile):
                    raise TrafficError(f"{source}: not a valid gzip file: {exc}") from None
                yield BadRecord(source, lineno + 1, f"truncated or corrupt stream after line {lineno}: {exc}")
                return
            lineno += 1
            yield lineno, raw
    finally:
        fh.close()


# --------------------------------------------------------------------------------------------
# field mapping shared by JSONL, CSV and Parquet


def split_target(target: object) -> tuple[str, str | None]:
    """``(path_with_query, host_or_None)`` from a captured path or absolute http(s) URL."""
    if not isinstance(target, str):
        raise RecordError(f"path must be a string, not {type(target).__name__}")
    if not target:
        raise RecordError("path is empty")
    host: str | None = None
    if target.startswith("/"):
        path = target
    else:
        low = target[:8].lower()
        if not (low.startswith("http://") or low.startswith("https://")):
            raise RecordError(f"path must start with '/' or be an http(s) URL: {target[:200]!r}")
        try:
            parts = urlsplit(target)
        except ValueError as exc:
            raise RecordError(f"invalid URL {target[:200]!r}: {exc}") from None
        host = parts.netloc or None
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if not path.startswith("/"):
            raise RecordError(f"invalid URL {target[:200]!r}")
    if _BAD_TARGET_CHARS.search(path):
        raise RecordError(f"path contains whitespace or control characters: {path[:200]!r}")
    if not _encodable(path):
        raise RecordError("path is not valid Unicode text (lone surrogate)")
    return path, host


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# Valid tokens seen so far (method and header names repeat on every record): a cache, bounded.
_GOOD_TOKENS: dict[str, str] = {}
_GOOD_TOKENS_MAX = 4096


def _token(value: str) -> bool:
    if value in _GOOD_TOKENS:
        return True
    if not TOKEN_RE.fullmatch(value):
        return False
    if len(_GOOD_TOKENS) < _GOOD_TOKENS_MAX:
        _GOOD_TOKENS[value] = value
    return True


# Valid methods seen so far -> their upper-case form (the JSONL fast path reads it): a cache, bounded.
_GOOD_METHODS: dict[str, str] = {}


def check_method(value: object) -> str:
    if not isinstance(value, str):
        raise RecordError(f"method must be a string, not {type(value).__name__}")
    if not _token(value):
        raise RecordError(f"invalid method {value[:50]!r}")
    upper = value.upper()
    if type(value) is str and len(_GOOD_METHODS) < _GOOD_TOKENS_MAX:
        _GOOD_METHODS[value] = upper
    return upper


def clean_headers(pairs: Iterable[tuple[object, object]]) -> tuple[tuple[tuple[str, str], ...], str | None]:
    """Validated headers in captured order, HTTP/2 pseudo-headers dropped; and ``:authority``."""
    out: list[tuple[str, str]] = []
    authority: str | None = None
    for name, value in pairs:
        if not isinstance(name, str) or not isinstance(value, str):
            raise RecordError("header names and values must be strings")
        if name.startswith(":"):
            if name.lower() == ":authority":
                authority = value
            continue
        if not _token(name):
            raise RecordError(f"invalid header name {name[:100]!r}")
        if (bad := control_character(value)) is not None:
            raise RecordError(f"header {name} has a control character in its value ({bad})")
        if not _encodable(value):
            raise RecordError(f"header {name} is not valid Unicode text (lone surrogate)")
        out.append((name, value))
    return tuple(out), authority


def _header_pairs(value: object) -> list[tuple[object, object]]:
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, (list, tuple)):
        pairs: list[tuple[object, object]] = []
        for item in value:
            if isinstance(item, (list, tuple)) and len(item) == 2:
                pairs.append((item[0], item[1]))
            elif isinstance(item, dict) and set(item) >= {"name", "value"}:
                pairs.append((item["name"], item["value"]))
            else:
                raise RecordError("headers list items must be [name, value] pairs")
        return pairs
    raise RecordError(f"headers must be an object or a list of [name, value] pairs, not {type(value).__name__}")


def _body(fields: Mapping[str, Any]) -> bytes:
    body = fields.get("body")
    body_b64 = fields.get("body_b64")
    if body is not None and body_b64 is not None:
        raise RecordError("both body and body_b64 are given")
    if body_b64 is not None:
        if isinstance(body_b64, (bytes, bytearray)):
            body_b64 = bytes(body_b64).decode("ascii", "replace")
        if not isinstance(body_b64, str):
            raise RecordError(f"body_b64 must be a string, not {type(body_b64).__name__}")
        try:
            return base64.b64decode(body_b64.strip(), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RecordError(f"body_b64 is not valid base64: {exc}") from None
    if body is None:
        return b""
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    if isinstance(body, str):
        try:
            return body.encode("utf-8")
        except UnicodeEncodeError:
            raise RecordError("body is not valid Unicode text (lone surrogate)") from None
    try:
        return compact_json(body)
    except (TypeError, ValueError, RecursionError) as exc:
        raise RecordError(f"body cannot be written as JSON: {exc}") from None


def request_from_fields(
    fields: Mapping[str, Any],
    source: str,
    line: int,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> CapturedRequest:
    """A CapturedRequest from capture-record fields; raises RecordError with the reason.

    A field whose value is None counts as absent. ``extra_headers`` (CSV/Parquet ``header.*``
    columns) come after the ``headers`` field.
    """
    if not fields:
        raise RecordError("empty record")
    if is_grpc_record(fields):
        try:
            fields = grpc_to_http_fields(fields)
        except ValueError as exc:
            raise RecordError(str(exc)) from None
    for name in ("ts", "method"):
        if fields.get(name) is None:
            raise RecordError(f"missing field {name!r}")
    target = fields.get("path")
    if target is None:
        target = fields.get("url")
    if target is None:
        raise RecordError("missing field 'path' (or 'url')")
    try:
        ts = parse_ts(fields["ts"])
    except TimestampError as exc:
        raise RecordError(str(exc)) from None
    method = check_method(fields["method"])
    path, url_host = split_target(target)
    raw_headers = fields.get("headers")
    pairs = [] if raw_headers is None else _header_pairs(raw_headers)
    pairs.extend(extra_headers)
    headers, authority = clean_headers(pairs)
    body = _body(fields)

    meta = {k: v for k, v in fields.items() if k not in RECORD_FIELDS}
    if fields.get("path") is not None and fields.get("url") is not None:
        meta["url"] = fields["url"]
    host = url_host or authority
    if host is not None and "host" not in meta:
        meta["host"] = host
    return CapturedRequest(
        source=source, line=line, ts=ts, method=method, path=path,
        headers=headers, body=body, meta=meta, response=_production(meta),
    )


def _production(meta: Mapping[str, Any]) -> CapturedResponse | None:
    """The production answer a record carries (``production_status``, ``production_body``: what
    `harness capture` and `harness traffic convert` write) as the production reference."""
    status = meta.get("production_status")
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        return None
    answer = meta.get("production_body")
    body = b"" if answer is None else answer.encode("utf-8") if isinstance(answer, str) else compact_json(answer)
    return CapturedResponse(status=status, body=body)


# --------------------------------------------------------------------------------------------
# JSONL


def _parse_line(raw: bytes, source: str, lineno: int) -> CapturedRequest | BadRecord:
    obj = _load_record(raw)
    if isinstance(obj, _Reason):
        return BadRecord(source, lineno, obj)
    if not isinstance(obj, dict):
        return BadRecord(source, lineno, f"a record must be a JSON object, not {type(obj).__name__}")
    try:
        return request_from_fields(obj, source, lineno)
    except RecordError as exc:
        return BadRecord(source, lineno, str(exc))


def _fast_record(obj: dict[str, Any], source: str, lineno: int) -> CapturedRequest | None:
    """The common record, built with a few whole-field checks; None sends it to request_from_fields.

    Takes only what the general path surely accepts and maps the same way: a string ``path``
    starting with "/" that is plain printable ASCII without spaces (no ``url``); a known-good method;
    ``headers`` absent or an object whose names are all known-good tokens and whose values are all
    strings of printable ASCII (so no pseudo-header, line break, NUL or lone surrogate); ``body``
    absent, an object or an array (its parsed value becomes the request's json_body(): the line was
    parsed by orjson, so orjson writes and reads it back unchanged), or a string; no ``body_b64``.
    Anything else, valid or not, goes the general way, which also words the errors.
    """
    if "url" in obj or "body_b64" in obj:
        return None
    path = obj.get("path")
    if type(path) is not str or path[:1] != "/" or not path.isascii() or not path.isprintable() or " " in path:
        return None
    method = obj.get("method")
    if type(method) is not str:
        return None
    method = _GOOD_METHODS.get(method)
    if method is None:
        return None
    ts = obj.get("ts")
    if type(ts) is str:
        # ISO 8601 text with a zone, as parse_ts reads it. A string that fromisoformat takes as it is
        # has no surrounding space (strip() changes nothing) and, when it carries a zone, has a time
        # part, so it is not epoch seconds: parse_ts would give the same. The rest goes the general way.
        try:
            dt = _fromisoformat(ts)
        except ValueError:
            return None
        if dt.tzinfo is None:
            return None
        try:
            when = dt.timestamp()  # fromisoformat's zones are fixed offsets: utcoffset() is never None
        except (OverflowError, ValueError, OSError):
            return None
    else:
        if ts is None:
            return None
        try:
            when = parse_ts(ts)
        except TimestampError:
            return None
    raw_headers = obj.get("headers")
    if raw_headers is None:
        headers: tuple[tuple[str, str], ...] = ()
    elif type(raw_headers) is dict:
        if not raw_headers.keys() <= _GOOD_TOKENS.keys():
            return None
        try:
            values = "".join(raw_headers.values())
        except TypeError:
            return None
        if not (values.isascii() and values.isprintable()):
            return None
        headers = tuple(raw_headers.items())
    else:
        return None
    value = obj.get("body")
    doc: Any = MISSING
    if value is None:
        body = b""
    elif type(value) is dict or type(value) is list:
        try:
            body = orjson.dumps(value)
        except orjson.JSONEncodeError:
            return None
        doc = value
    elif type(value) is str:
        try:
            body = value.encode("utf-8")
        except UnicodeEncodeError:
            return None
        doc = _UNSET  # parsed when asked
    else:
        return None
    meta = {} if obj.keys() <= RECORD_FIELDS else {k: v for k, v in obj.items() if k not in RECORD_FIELDS}
    response = _production(meta) if "production_status" in meta else None
    return CapturedRequest(source, lineno, when, method, path, headers, body, meta, response, doc)


class _Reason(str):
    """Why a line is not JSON (a str subclass, so that a JSON string record stays distinguishable)."""


def _load_record(raw: bytes) -> Any:
    """The line's JSON value, or a _Reason. orjson is the fast path; the json module explains failures."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _Reason(f"invalid UTF-8 at byte {exc.start}")
    try:
        return json.loads(text, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        return _Reason(f"invalid JSON: {exc.msg} at column {exc.colno}")
    except (ValueError, RecursionError) as exc:  # int digit limit, absurd nesting
        return _Reason(f"invalid JSON: {exc}")


def _finite_float(text: str) -> float:
    """A number beyond a double (1e400) would be replayed as null: the record is bad, and says which number."""
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"the number {text[:40]} is beyond a double and cannot be replayed as captured (a JSON "
                         "string, or the body as body_b64, keeps it)")
    return value


def iter_jsonl(path: Path) -> Iterator[CapturedRequest | BadRecord]:
    """Records of a JSONL (or gzip-compressed JSONL) capture, in file order."""
    source = str(path)
    loads, decode_error, fast, parse_line = orjson.loads, orjson.JSONDecodeError, _fast_record, _parse_line
    for item in iter_raw_lines(path):  # a broken gzip stream ends the capture there
        if type(item) is not tuple:
            yield item
            return
        lineno, raw = item
        # Fast path: orjson takes the line as it is (JSON allows the trailing newline); a line it
        # refuses (blank, BOM, not JSON) takes the general path below, which words the reason.
        try:
            obj = loads(raw)
        except decode_error:
            pass
        else:
            if type(obj) is dict:
                req = fast(obj, source, lineno)
                if req is None:
                    try:
                        req = request_from_fields(obj, source, lineno)
                    except RecordError as exc:
                        yield BadRecord(source, lineno, str(exc))
                        continue
                yield req
                continue
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            continue
        yield parse_line(raw, source, lineno)
