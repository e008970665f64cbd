"""`harness scores import RUN_DIR FILE`: review or business scores joined to a run by request id."""
from __future__ import annotations

from pathlib import Path

import duckdb

from .errors import TrafficError
from .store import open_results

__all__ = ["import_scores"]


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
        missing = {"request_id", "version", "score"} - cols
        if missing:
            raise TrafficError(f"{file}: missing column(s) {', '.join(sorted(missing))}; expected request_id, version, score")
        bad = con.execute(f"""select count(*) from {reader}(?) where version not in ('baseline', 'candidate')
                              or try_cast(score as double) is null""", [str(file)]).fetchone()[0]  # type: ignore[index]
        if bad:
            raise TrafficError(f"{file}: {bad} row(s) with a version other than baseline/candidate or a non-numeric score")
        unknown = con.execute(f"""select count(*) from {reader}(?) s where not exists
                                  (select 1 from requests r where r.request_id = s.request_id::varchar)""",
                              [str(file)]).fetchone()[0]  # type: ignore[index]
        if unknown:
            raise TrafficError(f"{file}: {unknown} row(s) name a request_id that is not in this run")
        con.execute("delete from scores where source = ?", [str(file)])
        con.execute(f"""insert into scores select request_id::varchar, version::varchar, score::double, ?
                        from {reader}(?)""", [str(file), str(file)])
        return con.execute("select count(*) from scores where source = ?", [str(file)]).fetchone()[0]  # type: ignore[index]
    finally:
        con.close()
