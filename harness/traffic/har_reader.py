"""HAR 1.2 capture reader (browser DevTools exports, mitmproxy exports).

Each ``log.entries[i]`` becomes one CapturedRequest with ``line = i + 1`` (the 1-based entry number,
which messages call "entry N": a HAR file is one JSON document, not lines):

* ``ts`` from ``startedDateTime`` (ISO 8601 with offset, "Z", millis or micros).
* ``method``; ``path`` + query and ``meta["host"]`` from ``request.url``; the ``Host`` header,
  else ``:authority``, overrides the URL's host in ``meta["host"]``.
* ``headers`` in captured order, HTTP/2 and HTTP/3 pseudo-headers (``:authority``, ``:method``,
  ``:path``, ``:scheme``) dropped.
* body from ``postData.text`` (UTF-8; base64 when ``postData.encoding == "base64"``); a
  ``postData`` with ``params`` and no text gives an urlencoded body built from the params.
* ``response.status == 0`` (the browser never got an answer) is still a request: kept, with
  ``meta["har_failed"] = True`` and no response. Otherwise ``response`` is a CapturedResponse
  (status, headers, body from ``content.text``, base64-decoded when ``content.encoding`` says so);
  a response that cannot be read leaves the request as it is, with ``meta["har_response_error"]``.
* meta also gets ``http_version``, ``har_time_ms`` (entry time), ``har_page`` (pageref) and
  ``har_resource_type`` (Chrome's ``_resourceType``) when present.

A HAR is one JSON document, so the file is read whole with ``json.loads`` (HAR exports are
small; memory is proportional to the file). A UTF-8 byte-order mark is tolerated.
**Truncated HAR: TrafficError.** A HAR cut in the middle is not valid JSON and is refused as a
whole ("not valid JSON ... truncated?"), no entries are yielded: a HAR is written in one go by
the browser or mitmproxy, so a cut one is a broken export to redo, not a stream to salvage.
A file without ``log.entries`` (a list) is also a TrafficError. A bad single entry is a BadRecord.
"""
from __future__ import annotations

import base64
import binascii
import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from ..errors import TrafficError
from ..numbers import finite_number
from .jsonl_reader import RecordError, check_method, clean_headers, open_capture, split_target
from .record import BadRecord, CapturedRequest, CapturedResponse
from .timestamps import TimestampError, parse_ts

__all__ = ["iter_har"]


