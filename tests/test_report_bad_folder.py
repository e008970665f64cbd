"""`harness report` on a folder whose results.duckdb is a DuckDB file but not a run's: one line naming the file
and what is missing, exit 4 (like a corrupt one), never an internal error whose traceback lands in that folder."""
from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from harness.cli import main


@pytest.mark.parametrize("tables, missing", [((), "runs"), (("runs",), "requests")])
def test_report_of_a_duckdb_file_that_no_run_wrote(capsys, tmp_path: Path, tables, missing) -> None:
    con = duckdb.connect(str(tmp_path / "results.duckdb"))
    for t in tables:
        con.execute(f"create table {t} (id varchar)")
    con.close()
    code = main(["report", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 4
    assert err == [f"harness: error: {tmp_path / 'results.duckdb'}: no {missing} table: not the results of a harness run"]
    assert not (tmp_path / "harness.log").exists()
