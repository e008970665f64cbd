"""`harness traffic convert FILE --to jsonl|parquet`: any capture into the capture record format.

Round trips are faithful: a body is written as a JSON value only where reading that value back gives the
very same bytes, otherwise as the text it was (or as body_b64 when it is not UTF-8), so JSONL -> Parquet ->
JSONL keeps every body byte for byte; metadata fields stay fields (one Parquet column each).
Secrets are masked as they are before a replay (traffic/redaction.py) unless keep_secrets is set: a
converted capture is a new copy, and copies of credentials are how they leak.
Bad records are reported on standard error with their lines and left out."""
from __future__ import annotations

import base64
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import TrafficError
from ..jsonpath import MISSING
from .grpc_record import grpc_record_fields
from .jsonl_reader import compact_json, loads
from .readers import detect_format, iter_records, record_place
from .record import BadRecord, CapturedRequest
from .redaction import PARSE, Redactor

__all__ = ["convert_capture", "to_capture_record"]

_BATCH = 10_000
_FIELDS = ("ts", "method", "path", "headers", "body", "body_b64")


def to_capture_record(req: CapturedRequest, grpc_form: bool = True) -> dict[str, Any]:
    """The record of one request. A gRPC call (traffic/grpc_record.py) is written in the gRPC form where
    `grpc_form` (JSONL), else in its HTTP form with grpc_service and grpc_method as fields (Parquet: one
    schema for every row); the reader takes either."""
    rec: dict[str, Any] = {"ts": iso_utc(req.ts), "method": req.method,
                           "path": req.path, "headers": _headers(req.headers)}
    if grpc_form and req.method == "POST" and "grpc_method" in req.meta:
        grpc = _grpc_record(req, rec["ts"])
        if grpc is not None:
            return grpc
    if req.body:
        try:
            text = req.body.decode("utf-8")
        except UnicodeDecodeError:
            rec["body_b64"] = base64.b64encode(req.body).decode()
        else:
            rec["body"] = _body_value(text, req.body, req.parsed_body())
    return _with_meta(rec, req)


# the last whole second formatted, (seconds, "YYYY-MM-DDTHH:MM:SS"), replaced whole: threads may share it
_second: list[tuple[float, str]] = [(math.nan, "")]


def iso_utc(ts: float) -> str:
    """datetime.fromtimestamp(ts, timezone.utc).isoformat(), the same text: the date and time of day are
    formatted once a second (a capture's records come in time order), the microseconds rounded as
    fromtimestamp rounds them (half to even, carried into the second)."""
    frac, whole = math.modf(ts)
    us = round(frac * 1e6)
    if us >= 1_000_000:
        us -= 1_000_000
        whole += 1.0
    elif us < 0:
        us += 1_000_000
        whole -= 1.0
    second, text = _second[0]
    if second != whole:
        text = datetime.fromtimestamp(whole, timezone.utc).isoformat()[:-6]
        _second[0] = (whole, text)
    return f"{text}.{us:06d}+00:00" if us else f"{text}+00:00"


def _grpc_record(req: CapturedRequest, ts: str) -> dict[str, Any] | None:
    body: Any = None
    if req.body:
        try:
            body = json.loads(req.body)
        except ValueError:
            return None  # a message that is not JSON is kept byte for byte in the HTTP form
        if not isinstance(body, dict):
            return None
    grpc = grpc_record_fields(req.meta, req.path, _headers(req.headers), body)
    if grpc is None:
        return None
    rec: dict[str, Any] = {"ts": ts, **grpc}
    return _with_meta(rec, req)


def _with_meta(rec: dict[str, Any], req: CapturedRequest) -> dict[str, Any]:
    """The record's own fields first; metadata never overwrites them."""
    for k, v in req.meta.items():
        if k not in rec:
            rec[k] = v
    if req.response is not None:
        rec["production_status"] = req.response.status
    return rec


def _body_value(text: str, raw: bytes, parsed: Any = PARSE) -> Any:
    """The body as a JSON value where a reader turns that value back into exactly `raw`, else as text.
    `parsed`: the body's JSON value where it was parsed already (MISSING: not a JSON object or array)."""
    if parsed is PARSE:
        try:
            value = loads(raw)
        except ValueError:
            return text
    elif parsed is MISSING:
        return text
    else:
        value = parsed
    if isinstance(value, (dict, list)):
        try:
            if compact_json(value) == raw:
                return value
        except (TypeError, ValueError):
            pass
    return text


