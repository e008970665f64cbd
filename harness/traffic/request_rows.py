"""How many rows a request asks predictions for (its batch size), read from its body.

- kserve_v2 (and kserve_v2_grpc: the V2 JSON request, or ModelInferRequest in protobuf's JSON mapping, where
  an int64 may be written as a string): `inputs[].shape[0]`; every input must agree, else the request is
  malformed (no count);
- kserve_v1 / TF Serving / MLflow / json: `instances` (rows), `inputs` (a list of rows, or columnar: a
  mapping of name -> list), `dataframe_split.data`, `dataframe_records`.
None when the body says nothing about rows (not JSON, another shape, or a protocol without rows): such a
request's answer is then read without a row count to check it against."""
from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["request_row_count"]


def request_row_count(body: bytes | str | None, protocol: str) -> int | None:
    if not body or protocol == "openai":
        return None
    try:
        doc = orjson.loads(body)  # once per request of the capture: several times faster than json
    except orjson.JSONDecodeError:
        try:
            doc = json.loads(body)  # what orjson refuses (NaN, UTF-16 bodies, ...)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
    if not isinstance(doc, dict):
        return None
    if protocol in ("kserve_v2", "kserve_v2_grpc"):
        return _v2_rows(doc)
    return _list_rows(doc)


def _v2_rows(doc: dict[str, Any]) -> int | None:
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        return None
    firsts = set()
    for i in inputs:
        shape = i.get("shape") if isinstance(i, dict) else None
        if not isinstance(shape, list) or not shape or isinstance(shape[0], bool):
            return None
        first = shape[0]
        if isinstance(first, str) and first.isdigit():
            first = int(first)
        if not isinstance(first, int):
            return None
        firsts.add(first)
    return firsts.pop() if len(firsts) == 1 else None


def _list_rows(doc: dict[str, Any]) -> int | None:
    for key in ("instances", "dataframe_records"):
        if isinstance(doc.get(key), list):
            return len(doc[key])
    split = doc.get("dataframe_split")
    if isinstance(split, dict) and isinstance(split.get("data"), list):
        return len(split["data"])
    inputs = doc.get("inputs")
    if isinstance(inputs, list):
        return len(inputs)
    if isinstance(inputs, dict):  # columnar: every named input has one entry per row
        lengths = {len(v) for v in inputs.values() if isinstance(v, list)}
        return lengths.pop() if len(lengths) == 1 else None
    return None
