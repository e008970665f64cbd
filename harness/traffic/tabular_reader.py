"""CSV and Parquet capture readers: columns map to the capture-record fields of jsonl_reader.

Columns:

* ``ts``, ``method``, ``path`` (or ``url``): required; a file without them is a TrafficError. gRPC calls:
  ``grpc_service`` and ``grpc_method`` instead of method and path, ``metadata`` and ``message`` (JSON text)
  instead of headers and body (traffic/grpc_record.py).
* ``headers``: a JSON object string (CSV), or a MAP / STRUCT / JSON string / list of
  ``{name, value}`` (Parquet). Columns named ``header.<Name>`` add the header ``<Name>`` (after
  ``headers``, in column order); an empty or null cell adds nothing.
* ``body`` (text, or BLOB in Parquet: bytes as is), ``body_b64`` (base64).
* every other column goes into ``meta`` under its column name (Parquet dates and times as ISO
  text, decimals as float, UUIDs as text, intervals as seconds: plain JSON-friendly values).

An empty CSV cell and a Parquet null both mean "absent".

CSV is streamed with the ``csv`` module over the raw lines of the file (gzip recognised by its
magic bytes), so memory stays constant. ``line`` is the physical line where the record starts
(the header is line 1; a quoted field may span several lines). Fields up to 256 MiB are
allowed (the ``csv`` module's process-wide ``field_size_limit`` is raised to that, never lowered).

Parquet is read through DuckDB, ``fetchmany`` in batches of 10,000 rows on one DuckDB thread
(with several threads DuckDB reads ahead and memory grew with the file: 2M rows of 300 bytes
took 430 MB RSS, against 190 MB on one thread, flat); ``line`` is the row index + 1.
"""
from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

from ..errors import TrafficError
from .jsonl_reader import RECORD_FIELDS, RecordError, iter_raw_lines, request_from_fields
from .record import BadRecord, CapturedRequest

__all__ = ["iter_csv", "iter_parquet", "PARQUET_BATCH_ROWS"]

PARQUET_BATCH_ROWS = 10_000
_CSV_FIELD_LIMIT = 256 * 1024 * 1024
_HEADER_PREFIX = "header."
_UNDECODABLE = re.compile("[\udc80-\udcff]")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _plain(value: Any) -> Any:
    """Meta values as JSON-friendly scalars: Parquet gives datetime, Decimal, UUID, timedelta."""
    if isinstance(value, (datetime, date, time)):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID):
        return str(value)
    return value


