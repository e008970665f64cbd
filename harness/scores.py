"""`harness scores import RUN_DIR FILE`: review or business scores joined to a run by request id.

A row names its request by harness's `request_id` or by the capture's own id (`captured_request_id`: the
`request_id` field of the capture record); with the capture's id, a request replayed in
several loops gets the score in each. Errors name the first offending row (and its line in a CSV)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb

from .errors import TrafficError
from .store import open_results

__all__ = ["import_scores"]

_KEYS = ("request_id", "captured_request_id")


def import_scores(run_dir: Path, file: Path) -> int:
    if not file.exists():
        raise TrafficError(f"{file}: scores file not found")
    reader = "read_parquet" if file.suffix == ".parquet" else "read_csv_auto"
    con = open_results(run_dir / "results.duckdb", read_only=False)
    try:
        try:
            cols = {d[0] for d in con.execute(f"select * from {reader}(?) limit 0", [str(file)]).description}
        except duckdb.Error as exc:
            raise TrafficError(f"{file}: cannot read scores: {str(exc).splitlines()[0]}") from None
        key = next((k for k in _KEYS if k in cols), None)
        missing = sorted({"version", "score"} - cols) + ([] if key else ["request_id (or captured_request_id)"])
        if missing:
            raise TrafficError(f"{file}: missing column(s) {', '.join(missing)}; expected request_id or "
                               "captured_request_id, version, score")
        con.execute(f"""create temp table _scores as select row_number() over () as row_number,
                        {key}::varchar as key, version::varchar as version, score as raw_score
                        from {reader}(?)""", [str(file)])
        line = 1 if reader == "read_csv_auto" else None  # a CSV's header is its line 1
        _first_bad(con, file, line, "version not in ('baseline', 'candidate') or version is null",
                   "version {version!r} is not baseline or candidate")
        # NaN passed the cast and made the review gate's sizing crash `harness report` (exit 4)
        _first_bad(con, file, line, "try_cast(raw_score as double) is null "
                   "or not isfinite(try_cast(raw_score as double))", "score {raw_score!r} is not a number")
        column = "request_id" if key == "request_id" else "captured_request_id"
        _first_bad(con, file, line, f"not exists (select 1 from requests r where r.{column} = s.key)",
                   f"{key} {{key!r}} is not in this run")
        con.execute("delete from scores where source = ?", [str(file)])
        con.execute(f"""insert into scores select r.request_id, s.version, s.raw_score::double, ?
                        from _scores s join requests r on r.{column} = s.key""", [str(file)])
        return con.execute("select count(*) from scores where source = ?",  # type: ignore[index]
                           [str(file)]).fetchone()[0]
    finally:
        con.close()


def _first_bad(con: duckdb.DuckDBPyConnection, file: Path, header_lines: int | None, where: str,
               message: str) -> None:
    rows = con.execute(f"""select row_number, key, version, raw_score::varchar as raw_score, count(*) over ()
                           from _scores s where {where} order by row_number limit 1""").fetchall()
    if not rows:
        return
    row_number, key, version, raw_score, n = rows[0]
    fields: dict[str, Any] = {"key": key, "version": version, "raw_score": raw_score}
    where_text = f"row {row_number}" + (f" (line {row_number + header_lines})" if header_lines else "")
    more = f" ({n} such rows)" if n > 1 else ""
    raise TrafficError(f"{file}: {where_text}: {message.format(**fields)}{more}")
