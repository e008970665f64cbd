"""`harness query RUN_DIR SQL`: read-only SQL over a run's results.duckdb."""
from __future__ import annotations

import csv
import io
import json
import math
from decimal import Decimal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from .errors import UsageError
from .store import open_results

__all__ = ["QueryResult", "run_query", "format_result"]


@dataclass(frozen=True)
class QueryResult:
    columns: list[str]
    rows: list[tuple[Any, ...]]


def run_query(run_dir: Path, sql: str) -> QueryResult:
    con = open_results(run_dir / "results.duckdb", read_only=True)
    try:
        cur = con.execute(sql)
        if cur is None:  # DuckDB returns no cursor for text without a statement ("", a comment, ";")
            raise UsageError("query failed: no SQL statement in the query")
        if cur.description is None:
            return QueryResult([], [])
        return QueryResult([d[0] for d in cur.description], cur.fetchall())
    except duckdb.Error as exc:
        raise UsageError(f"query failed: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


def format_result(result: QueryResult, fmt: str) -> str:
    if fmt == "json":
        rows = [dict(zip(result.columns, (_finite(v) for v in r))) for r in result.rows]
        return json.dumps(rows, default=_json_value, indent=1, allow_nan=False) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(result.columns)
        w.writerows(result.rows)
        return buf.getvalue()
    cells = [[_cell(v) for v in r] for r in result.rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(result.columns)]
    line = lambda vals: " | ".join(v.ljust(w) for v, w in zip(vals, widths)).rstrip()  # noqa: E731
    out = [line(result.columns), "-+-".join("-" * w for w in widths)] + [line(r) for r in cells]
    out.append(f"({len(result.rows)} row{'s' if len(result.rows) != 1 else ''})")
    return "\n".join(out) + "\n"


def _finite(v: Any) -> Any:
    """NaN and the infinities as null: JSON has none of them (Python would write NaN, which parsers refuse)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


def _json_value(v: Any) -> Any:
    if isinstance(v, Decimal):
        return float(v)
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _cell(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e6 else f"{v:.0f}"
    s = str(v)
    return s if len(s) <= 80 else s[:77] + "..."
