"""`harness traffic convert FILE --to jsonl|parquet`: any capture into the capture record format.

Bodies that are valid UTF-8 JSON are written as JSON values, other UTF-8 text as strings, anything else
as body_b64. Nothing is redacted here: a conversion is a copy of the capture, kept where it was.
Bad records are reported on standard error with their lines and left out."""
from __future__ import annotations

import base64
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, TextIO

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import TrafficError
from .readers import detect_format, iter_records
from .record import BadRecord, CapturedRequest

__all__ = ["convert_capture", "to_capture_record"]

_BATCH = 10_000


def to_capture_record(req: CapturedRequest) -> dict[str, Any]:
    rec: dict[str, Any] = {"ts": datetime.fromtimestamp(req.ts, timezone.utc).isoformat(), "method": req.method,
                           "path": req.path, "headers": _headers(req.headers)}
    if req.body:
        try:
            text = req.body.decode("utf-8")
            try:
                rec["body"] = json.loads(text)
            except ValueError:
                rec["body"] = text
        except UnicodeDecodeError:
            rec["body_b64"] = base64.b64encode(req.body).decode()
    for k, v in req.meta.items():
        if k not in rec:
            rec[k] = v
    if req.response is not None:
        rec["production_status"] = req.response.status
    return rec


def _headers(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in headers:
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out


def convert_capture(path: Path, to: str, fmt: str | None = None, output: str | None = None) -> Path | None:
    fmt = detect_format(path, fmt)
    if output == "-":
        if to == "parquet":
            raise TrafficError("parquet cannot be written to standard output; give -o FILE")
        _write_jsonl(_records(path, fmt), sys.stdout)
        return None
    out = Path(output) if output else path.with_name(_stem(path) + (".jsonl" if to == "jsonl" else ".parquet"))
    if out.resolve() == path.resolve():
        raise TrafficError(f"{out}: the output would overwrite the input; give -o")
    tmp = out.with_name(out.name + ".partial")
    try:
        if to == "jsonl":
            with open(tmp, "w", encoding="utf-8") as f:
                _write_jsonl(_records(path, fmt), f)
        else:
            _write_parquet(_records(path, fmt), tmp)
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


def _records(path: Path, fmt: str) -> Iterator[dict[str, Any]]:
    for item in iter_records(path, fmt):
        if isinstance(item, BadRecord):
            print(f"{item.source}:{item.line}: skipped bad record: {item.reason}", file=sys.stderr)
            continue
        yield to_capture_record(item)


def _write_jsonl(records: Iterator[dict[str, Any]], f: TextIO) -> None:
    for rec in records:
        f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")


_PARQUET_SCHEMA = pa.schema([("ts", pa.string()), ("method", pa.string()), ("path", pa.string()),
                             ("headers", pa.string()), ("body", pa.string()), ("body_b64", pa.string()),
                             ("meta", pa.string())])


def _write_parquet(records: Iterator[dict[str, Any]], out: Path) -> None:
    writer = pq.ParquetWriter(out, _PARQUET_SCHEMA)
    batch: list[dict[str, Any]] = []
    try:
        for rec in records:
            body = rec.get("body")
            meta = {k: v for k, v in rec.items() if k not in ("ts", "method", "path", "headers", "body", "body_b64")}
            batch.append({"ts": rec["ts"], "method": rec["method"], "path": rec["path"],
                          "headers": json.dumps(rec["headers"]),
                          "body": None if body is None else body if isinstance(body, str) else json.dumps(body),
                          "body_b64": rec.get("body_b64"), "meta": json.dumps(meta) if meta else None})
            if len(batch) >= _BATCH:
                writer.write_table(pa.Table.from_pylist(batch, schema=_PARQUET_SCHEMA))
                batch.clear()
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=_PARQUET_SCHEMA))
    finally:
        writer.close()
