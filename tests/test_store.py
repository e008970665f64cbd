"""results.duckdb's column names can be written in SQL as they are, and an old file is upgraded."""
from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from harness.replay.leg import EVENT_SCHEMA, LEG_SCHEMA, RESOURCE_SCHEMA
from harness.scenario import scenario_from_dict
from harness.store import RunMeta, RunStore, upgrade_results
from harness.traffic.prepare import prepare_traffic
from replay_helpers import scenario_dict, write_capture


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


def test_redirects_recorded_without_a_kind_are_judged_by_todays_rule(tmp_path: Path) -> None:
    """Legs recorded before a 3xx had a kind of its own (its error_kind NULL) become http_3xx on upgrade, so a
    candidate that redirects is not PROMOTEd when its old run is judged again."""
    path = tmp_path / "results.duckdb"
    con = duckdb.connect(str(path))
    con.execute("create table requests (request_id varchar, order_idx bigint, warmup boolean)")
    con.execute("create table legs (" + ", ".join(f'"{f.name}" varchar' for f in LEG_SCHEMA) + ")")
    con.execute("insert into legs (order_idx, version, status_code, error_kind) values "
                "('0', 'candidate', '307', null), ('1', 'candidate', '200', null), ('2', 'candidate', '404', 'http_4xx')")
    con.close()
    assert "legs.error_kind http_3xx" in upgrade_results(path)
    con = duckdb.connect(str(path), read_only=True)
    assert con.execute("select order_idx, error_kind from legs order by 1").fetchall() == [
        ("0", "http_3xx"), ("1", None), ("2", "http_4xx")]
    con.close()
    assert "legs.error_kind http_3xx" not in upgrade_results(path)  # once


def _store_of(tmp_path: Path, n: int) -> RunStore:
    """A run's results.duckdb with `n` requests (order_idx 0..n-1, captured ids c0..) and no legs yet."""
    capture = write_capture(tmp_path / "c.jsonl", [
        {"ts": 1_700_000_000 + i, "method": "POST", "path": "/p", "headers": {}, "body": {"i": i}, "request_id": f"c{i}"}
        for i in range(n)])
    s = scenario_from_dict(scenario_dict(capture, "http://127.0.0.1:1", "http://127.0.0.1:2"))
    p = prepare_traffic(s, tmp_path / ".work")
    store = RunStore(tmp_path / "results.duckdb")
    store.create(RunMeta("t", "t", "", "{}", "", "", "0", None, "", None, s.replay.mode, 1.0, p.segment_names),
                 p.schedule_path, p.skipped_path, p.bad_path)
    return store


def _legs(rows: list[dict[str, object]]) -> pa.Table:
    return pa.Table.from_pylist([{**{f.name: None for f in LEG_SCHEMA}, **r} for r in rows], schema=LEG_SCHEMA)


def test_unsent_requests_move_to_skipped_each_with_its_reason(tmp_path: Path) -> None:
    store = _store_of(tmp_path, 6)
    ids = dict(store.query("select order_idx, request_id from requests"))
    store.write_legs(_legs([{"request_id": ids[0], "order_idx": 0, "version": v, "error_kind": k}
                            for v, k in (("baseline", None), ("candidate", "harness_error"))]))
    store.add_event("skipped_in_flight_limit", ids[1])
    store.move_unsent_to_skipped("not sent", lost_shards=[(2, 1)], reasons_by_captured_id={"c2": "dropped: late"})
    reasons = dict(store.query("select source_line, reason from skipped"))
    assert reasons == {2: "in-flight limit reached (replay.max_in_flight)", 3: "dropped: late",
                       4: "lost: worker-1 stopped before finishing its shard", 5: "not sent",
                       6: "lost: worker-1 stopped before finishing its shard"}
    assert store.query("select order_idx from requests") == [(0,)]
    assert store.count_legs_by_harness_error() == (1, 2)
    assert (store.count_short_requests(2, 0), store.count_short_requests(2, 1)) == (0, 0)
    store.write_legs(_legs([{"request_id": ids[4], "order_idx": 4, "version": "baseline"}]))
    assert (store.count_short_requests(2, 0), store.count_short_requests(2, 1)) == (1, 0)
    assert store.event_details("skipped_in_flight_limit") == [ids[1]]
    store.close()


def test_shadow_legs_are_written_for_the_requests_both_versions_answered(tmp_path: Path) -> None:
    store = _store_of(tmp_path, 3)
    store.write_legs_by_captured_id(_legs([{"request_id": "c0", "version": "baseline"},
                                           {"request_id": "c0", "version": "candidate"},
                                           {"request_id": "c1", "version": "baseline"}]))
    ids = dict(store.query("select order_idx, request_id from requests"))
    assert sorted(store.query("select request_id, order_idx, version from legs")) == [
        (ids[0], 0, "baseline"), (ids[0], 0, "candidate")]
    store.close()
