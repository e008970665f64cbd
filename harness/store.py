"""results.duckdb: the schema, the batched writer and the views.

Table and column names are a contract (DESIGN.md); columns may be added. The writer commits every
batch it is given, so a killed run loses at most what had not been flushed (the recorder flushes at
least once a second) and the file always opens.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import duckdb
import pyarrow as pa

from .error_kinds import HARNESS_ERROR
from .errors import StoreError
from .replay.leg import EVENT_SCHEMA, LEG_SCHEMA, RESOURCE_SCHEMA
from .scenario import RESERVED_COLUMNS

__all__ = ["RunStore", "RunMeta", "open_results", "analysed_legs", "upgrade_results", "RESERVED_COLUMNS", "event_details",
           "latest_event_detail", "count_skipped", "skipped_segment_values", "resource_sources_sampled"]

_LEG_SELECT = ", ".join(
    f"to_timestamp({f.name}) as {f.name}" if f.name in ("intended_at", "sent_at", "done_at") else f.name
    for f in LEG_SCHEMA)


@dataclass(frozen=True)
class RunMeta:
    run_id: str
    scenario: str
    scenario_sha256: str
    config_json: str
    capture_path: str
    capture_sha256: str
    harness_version: str
    git_commit: str | None
    baseline_url: str
    candidate_url: str | None
    mode: str
    speed: float
    segments: tuple[str, ...]


# DuckDB's default memory limit is 80 % of the machine; the judge holds its numpy columns beside it,
# so DuckDB gets a fixed share and spills the rest (to the system's temp folder: a run folder may be
# read-only).
ANALYSIS_MEMORY_LIMIT = "512MB"
RECORDER_MEMORY_LIMIT = "128MB"  # during a replay the recorder only appends (256 MB: +60 MB of replay RSS at 1 M pairs)


def _configure(con: duckdb.DuckDBPyConnection, memory_limit: str) -> None:
    con.execute(f"set memory_limit = '{memory_limit}'")
    spill = Path(tempfile.gettempdir()) / f"harness-duckdb-{os.getpid()}"
    con.execute(f"set temp_directory = '{str(spill).replace(chr(39), chr(39) * 2)}'")
    con.execute("set enable_progress_bar = false")


def analysed_legs(alias: str = "l") -> str:
    """FROM clause of the legs that are analysed (warm-up requests are sent but not analysed). An anti
    join on the warm-up order indexes, which are few: joining every leg to its request by its text id
    costs a hash table of all requests, seconds and hundreds of MB at 10 M pairs."""
    return (f"legs {alias} anti join (select order_idx from requests where warmup) _warm "
            f"on _warm.order_idx = {alias}.order_idx")


def open_results(path: Path, read_only: bool = True, memory_limit: str = ANALYSIS_MEMORY_LIMIT
                 ) -> duckdb.DuckDBPyConnection:
    if not path.exists():
        raise StoreError(f"{path}: no results.duckdb there")
    try:
        con = duckdb.connect(str(path), read_only=read_only)
        _configure(con, memory_limit)
        return con
    except duckdb.Error as exc:
        raise StoreError(f"{path}: cannot open: {exc}") from None


def event_details(con: duckdb.DuckDBPyConnection, kind: str) -> list[str]:
    """The detail of every event of this kind, in the order they were written."""
    return [d for (d,) in con.execute("select detail from events where kind = ?", [kind]).fetchall()]


def latest_event_detail(con: duckdb.DuckDBPyConnection, kind: str) -> str | None:
    row = con.execute("select detail from events where kind = ? order by occurred_at desc limit 1", [kind]).fetchone()
    return row[0] if row else None


def count_skipped(con: duckdb.DuckDBPyConnection, reason: str) -> int:
    row = con.execute("select count(*) from skipped where reason = ?", [reason]).fetchone()
    return int(row[0]) if row else 0


def skipped_segment_values(con: duckdb.DuckDBPyConnection, reason: str,
                           segments: Sequence[str]) -> tuple[list[str], list[tuple[Any, ...]]]:
    """(the segments `skipped` has, of those named; each skipped request's values of them, as text) for the
    requests skipped for `reason`."""
    cols = {c for (c,) in con.execute("select column_name from information_schema.columns "
                                      "where table_name = 'skipped'").fetchall()}
    seg_cols = [x for x in segments if x in cols]
    rows = con.execute(f"select {', '.join(f'{chr(34)}{c}{chr(34)}::varchar' for c in seg_cols) or '1'} from skipped "
                       "where reason = ?", [reason]).fetchall()
    return seg_cols, rows


def resource_sources_sampled(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int | None, bool, bool]]:
    """Per version: (version, the PID psutil sampled, whether Prometheus was sampled, whether GPU memory was)."""
    return con.execute("select version, max(pid) filter (where source = 'psutil'), bool_or(source = 'prometheus'), "
                       "bool_or(gpu_memory_mb is not null) from resources group by 1").fetchall()


class RunStore:
    """Owns the write connection of one run's results.duckdb. One writer at a time: during a replay
    only the recorder's sinks write (in a single-process replay from the store's writer process, which
    holds the file meanwhile: harness.store_child; otherwise from the recorder's native thread); the
    orchestrator writes before and after."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.con = self._connect()

    def _connect(self) -> duckdb.DuckDBPyConnection:
        try:
            con = duckdb.connect(str(self.path))
            _configure(con, RECORDER_MEMORY_LIMIT)
            return con
        except duckdb.Error as exc:
            raise StoreError(f"{self.path}: cannot open the results database for writing: {exc}") from None

    def close(self) -> None:
        self.con.close()

    def reopen(self) -> None:
        """The file again, after another process (the store's writer, harness.store_child) let it go."""
        self.con = self._connect()

    def create(self, meta: RunMeta, schedule: Path, skipped: Path, bad: Path) -> None:
        try:
            self._create(meta, schedule, skipped, bad)
        except duckdb.Error as exc:
            raise StoreError(f"{self.path}: cannot write the results database: {_first_line(exc)}") from None

    def _create(self, meta: RunMeta, schedule: Path, skipped: Path, bad: Path) -> None:
        # A segment named like a fixed column (route from path_template) is that column already.
        seg_cols = "".join(f', "seg__{n}" as "{n}"' for n in meta.segments if n not in RESERVED_COLUMNS)
        c = self.con
        c.execute("""create table runs (id varchar primary key, scenario varchar, started_at timestamptz,
            finished_at timestamptz, status varchar, mode varchar, speed double, scenario_sha256 varchar,
            config json, capture_path varchar, capture_sha256 varchar, harness_version varchar,
            git_commit varchar, baseline_url varchar, candidate_url varchar, segments json,
            status_reason varchar)""")
        c.execute("insert into runs values (?, ?, now(), null, 'running', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, null)",
                  [meta.run_id, meta.scenario, meta.mode, meta.speed, meta.scenario_sha256, meta.config_json,
                   meta.capture_path, meta.capture_sha256, meta.harness_version, meta.git_commit,
                   meta.baseline_url, meta.candidate_url, json.dumps(list(meta.segments))])
        c.execute(f"""create table requests as select request_id, order_idx, seq, loop, source_line, captured_at,
            offset_s, method, path, route {seg_cols}, request_bytes, warmup, headers_json,
            captured_request_id, production_status, batch_size from read_parquet(?) order by order_idx""", [str(schedule)])
        c.execute(f"""create table skipped as select source_line, captured_at, method, path, route, reason
            {seg_cols} from read_parquet(?)""", [str(skipped)])
        c.execute("create table bad_records as select source, line, reason from read_parquet(?)", [str(bad)])
        self._create_typed("legs", LEG_SCHEMA, _LEG_SELECT)
        self._create_typed("resources", RESOURCE_SCHEMA,
                           ", ".join("to_timestamp(sampled_at) as sampled_at" if f.name == "sampled_at" else f.name
                                     for f in RESOURCE_SCHEMA))
        self._create_typed("events", EVENT_SCHEMA, "to_timestamp(occurred_at) as occurred_at, kind, detail")
        c.execute("create table scores (request_id varchar, version varchar, score double, source varchar)")
        c.execute(PAIRS_VIEW)
        c.execute(PREDICTION_ROWS_VIEW)
        c.execute(ROW_PAIRS_VIEW)
        c.execute("checkpoint")

    def _create_typed(self, table: str, schema: pa.Schema, select: str) -> None:
        empty = schema.empty_table()  # noqa: F841 - read by DuckDB through the name
        self.con.execute(f"create table {table} as select {select} from empty")

    def recording(self, on: bool) -> None:
        """While a replay records (on), DuckDB works in the writing thread alone: its own worker threads
        (one per core) would take the cores the send loop needs on a shared machine."""
        self.con.execute("set threads = 1" if on else "reset threads")

    def sinks(self) -> dict[str, Callable[[pa.Table], None]]:
        """The recorder's sinks, by the table each writes."""
        return {"legs": self.write_legs, "events": self.write_events, "resources": self.write_resources}

    def write_legs(self, batch: pa.Table) -> None:
        self._insert("legs", batch, _LEG_SELECT)

    def write_resources(self, batch: pa.Table) -> None:
        self._insert("resources", batch, ", ".join(
            "to_timestamp(sampled_at)" if f.name == "sampled_at" else f.name for f in RESOURCE_SCHEMA))

    def write_events(self, batch: pa.Table) -> None:
        self._insert("events", batch, "to_timestamp(occurred_at), kind, detail")

    def write_missing(self, name: str, batch: pa.Table) -> None:
        """The rows of `batch` the table does not hold yet (legs by order index and version; events and
        resources row by row): a batch a writer process may have committed before it died is written once."""
        if name == "legs":
            self._insert("legs", batch, _LEG_SELECT, where=" where not exists (select 1 from legs l "
                         "where l.order_idx = _batch.order_idx and l.version = _batch.version)")
            return
        columns = RESOURCE_SCHEMA if name == "resources" else EVENT_SCHEMA
        stamp = "sampled_at" if name == "resources" else "occurred_at"
        select = ", ".join(f"to_timestamp({f.name})" if f.name == stamp else f.name for f in columns)
        self._insert(name, batch, select, where=f" except all select * from {name}")

    def _insert(self, table: str, batch: pa.Table, select: str, where: str = "") -> None:
        if batch.num_rows == 0:
            return
        # A cursor of its own: the recorder writes from a native thread while the run's connection may be
        # busy elsewhere, and a DuckDB connection refuses concurrent calls.
        cur = self.con.cursor()
        try:
            cur.register("_batch", batch)
            cur.execute(f"insert into {table} select {select} from _batch{where}")
        finally:
            cur.close()

    def finish(self, status: str, reason: str | None = None) -> None:
        try:
            self.con.execute("update runs set status = ?, status_reason = ?, finished_at = now()", [status, reason])
            self.con.execute("checkpoint")
        except duckdb.Error as exc:
            raise StoreError(f"{self.path}: cannot finish the results database: {_first_line(exc)} "
                             "(the legs written so far are in its write-ahead log)") from None

    def query(self, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
        return self.con.execute(sql, params or []).fetchall()

    def add_event(self, kind: str, detail: str) -> None:
        """One row of `events`, stamped now."""
        self.con.execute("insert into events values (now(), ?, ?)", [kind, detail])

    def event_details(self, kind: str) -> list[str]:
        return event_details(self.con, kind)

    def write_legs_by_captured_id(self, spool: pa.Table) -> None:
        """Legs keyed by the capture's request id (a shadow run's spool), written for the requests that have
        a leg of every version, with the run's own request id and order index."""
        con = self.con
        con.register("spool", spool)
        try:
            con.execute("create temp table paired as select request_id from spool group by 1 "
                        "having count(distinct version) = 2")
            cols = ", ".join("r.request_id" if n == "request_id" else "r.order_idx" if n == "order_idx" else f"s.{n}"
                             for n in LEG_SCHEMA.names)
            legs = con.sql(f"""select {cols} from spool s join requests r on r.captured_request_id = s.request_id
                               where s.request_id in (select request_id from paired)""").to_arrow_table()
        finally:
            con.unregister("spool")
        self.write_legs(legs.cast(LEG_SCHEMA))

    def move_unsent_to_skipped(self, default_reason: str, *, lost_shards: Sequence[tuple[int, int]] = (),
                               reasons_by_captured_id: Mapping[str, str] | None = None) -> None:
        """Requests without a leg move from `requests` to `skipped`, each with its reason: the in-flight limit
        (request ids in `skipped_in_flight_limit` events), a lost worker's shard (`lost_shards`: (shard count,
        index) of each), the reason given for its captured request id, else `default_reason`. Then
        captured = replayed + skipped + bad holds, and legs = versions x requests."""
        con = self.con
        seg_cols = [r[0] for r in con.execute(
            "select column_name from information_schema.columns where table_name = 'skipped' "
            "and column_name not in ('source_line', 'captured_at', 'method', 'path', 'route', 'reason')").fetchall()]
        cols = "".join(f', r."{c}"' for c in seg_cols)
        lost_case = "".join(
            f" when r.order_idx % {int(count)} = {int(index)} then "
            f"'lost: worker-{int(index)} stopped before finishing its shard'" for count, index in lost_shards)
        reasons = reasons_by_captured_id or {}
        drops = pa.table({"rid": list(reasons), "reason": list(reasons.values())},
                         schema=pa.schema([("rid", pa.string()), ("reason", pa.string())]))
        con.register("drops", drops)
        try:
            con.execute(f"""insert into skipped select r.source_line, r.captured_at, r.method, r.path, r.route,
                case when r.request_id in (select detail from events where kind = 'skipped_in_flight_limit')
                       then 'in-flight limit reached (replay.max_in_flight)' {lost_case}
                     when d.reason is not null then d.reason
                     else ? end {cols}
                from requests r left join drops d on d.rid = r.captured_request_id
                where not exists (select 1 from legs l where l.order_idx = r.order_idx)""", [default_reason])
        finally:
            con.unregister("drops")
        con.execute("delete from requests r where not exists (select 1 from legs l where l.order_idx = r.order_idx)")

    def count_short_requests(self, shard_count: int, index: int) -> int:
        """Requests of shard `index` (of `shard_count`) with fewer legs than the run has versions."""
        row = self.con.execute(f"""select count(*) from (select order_idx from legs
            where order_idx % {int(shard_count)} = {int(index)} group by 1
            having count(distinct version) < (select count(distinct version) from legs))""").fetchone()
        return int(row[0]) if row else 0

    def count_legs_by_harness_error(self) -> tuple[int, int]:
        """(legs that failed inside harness, all legs)."""
        row = self.con.execute(
            f"select count(*) filter (where error_kind = '{HARNESS_ERROR}'), count(*) from legs").fetchone()
        return (int(row[0]), int(row[1])) if row else (0, 0)


_DUCK_TYPES = {pa.string(): "varchar", pa.float64(): "double", pa.int64(): "bigint", pa.int32(): "integer",
               pa.bool_(): "boolean", pa.list_(pa.string()): "varchar[]", pa.list_(pa.float64()): "double[]"}


def upgrade_results(path: Path) -> list[str]:
    """Adds the leg columns a results.duckdb written by an older harness lacks (as NULL) and gives old
    columns their current names, so that any run folder can be judged and reported again by this
    version. Returns the columns added or renamed."""
    try:
        con = duckdb.connect(str(path))
    except duckdb.Error as exc:
        raise StoreError(f"{path}: cannot open: {_first_line(exc)}") from None
    try:
        added = []
        have = {r[0] for r in con.execute(
            "select column_name from information_schema.columns where table_name = 'legs'").fetchall()}
        for f in LEG_SCHEMA if have else ():
            if f.name not in have and f.type in _DUCK_TYPES:
                con.execute(f'alter table legs add column "{f.name}" {_DUCK_TYPES[f.type]}')
                added.append(f.name)
        event_columns = {r[0] for r in con.execute(
            "select column_name from information_schema.columns where table_name = 'events'").fetchall()}
        if "at" in event_columns and "occurred_at" not in event_columns:  # written before the rename
            con.execute('alter table events rename column "at" to occurred_at')
            added.append("events.occurred_at")
        if have and [a for a in added if "." not in a]:  # new leg columns: the views over them are rebuilt
            if "batch_size" not in {r[0] for r in con.execute(
                    "select column_name from information_schema.columns where table_name = 'requests'").fetchall()}:
                con.execute("alter table requests add column batch_size bigint")
            con.execute(PAIRS_VIEW.replace("create view", "create or replace view", 1))
            con.execute(PREDICTION_ROWS_VIEW.replace("create view", "create or replace view", 1))
            con.execute(ROW_PAIRS_VIEW.replace("create view", "create or replace view", 1))
        if have and con.execute("select count(*) from legs where error_kind is null and try_cast(status_code as integer) between 300 and 399"
                                ).fetchone()[0]:  # type: ignore[index]
            # recorded before a redirect was a kind of its own (error_kinds.status_kind): judged by today's rule
            con.execute("update legs set error_kind = 'http_3xx' where error_kind is null and try_cast(status_code as integer) between 300 and 399")
            added.append("legs.error_kind http_3xx")
        return added
    finally:
        con.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


# One row per request, every leg column side by side (baseline_*, candidate_*), joined on the order index
# (the request's integer key) rather than its text id.
PAIRS_VIEW = "create view pairs as\nselect r.*,\n  " + ",\n  ".join(
    f"{version[0]}.{name} as {version}_{name}" for version in ("baseline", "candidate")
    for name in LEG_SCHEMA.names if name not in ("request_id", "version", "order_idx")) + """
from requests r
left join legs b on b.order_idx = r.order_idx and b.version = 'baseline'
left join legs c on c.order_idx = r.order_idx and c.version = 'candidate'
"""

# One row per predicted row per leg: the answer's row `row_idx` (0-based, its position in the batch) of a
# request that asked for `batch_size` rows. Invalid rows are there with their reason (label and score null).
PREDICTION_ROWS_VIEW = """create view prediction_rows as
select request_id, order_idx, version, row_idx, batch_size, row_count,
       row_labels[row_idx + 1] as label, row_scores[row_idx + 1] as score, row_invalid[row_idx + 1] as invalid_reason,
       error_kind
from (select l.request_id, l.order_idx, l.version, r.batch_size, l.row_count, l.row_labels, l.row_scores,
             l.row_invalid, l.error_kind, unnest(range(len(l.row_labels))) as row_idx
      from legs l join requests r on r.order_idx = l.order_idx
      where l.row_labels is not null)
"""

# One row per request row: the request's columns (segments included), then each version's label, score and
# invalid reason for that row, each leg's error kind (a row_count_mismatch leg's rows are not comparable), and
# whether the label flipped (null unless both versions gave a label).
ROW_PAIRS_VIEW = """create view row_pairs as
select r.*, coalesce(b.row_idx, c.row_idx) as row_idx,
       b.label as baseline_label, c.label as candidate_label, b.score as baseline_score, c.score as candidate_score,
       b.invalid_reason as baseline_invalid_reason, c.invalid_reason as candidate_invalid_reason,
       lb.error_kind as baseline_error_kind, lc.error_kind as candidate_error_kind,
       case when b.label is not null and c.label is not null then b.label <> c.label end as flipped
from (select * from prediction_rows where version = 'baseline') b
full outer join (select * from prediction_rows where version = 'candidate') c
  on b.order_idx = c.order_idx and b.row_idx = c.row_idx
join requests r on r.order_idx = coalesce(b.order_idx, c.order_idx)
left join legs lb on lb.order_idx = r.order_idx and lb.version = 'baseline'
left join legs lc on lc.order_idx = r.order_idx and lc.version = 'candidate'
"""
