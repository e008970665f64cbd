"""Capture readers: pick the format of a capture file and stream its records.

    detect_format(path, declared=None) -> "jsonl" | "csv" | "parquet" | "har" | "gor" | "mooncake" | "openai_log"
                                          | "sagemaker"
    iter_records(path, fmt=None, trace=None) -> Iterator[CapturedRequest | BadRecord]

LLM traces (mooncake, openai_log) are JSON lines too, so they are never guessed from the name: they
are declared (`format:`), and `trace` (TraceOptions) says how their records become requests.

Records come in FILE order (sorting by time is a later stage), in constant memory (HAR: the
file is one JSON document and is read whole; GoReplay: a bounded window of pending requests).
Every reader yields a BadRecord for one malformed record and goes on; a file that cannot be
read at all, or is not of its format, raises TrafficError naming the file and the reason.
Nothing else is raised for bad input.

``BadRecord.line`` / ``CapturedRequest.line``: 1-based line for JSONL and CSV (CSV: the
physical line where the record starts, the header is line 1), row index + 1 for Parquet,
1-based entry number for HAR, 1-based payload index for GoReplay, 1-based line for LLM traces.
Messages name it with `record_unit` ("line 3", "entry 3", "row 3", "payload 3").

Gzip-compressed JSONL, CSV, HAR and GoReplay files are recognised by their magic bytes. SageMaker Data
Capture files (JSONL) are recognised by their first record, or declared as format sagemaker.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from ..errors import TrafficError
from ..scenario import TraceOptions
from .goreplay_reader import iter_gor
from .har_reader import iter_har
from .jsonl_reader import iter_jsonl, iter_raw_lines
from .llm_trace_reader import iter_mooncake, iter_openai_log
from .record import BadRecord, CapturedRequest
from .sagemaker_reader import is_sagemaker_record, iter_sagemaker
from .tabular_reader import iter_csv, iter_parquet

__all__ = ["FORMATS", "PLATFORM_FORMATS", "detect_format", "iter_records", "record_place", "record_unit"]

# What a record's `line` counts in the formats that are not read line by line; every other format: "line".
_RECORD_UNITS = {"har": "entry", "parquet": "row", "gor": "payload"}


def record_unit(fmt: str) -> str:
    """The word for a record's `line` in messages: "line" would send a user to the wrong place in a HAR
    (one JSON document), Parquet or GoReplay file."""
    return _RECORD_UNITS.get(fmt, "line")


def record_place(source: str, fmt: str, line: int) -> str:
    """`FILE:LINE` (what editors jump to) for line formats; `FILE: entry N` and the like for the others."""
    unit = record_unit(fmt)
    return f"{source}:{line}" if unit == "line" else f"{source}: {unit} {line}"

FORMATS = ("jsonl", "csv", "parquet", "har", "gor", "mooncake", "openai_log")
_TRACE_FORMATS = {"mooncake": iter_mooncake, "openai_log": iter_openai_log}
# Platform captures in one of the formats above, told apart by their content or declared by name.
PLATFORM_FORMATS = ("sagemaker",)

_SUFFIXES: tuple[tuple[str, str], ...] = (
    (".jsonl", "jsonl"), (".jsonl.gz", "jsonl"), (".ndjson", "jsonl"), (".ndjson.gz", "jsonl"),
    (".csv", "csv"), (".csv.gz", "csv"),
    (".parquet", "parquet"), (".pq", "parquet"),
    (".har", "har"), (".har.gz", "har"),
    (".gor", "gor"), (".gor.gz", "gor"),
)

_READERS: dict[str, Callable[[Path], Iterator[CapturedRequest | BadRecord]]] = {
    "jsonl": iter_jsonl,
    "csv": iter_csv,
    "parquet": iter_parquet,
    "har": iter_har,
    "gor": iter_gor,
    "sagemaker": iter_sagemaker,
}


def detect_format(path: Path, declared: str | None = None) -> str:
    """The capture format: ``declared`` when given (checked), else from the file name."""
    if declared is not None:
        fmt = declared.strip().lower()
        if fmt not in FORMATS + PLATFORM_FORMATS:
            raise TrafficError(
                f"{path}: unknown capture format {declared!r}; expected one of {', '.join(FORMATS + PLATFORM_FORMATS)}"
            )
        return fmt
    name = Path(path).name.lower()
    for suffix, fmt in _SUFFIXES:
        if name.endswith(suffix):
            return fmt
    known = ", ".join(s for s, _ in _SUFFIXES)
    raise TrafficError(
        f"{path}: cannot tell the capture format from the file name (known endings: {known}); "
        f"declare it with format: one of {', '.join(FORMATS)}"
    )


def iter_records(path: Path, fmt: str | None = None,
                 trace: TraceOptions | None = None) -> Iterator[CapturedRequest | BadRecord]:
    """Stream the records of a capture in file order.

    The format and the file are checked now (TrafficError at the call); the records are read
    as the iterator is consumed.
    """
    path = Path(path)
    fmt = detect_format(path, fmt)
    if not path.exists():
        raise TrafficError(f"{path}: capture file not found")
    if not path.is_file():
        raise TrafficError(f"{path}: capture is not a regular file")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise TrafficError(f"{path}: cannot open capture: {exc.strerror or exc}") from None
    if fmt in _TRACE_FORMATS:
        return _TRACE_FORMATS[fmt](path, trace or TraceOptions())
    if fmt == "jsonl" and _first_line_is_sagemaker(path):
        fmt = "sagemaker"  # SageMaker Data Capture files are JSONL too: told apart by their first record
    return _READERS[fmt](path)


def _first_line_is_sagemaker(path: Path) -> bool:
    try:
        for item in iter_raw_lines(path):
            if isinstance(item, BadRecord):
                return False
            if item[1].strip():
                return is_sagemaker_record(item[1])
    except TrafficError:
        return False
    return False