def _headers(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in headers:
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out


def convert_capture(path: Path, to: str, fmt: str | None = None, output: str | None = None,
                    keep_secrets: bool = False) -> Path | None:
    fmt = detect_format(path, fmt)
    redact = (lambda req: req) if keep_secrets else Redactor().request_and_answer

    def records() -> Iterator[dict[str, Any]]:
        return _records(path, fmt, redact, grpc_form=to == "jsonl")

    if output == "-":
        if to == "parquet":
            raise TrafficError("parquet cannot be written to standard output; give -o FILE")
        _write_jsonl(records(), sys.stdout)
        return None
    out = Path(output) if output else path.with_name(_stem(path) + (".jsonl" if to == "jsonl" else ".parquet"))
    if out.resolve() == path.resolve():
        raise TrafficError(f"{out}: the output would overwrite the input; give -o")
    tmp = out.with_name(out.name + ".partial")
    try:
        if to == "jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                _write_jsonl(records(), f)
        else:
            _write_parquet(records, tmp)
        tmp.replace(out)
    except OSError as exc:
        raise TrafficError(f"{out}: cannot write: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _stem(path: Path) -> str:
    name = path.name
    for suffix in (".gz",):
        name = name.removesuffix(suffix)
    return name.rsplit(".", 1)[0]


def _records(path: Path, fmt: str, redact: Callable[[CapturedRequest], CapturedRequest], grpc_form: bool = True
             ) -> Iterator[dict[str, Any]]:
    for item in iter_records(path, fmt):
        if isinstance(item, BadRecord):
            print(f"{record_place(item.source, fmt, item.line)}: skipped bad record: {item.reason}", file=sys.stderr)
            continue
        yield to_capture_record(redact(item), grpc_form)


def _write_jsonl(records: Iterator[dict[str, Any]], f: TextIO) -> None:
    for rec in records:
        f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")


def _write_parquet(records: Callable[[], Iterator[dict[str, Any]]], out: Path) -> None:
    """Two passes over the capture: the first finds the metadata fields and their types (a Parquet file
    has one schema), the second writes. Memory stays at one batch."""
    meta_types: dict[str, pa.DataType] = {}
    for rec in records():
        for k, v in rec.items():
            if k not in _FIELDS:
                meta_types[k] = _widen(meta_types.get(k), v)
    schema = pa.schema([("ts", pa.string()), ("method", pa.string()), ("path", pa.string()),
                        ("headers", pa.string()), ("body", pa.string()), ("body_b64", pa.string())]
                       + [(k, t if t != pa.null() else pa.string()) for k, t in meta_types.items()])
    json_columns = {k for k, t in meta_types.items() if t == pa.string()}
    writer = pq.ParquetWriter(out, schema)
    batch: list[dict[str, Any]] = []
    try:
        for rec in records():
            body = rec.get("body")
            row = {k: rec.get(k) for k in meta_types}
            for k in json_columns:
                if row[k] is not None and not isinstance(row[k], str):
                    row[k] = json.dumps(row[k], ensure_ascii=False, separators=(",", ":"))
            row.update(ts=rec["ts"], method=rec["method"], path=rec["path"], headers=json.dumps(rec["headers"]),
                       body=None if body is None else body if isinstance(body, str)
                       else compact_json(body).decode("utf-8"),
                       body_b64=rec.get("body_b64"))
            batch.append(row)
            if len(batch) >= _BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                batch.clear()
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=schema))
    finally:
        writer.close()


def _widen(seen: pa.DataType | None, value: Any) -> pa.DataType:
    """The column type that holds every value seen so far: bool, int64, float64, else text (other
    values, lists and objects as JSON text)."""
    if value is None:
        return seen or pa.null()
    kind = (pa.bool_() if isinstance(value, bool) else pa.int64() if isinstance(value, int)
            else pa.float64() if isinstance(value, float) else pa.string())
    if seen is None or seen == pa.null() or seen == kind:
        return kind
    if {seen, kind} == {pa.int64(), pa.float64()}:
        return pa.float64()
    return pa.string()
