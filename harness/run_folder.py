"""A run folder for notebooks: `harness.open_run(RUN_DIR)` gives its DuckDB connection, its summary and
its per-segment tables as pandas DataFrames.

    import harness

    with harness.open_run("reports/fraud-model-v2-20261128T041055Z") as run:
        run.verdict                      # 'BLOCK'
        run.gates[run.gates.status == "fail"]
        run.segments                     # per segment: n, p95 and rates of both versions
        run.sql("select route, avg(latency_ms) from legs join requests using (request_id) group by 1")

Read-only: nothing here changes the folder (`harness report RUN_DIR` judges it again).
"""
from __future__ import annotations

import json
from pathlib import Path
from types import TracebackType
from typing import Any

import duckdb
import pandas as pd

from .errors import StoreError, UsageError
from .store import open_results

__all__ = ["RunFolder", "open_run"]

# summary.json's gate results, flattened: the interval's two ends get a column each
_GATE_COLUMNS = ["name", "metric", "aggregation", "segment", "status", "severity", "baseline", "candidate", "observed",
                 "ci_lower", "ci_upper", "threshold", "threshold_text", "n", "p_value", "effect", "reason"]


class RunFolder:
    """One run folder, opened read-only. Close it (or use `with`) to release results.duckdb."""

    def __init__(self, path: Path, con: duckdb.DuckDBPyConnection, summary: dict[str, Any]) -> None:
        self.path = path
        self.con = con
        self.summary = summary

    @property
    def verdict(self) -> str:
        return str(self.summary["verdict"])

    @property
    def gates(self) -> pd.DataFrame:
        """Every gate result, overall (segment None) and per segment, as the verdict saw them."""
        rows = []
        for g in self.summary.get("gates", []):
            ci = g.get("ci") or [None, None]
            rows.append({**{k: g.get(k) for k in _GATE_COLUMNS}, "ci_lower": ci[0], "ci_upper": ci[1]})
        return pd.DataFrame(rows, columns=_GATE_COLUMNS)

    @property
    def segments(self) -> pd.DataFrame:
        """One row per segment value: its request count and both versions' p95 latency and rates."""
        return pd.DataFrame(self.summary.get("segments") or [])

    @property
    def worst_segments(self) -> pd.DataFrame:
        """Where the candidate is worse, ranked (the report's ranked table)."""
        return pd.DataFrame(self.summary.get("worst_segments") or [])

    def table(self, name: str) -> pd.DataFrame:
        """A whole table or view of results.duckdb: requests, legs, pairs, resources, events, skipped, ..."""
        tables = {r[0] for r in self.con.execute("select table_name from information_schema.tables").fetchall()}
        if name not in tables:
            raise UsageError(f"{self.path / 'results.duckdb'}: no table {name!r} (tables: {', '.join(sorted(tables))})")
        return self.con.execute(f'select * from "{name}"').df()

    def sql(self, query: str, params: list[Any] | None = None) -> pd.DataFrame:
        """Any read-only SQL against results.duckdb, as a DataFrame."""
        try:
            return self.con.execute(query, params or []).df()
        except duckdb.Error as exc:
            raise UsageError(f"{self.path / 'results.duckdb'}: query failed: {exc}") from None

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<RunFolder {self.path} verdict={self.summary.get('verdict')}>"


def open_run(run_dir: str | Path) -> RunFolder:
    """Opens a run folder written by `harness run` (or `harness demo`) for reading."""
    path = Path(run_dir)
    summary_path, db_path = path / "summary.json", path / "results.duckdb"
    for needed in (summary_path, db_path):
        if not needed.is_file():
            raise UsageError(f"{needed}: not found ({path} is not a run folder)")
    try:
        summary = json.loads(summary_path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise StoreError(f"{summary_path}: not valid JSON: {exc}") from None
    return RunFolder(path, open_results(db_path, read_only=True), summary)
