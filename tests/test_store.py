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
