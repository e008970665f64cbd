"""SageMaker Data Capture reader: the JSONL files an endpoint with data capture writes to S3.

One JSON object per line::

    {"captureData": {"endpointInput": {"observedContentType": "application/json", "mode": "INPUT",
                                       "data": "{\\"instances\\": [1, 2]}", "encoding": "JSON"},
                     "endpointOutput": {"observedContentType": "application/json", "mode": "OUTPUT",
                                        "data": "{\\"predictions\\": [0.1]}", "encoding": "JSON"}},
     "eventMetadata": {"eventId": "b7d...", "inferenceTime": "2026-11-02T14:03:11Z",
                       "inferenceId": "optional", "customAttributes": ["tenant=acme"]},
     "eventVersion": "0"}

* the request is ``POST /invocations`` (the SageMaker runtime's one route) with Content-Type the
  observed content type and the input's data as its body: ``encoding`` JSON and CSV are text,
  BASE64 is decoded;
* ``inferenceTime`` is ``ts``; ``eventId`` is the ``request_id``, ``inferenceId`` kept as metadata,
  ``customAttributes`` (the ``X-Amzn-SageMaker-Custom-Attributes`` header) is sent as that header;
* the output, when captured, is the production response (status 200: SageMaker captures only
  successful invocations).

A line that is not such an object, or whose data cannot be decoded, is a BadRecord.
"""
from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from .jsonl_reader import iter_raw_lines
from .record import BadRecord, CapturedRequest, CapturedResponse
from .timestamps import TimestampError, parse_ts

__all__ = ["iter_sagemaker", "is_sagemaker_record"]

_ENCODINGS = ("JSON", "CSV", "BASE64")


def is_sagemaker_record(line: bytes) -> bool:
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(obj, dict) and isinstance(obj.get("captureData"), dict)


def iter_sagemaker(path: Path) -> Iterator[CapturedRequest | BadRecord]:
    source = str(path)
    for item in iter_raw_lines(path):
        if isinstance(item, BadRecord):
            yield item
            return
        lineno, raw = item
        if not raw.strip():
            continue
        try:
            yield _record(raw, source, lineno)
        except ValueError as exc:
            yield BadRecord(source, lineno, str(exc))


def _record(raw: bytes, source: str, lineno: int) -> CapturedRequest:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc}") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("captureData"), dict):
        raise ValueError("not a SageMaker Data Capture record (no captureData object)")
    data = obj["captureData"]
    meta_in = obj.get("eventMetadata")
    if not isinstance(meta_in, dict):
        raise ValueError("eventMetadata is missing or not an object")
    try:
        ts = parse_ts(meta_in.get("inferenceTime"))
    except TimestampError as exc:
        raise ValueError(f"eventMetadata.inferenceTime: {exc}") from None
    inp = data.get("endpointInput")
    if not isinstance(inp, dict):
        raise ValueError("captureData.endpointInput is missing or not an object")
    body, ctype = _payload(inp, "endpointInput")
    headers: list[tuple[str, str]] = []
    if ctype:
        headers.append(("Content-Type", ctype))
    attrs = meta_in.get("customAttributes")
    if isinstance(attrs, list) and attrs:
        headers.append(("X-Amzn-SageMaker-Custom-Attributes", ",".join(str(a) for a in attrs)))
    elif isinstance(attrs, str) and attrs:
        headers.append(("X-Amzn-SageMaker-Custom-Attributes", attrs))
    meta: dict[str, Any] = {"capture_format": "sagemaker", "event_version": obj.get("eventVersion")}
    if meta_in.get("eventId") is not None:
        meta["request_id"] = str(meta_in["eventId"])
    if meta_in.get("inferenceId") is not None:
        meta["inference_id"] = str(meta_in["inferenceId"])
    response = None
    out = data.get("endpointOutput")
    if isinstance(out, dict):
        out_body, out_type = _payload(out, "endpointOutput")
        response = CapturedResponse(200, (("Content-Type", out_type),) if out_type else (), out_body)
        meta["production_status"] = 200
    return CapturedRequest(source, lineno, ts, "POST", "/invocations", tuple(headers), body, meta, response)


def _payload(part: dict[str, Any], where: str) -> tuple[bytes, str | None]:
    encoding = str(part.get("encoding", "JSON")).upper()
    if encoding not in _ENCODINGS:
        raise ValueError(f"captureData.{where}.encoding {part.get('encoding')!r}: expected one of {', '.join(_ENCODINGS)}")
    value = part.get("data", "")
    if not isinstance(value, str):
        raise ValueError(f"captureData.{where}.data must be a string")
    ctype = part.get("observedContentType")
    if encoding == "BASE64":
        try:
            return base64.b64decode(value, validate=True), ctype if isinstance(ctype, str) else None
        except (binascii.Error, ValueError):
            raise ValueError(f"captureData.{where}.data is not valid base64") from None
    return value.encode("utf-8"), ctype if isinstance(ctype, str) else None