def _check_columns(source: str, kind: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise TrafficError(f"{source}: {kind} has the column {name!r} twice")
        seen.add(name)
        if name.startswith(_HEADER_PREFIX) and not _TOKEN.fullmatch(name[len(_HEADER_PREFIX):]):
            raise TrafficError(f"{source}: {kind} column {name!r} does not name a valid header")
    grpc = {"grpc_service", "grpc_method"} <= seen  # gRPC calls (traffic/grpc_record.py): no method or path
    missing = [c for c in ("ts", "method") if c not in seen and not (grpc and c == "method")]
    if "path" not in seen and "url" not in seen and not grpc:
        missing.append("path")
    if missing:
        shown = ", ".join(repr(n) for n in names[:20])
        raise TrafficError(
            f"{source}: {kind} has no column {' / '.join(repr(m) for m in missing)} "
            f"(columns: {shown}); expected ts, method, path, headers or header.*, body or body_b64"
        )


def _row_request(
    names: list[str], values: list[Any] | tuple[Any, ...], source: str, line: int
) -> CapturedRequest | BadRecord:
    fields: dict[str, Any] = {}
    extra: list[tuple[str, str]] = []
    for name, value in zip(names, values):
        if value is None or (isinstance(value, str) and value == ""):
            continue
        if name.startswith(_HEADER_PREFIX):
            header_name = name[len(_HEADER_PREFIX):]
            if not isinstance(value, str):
                value = str(value)
            extra.append((header_name, value))
        elif name in RECORD_FIELDS:
            fields[name] = value
        else:
            fields[name] = _plain(value)
    try:
        headers = fields.get("headers")
        if isinstance(headers, (str, bytes)):
            try:
                fields["headers"] = json.loads(headers)
            except (ValueError, RecursionError) as exc:
                raise RecordError(f"headers is not a JSON object: {exc}") from None
        elif isinstance(headers, dict):  # Parquet STRUCT/MAP: a null member is no header
            fields["headers"] = {k: v for k, v in headers.items() if v is not None}
        ts = fields.get("ts")
        if isinstance(ts, Decimal):
            fields["ts"] = float(ts)
        return request_from_fields(fields, source, line, extra)
    except RecordError as exc:
        return BadRecord(source, line, str(exc))


# --------------------------------------------------------------------------------------------
# CSV


def iter_csv(path: Path) -> Iterator[CapturedRequest | BadRecord]:
    """Records of a CSV capture (plain or gzip), in file order."""
    source = str(path)
    if csv.field_size_limit() < _CSV_FIELD_LIMIT:
        csv.field_size_limit(_CSV_FIELD_LIMIT)
    stream_end: list[BadRecord] = []

    def text_lines() -> Iterator[str]:
        for item in iter_raw_lines(path):
            if isinstance(item, BadRecord):
                stream_end.append(item)
                return
            lineno, raw = item
            if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            # surrogateescape keeps undecodable bytes visible so that one bad row is a BadRecord
            yield raw.decode("utf-8", "surrogateescape")

    reader = csv.reader(text_lines(), strict=True)
    names: list[str] | None = None
    consumed = 0  # physical lines consumed before the current row
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            start = consumed + 1
            if reader.line_num <= consumed:  # no progress: cannot go on safely
                raise TrafficError(f"{source}:{start}: unreadable CSV: {exc}") from None
            consumed = reader.line_num
            if names is None:
                raise TrafficError(f"{source}:{start}: unreadable CSV header: {exc}") from None
            yield BadRecord(source, start, f"invalid CSV: {exc}")
            continue
        start = consumed + 1
        consumed = reader.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if names is None:
            if any(_UNDECODABLE.search(c) for c in row):
                raise TrafficError(f"{source}:{start}: CSV header is not valid UTF-8")
            names = [c.strip() for c in row]
            _check_columns(source, "CSV header", names)
            continue
        if any(_UNDECODABLE.search(c) for c in row):
            yield BadRecord(source, start, "invalid UTF-8")
            continue
        if len(row) != len(names):
            yield BadRecord(source, start, f"expected {len(names)} fields, got {len(row)}")
            continue
        yield _row_request(names, row, source, start)
    yield from stream_end


# --------------------------------------------------------------------------------------------
# Parquet


_DB: Any = None  # one private in-memory DuckDB; each read gets its own cursor (connection)


def _duckdb_cursor() -> Any:
    """A cursor of a private in-memory database on one thread (a new database costs ~20 ms)."""
    import duckdb  # heavy; only when a Parquet capture is read

    global _DB
    if _DB is None:
        db = duckdb.connect()
        db.execute("SET threads = 1")
        _DB = db
    return _DB.cursor()


def iter_parquet(path: Path) -> Iterator[CapturedRequest | BadRecord]:
    """Records of a Parquet capture, in file order, streamed through DuckDB."""
    import duckdb  # heavy; only when a Parquet capture is read

    source = str(path)
    con = _duckdb_cursor()
    try:
        try:
            con.execute("SELECT * FROM read_parquet(?)", [str(path)])
            description = con.description or []
        except (duckdb.Error, RuntimeError) as exc:  # RuntimeError: undecodable names (nanobind)
            raise TrafficError(f"{source}: not a readable Parquet file: {_first_line(exc)}") from None
        names = [str(d[0]) for d in description]
        _check_columns(source, "Parquet file", names)
        row_no = 0
        while True:
            try:
                rows = con.fetchmany(PARQUET_BATCH_ROWS)
            except (duckdb.Error, RuntimeError, ValueError, OverflowError) as exc:
                raise TrafficError(
                    f"{source}: Parquet unreadable after row {row_no}: {_first_line(exc)}"
                ) from None
            if not rows:
                break
            for values in rows:
                row_no += 1
                yield _row_request(names, values, source, row_no)
    finally:
        con.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