def _load(path: Path) -> list[Any]:
    source = str(path)
    fh = open_capture(path)
    try:
        raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:  # gzip: cut or corrupt stream
        raise TrafficError(f"{source}: cannot read HAR: {exc}") from None
    finally:
        fh.close()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TrafficError(f"{source}: HAR is not UTF-8 text (byte {exc.start})") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (truncated?)" if exc.pos >= len(text.rstrip()) else ""
        raise TrafficError(
            f"{source}: HAR is not valid JSON{hint}: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (ValueError, RecursionError) as exc:
        raise TrafficError(f"{source}: HAR is not valid JSON: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("log"), dict):
        raise TrafficError(f"{source}: not a HAR file: no 'log' object at the top level")
    entries = doc["log"].get("entries")
    if not isinstance(entries, list):
        raise TrafficError(f"{source}: not a HAR file: 'log.entries' is missing or not a list")
    return entries


def _har_headers(value: object, where: str) -> list[tuple[object, object]]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise RecordError(f"{where}.headers must be a list")
    pairs: list[tuple[object, object]] = []
    for h in value:
        if not isinstance(h, dict) or "name" not in h or "value" not in h:
            raise RecordError(f"{where}.headers items must be {{name, value}} objects")
        pairs.append((h["name"], h["value"]))
    return pairs


def _text_bytes(text: object, encoding: object, where: str) -> bytes:
    if text is None:
        return b""
    if not isinstance(text, str):
        raise RecordError(f"{where}.text must be a string")
    if isinstance(encoding, str) and encoding.lower() == "base64":
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RecordError(f"{where}.text is not valid base64: {exc}") from None
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise RecordError(f"{where}.text is not valid Unicode text") from None


def _post_body(post: object) -> bytes:
    if post is None:
        return b""
    if not isinstance(post, dict):
        raise RecordError("request.postData must be an object")
    text = post.get("text")
    params = post.get("params")
    if (text is None or text == "") and params:
        if not isinstance(params, list) or not all(
            isinstance(p, dict) and isinstance(p.get("name"), str) for p in params
        ):
            raise RecordError("request.postData.params must be a list of {name, value}")
        pairs = []
        for p in params:
            value = p.get("value", "")
            if not isinstance(value, str):
                raise RecordError("request.postData.params values must be strings")
            pairs.append((p["name"], value))
        try:
            return urlencode(pairs).encode("ascii")
        except UnicodeEncodeError:
            raise RecordError("request.postData.params are not valid Unicode text") from None
    return _text_bytes(text, post.get("encoding"), "request.postData")


def _response(resp: object) -> tuple[CapturedResponse | None, bool]:
    """(response or None, failed-in-browser)."""
    if resp is None:
        return None, False
    if not isinstance(resp, dict):
        raise RecordError("response must be an object")
    status = resp.get("status")
    if isinstance(status, bool) or not isinstance(status, int) or not 0 <= status <= 999:
        raise RecordError(f"response.status must be an HTTP status or 0, not {status!r}")
    if status == 0:
        return None, True
    headers, _ = clean_headers(_har_headers(resp.get("headers"), "response"))
    content = resp.get("content")
    body = b""
    if isinstance(content, dict):
        body = _text_bytes(content.get("text"), content.get("encoding"), "response.content")
    return CapturedResponse(status=status, headers=headers, body=body), False


def _entry(entry: object, source: str, index: int) -> CapturedRequest:
    if not isinstance(entry, dict):
        raise RecordError("entry is not an object")
    req = entry.get("request")
    if not isinstance(req, dict):
        raise RecordError("entry has no 'request' object")
    if entry.get("startedDateTime") is None:
        raise RecordError("missing field 'startedDateTime'")
    try:
        ts = parse_ts(entry["startedDateTime"])
    except TimestampError as exc:
        raise RecordError(f"startedDateTime: {exc}") from None
    if req.get("method") is None:
        raise RecordError("missing field 'request.method'")
    if req.get("url") is None:
        raise RecordError("missing field 'request.url'")
    method = check_method(req["method"])
    path, url_host = split_target(req["url"])
    headers, authority = clean_headers(_har_headers(req.get("headers"), "request"))
    body = _post_body(req.get("postData"))
    meta: dict[str, Any] = {}
    try:
        response, failed = _response(entry.get("response"))
    except RecordError as exc:  # the request is still good; only the reference answer is lost
        response, failed = None, False
        meta["har_response_error"] = str(exc)

    host = next((v for k, v in headers if k.lower() == "host"), None) or authority or url_host
    if host:
        meta["host"] = host
    if isinstance(req.get("httpVersion"), str) and req["httpVersion"]:
        meta["http_version"] = req["httpVersion"]
    har_time = finite_number(entry.get("time"))
    if har_time is not None:
        meta["har_time_ms"] = har_time
    if isinstance(entry.get("pageref"), str):
        meta["har_page"] = entry["pageref"]
    if isinstance(entry.get("_resourceType"), str):
        meta["har_resource_type"] = entry["_resourceType"]
    if failed:
        meta["har_failed"] = True
    return CapturedRequest(
        source=source, line=index, ts=ts, method=method, path=path,
        headers=headers, body=body, meta=meta, response=response,
    )


def iter_har(path: Path) -> Iterator[CapturedRequest | BadRecord]:
    """Requests of a HAR file in entry order; ``line`` is the 1-based entry number."""
    source = str(path)
    entries = _load(path)
    for index, entry in enumerate(entries):
        try:
            yield _entry(entry, source, index + 1)
        except RecordError as exc:
            yield BadRecord(source, index + 1, str(exc))
