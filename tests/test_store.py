"""results.duckdb's column names can be written in SQL as they are, and an old file is upgraded."""
from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from harness.replay.leg import EVENT_SCHEMA, LEG_SCHEMA, RESOURCE_SCHEMA
from harness.store import upgrade_results


@pytest.mark.parametrize("schema", [LEG_SCHEMA, EVENT_SCHEMA, RESOURCE_SCHEMA], ids=["legs", "events", "resources"])
def test_every_column_is_selectable_unquoted(schema) -> None:
    con = duckdb.connect()
    for name in schema.names:
        # a reserved word (as `at` is) is a parser error here, and in every user's query
        assert con.execute(f'select {name} from (select 1 as "{name}")').fetchone() == (1,), name


def test_an_old_events_table_gets_its_current_column_name(tmp_path: Path) -> None:
    path = tmp_path / "results.duckdb"
    con = duckdb.connect(str(path))
    con.execute('create table events ("at" timestamptz, kind varchar, detail varchar)')
    con.execute("insert into events values ('2026-11-28 04:10:55+00', 'replay', '{}')")
    con.close()
    assert upgrade_results(path) == ["events.occurred_at"]
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("select kind from events order by occurred_at").fetchall() == [("replay",)]
    con.close()
    assert upgrade_results(path) == []


def test_an_old_legs_table_gets_the_row_columns_and_views(tmp_path: Path) -> None:
    """A run folder written before rows were read: the row columns arrive as NULL, batch_size too, and the
    row views exist (empty), so the run is judged and reported again."""
    path = tmp_path / "results.duckdb"
    con = duckdb.connect(str(path))
    con.execute("create table requests (request_id varchar, order_idx bigint, warmup boolean)")
    con.execute("insert into requests values ('r1', 0, false)")
    old = [f for f in LEG_SCHEMA if not f.name.startswith("row_")]
    con.execute("create table legs (" + ", ".join(f'"{f.name}" varchar' for f in old) + ")")
    con.execute("insert into legs (request_id, order_idx, version) values ('r1', '0', 'baseline')")
    con.close()
    added = upgrade_results(path)
    assert {"row_count", "row_labels", "row_scores", "row_invalid"} <= set(added)
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("select baseline_row_labels, batch_size from pairs").fetchall() == [(None, None)]
    assert con.execute("select count(*) from prediction_rows").fetchone() == (0,)
    assert con.execute("select count(*) from row_pairs").fetchone() == (0,)
    con.close()
