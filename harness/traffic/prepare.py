"""Capture -> replay schedule.

One streaming pass reads the capture, redacts it, derives segments and decides what may be replayed;
rows go in batches to a scratch DuckDB file so memory stays flat whatever the capture's size. DuckDB
then orders by captured time (logs are often written in completion order), applies window, sampling,
max_requests, loops and warm-up, and writes two Parquet files that the later stages read:

- schedule.parquet: what will be sent, in send order (`order_idx`), with redacted headers and body;
- skipped.parquet: what will not be sent, each with its reason; bad records go to bad_records.parquet.

Nothing in these files carries a secret: redaction happened before the first write.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import duckdb
import pyarrow as pa

from ..errors import TrafficError
from ..scenario import Scenario
from .readers import detect_format, iter_records, record_place, record_unit
from .record import BadRecord, CapturedRequest
from .redaction import Redactor
from .segments import NONE_VALUE, SegmentEvaluator, route_template
from .request_rows import request_row_count

__all__ = ["PreparedTraffic", "prepare_traffic", "SAFE_METHODS", "is_allowed", "file_sha256"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_BATCH = 10_000
PREPARE_MEMORY_LIMIT = "128MB"


@dataclass(frozen=True)
class PreparedTraffic:
    schedule_path: Path
    skipped_path: Path
    bad_path: Path
    segment_names: tuple[str, ...]
    capture_sha256: str
    capture_format: str
    records_read: int
    bad_records: int
    skipped: dict[str, int]
    replayed: int
    warmup: int
    span_s: float
    first_ts: float | None
    to_send: int = field(default=0)
    # what the schedule's shape says before anything is sent (a long idle gap), for the run's start and validate
    warnings: list[str] = field(default_factory=list)
    first_bad: tuple[int, str] | None = None  # the first bad record's line and reason, for messages
    # skip reason -> its most frequent "METHOD route" with counts (at most three), for messages
    skipped_examples: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    def counts_lines(self) -> list[str]:
        """Records read, to replay, skipped by reason (with the requests it hit most), bad: what
        `harness validate` prints and what a run that would send nothing says."""
        lines = [f"records read: {self.records_read:,}", f"to replay: {self.replayed:,}"]
        lines += [f"skipped: {n:,} {reason}{self._examples(reason)}" for reason, n in self.skipped.items()]
        lines.append(f"bad records: {self.bad_records:,}{self._first_bad()}")
        return lines

    def nothing_to_replay(self) -> str | None:
        """None when something would be sent; else the one-line reason, counted by cause."""
        if self.replayed:
            return None
        parts = [f"{n:,} {reason}{self._examples(reason)}" for reason, n in self.skipped.items()]
        if self.bad_records:
            parts.append(f"{self.bad_records:,} bad records{self._first_bad()}")
        return (f"nothing to replay: {self.records_read:,} of {self.records_read:,} records skipped or bad: "
                + ("; ".join(parts) or "the capture holds no records"))

    def segment_values(self, names: Iterable[str]) -> dict[str, list[str]]:
        """The values each named segment takes in what will be replayed (warm-up included)."""
        wanted = [n for n in names if n in self.segment_names]
        if not wanted:
            return {}
        con = duckdb.connect()
        try:
            return {n: [v for (v,) in con.execute(f'select distinct "seg__{n}" from read_parquet(?) where '
                                                   f'"seg__{n}" is not null', [str(self.schedule_path)]).fetchall()]
                    for n in wanted}
        finally:
            con.close()

    def _first_bad(self) -> str:
        if not self.first_bad:
            return ""
        return f" (the first, {record_unit(self.capture_format)} {self.first_bad[0]:,}: {self.first_bad[1]})"

    def _examples(self, reason: str) -> str:
        ex = self.skipped_examples.get(reason)
        return f" ({', '.join(f'{what} {n:,}' for what, n in ex)})" if ex else ""


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def is_allowed(method: str, path: str, route: str, allow: Iterable[str]) -> bool:
    if method in SAFE_METHODS:
        return True
    bare = path.split("?", 1)[0]
    for rule in allow:
        m, pattern = rule.split(None, 1)
        if m.upper() not in (method, "*"):
            continue
        if fnmatch.fnmatchcase(bare, pattern) or fnmatch.fnmatchcase(route, pattern) or pattern == route:
            return True
    return False


def _schema(seg_names: tuple[str, ...]) -> pa.Schema:
    return pa.schema([
        ("seq", pa.int64()), ("source_line", pa.int64()), ("ts", pa.float64()), ("method", pa.string()),
        ("path", pa.string()), ("route", pa.string()), ("headers_json", pa.string()), ("body", pa.binary()),
        ("request_bytes", pa.int64()), ("deny_reason", pa.string()), ("captured_request_id", pa.string()),
        ("production_status", pa.int32()), ("batch_size", pa.int64()),
        *[(f"seg__{n}", pa.string()) for n in seg_names],
    ])


def prepare_traffic(scenario: Scenario, workdir: Path) -> PreparedTraffic:
    cfg = scenario.traffic
    path = cfg.path
    if not path.exists():
        raise TrafficError(f"{path}: capture file not found")
    fmt = detect_format(path, cfg.format)
    seg_names = SegmentEvaluator(scenario.segments).names
    workdir.mkdir(parents=True, exist_ok=True)
    scratch = workdir / "prepare.duckdb"
    scratch.unlink(missing_ok=True)
    con = duckdb.connect(str(scratch))
    # Sorting a large capture by time must not hold it in memory: DuckDB spills to the work folder.
    con.execute(f"set memory_limit = '{PREPARE_MEMORY_LIMIT}'")
    con.execute(f"set temp_directory = '{_sql_path(workdir / 'spill')}'")
    con.execute("set preserve_insertion_order = false")
    try:
        create_staging(con, scenario)
        records_read = stage_records(con, scenario, iter_records(path, fmt, cfg.trace), fmt=fmt)
        return _finish(con, scenario, workdir, path, fmt, seg_names, records_read)
    finally:
        con.close()
        scratch.unlink(missing_ok=True)
        Path(str(scratch) + ".wal").unlink(missing_ok=True)


def create_staging(con: duckdb.DuckDBPyConnection, scenario: Scenario) -> None:
    """The tables stage_records fills: `staged` (one row per request) and `bad`."""
    con.execute(f"create table staged ({_ddl(_schema(SegmentEvaluator(scenario.segments).names))})")
    con.execute("create table bad (source varchar, line bigint, reason varchar)")


def stage_records(con: duckdb.DuckDBPyConnection, scenario: Scenario,
                  items: Iterable[CapturedRequest | BadRecord], *, records_read: int = 0, line_offset: int = 0,
                  source: str | None = None, fmt: str = "jsonl") -> int:
    """Stages records (redaction, routes, segments, the side-effect rules) into `staged` and `bad`: the
    per-record work of preparing a capture. Returns the number of records read, counting on from
    `records_read` (each row's seq); `line_offset` and `source` place records read from a piece of a
    capture (a live shadow's snapshot reads only what was appended) in the whole file; `fmt`, the
    capture's format, names a record's place in messages (a line, a HAR entry)."""
    cfg = scenario.traffic
    redactor = Redactor(cfg.redact)
    segments = SegmentEvaluator(scenario.segments)
    schema = _schema(segments.names)
    rows: list[dict[str, Any]] = []
    bad_rows: list[tuple[str, int, str]] = []
    for item in items:
        records_read += 1
        if isinstance(item, BadRecord):
            reason = redactor.reason(item.reason)  # a reason may quote the record, secrets included
            if cfg.on_bad_record == "fail":
                raise TrafficError(f"{record_place(source or item.source, fmt, item.line + line_offset)}: {reason} "
                                   "(traffic.on_bad_record: fail)")
            bad_rows.append((source or item.source, item.line + line_offset, reason))
            if len(bad_rows) >= _BATCH:
                con.executemany("insert into bad values (?, ?, ?)", bad_rows)
                bad_rows.clear()
            continue
        if line_offset:
            item = replace(item, line=item.line + line_offset)
        rows.append(_row(records_read, item, redactor, segments, scenario))
        if len(rows) >= _BATCH:
            _flush(con, rows, schema)
    _flush(con, rows, schema)
    if bad_rows:
        con.executemany("insert into bad values (?, ?, ?)", bad_rows)
    return records_read


def finish_staged(con: duckdb.DuckDBPyConnection, scenario: Scenario, workdir: Path, path: Path,
                  records_read: int, capture_sha256: str) -> PreparedTraffic:
    """prepare_traffic's second half on tables that stage_records filled: order, windows, sampling, the
    schedule and skipped files in workdir."""
    return _finish(con, scenario, workdir, path, "jsonl", SegmentEvaluator(scenario.segments).names, records_read,
                   capture_sha256)


def set_run_phases(con: duckdb.DuckDBPyConnection, scenario: Scenario) -> None:
    """run_phase segments: the schedule's time cut into N equal stretches ("1 of 4" ... "4 of 4"); requests not
    replayed have none."""
    for spec in scenario.segments:
        if spec.kind != "run_phase":
            continue
        n, col = int(str(spec.arg)), f'"seg__{spec.name}"'
        con.execute(f"""update schedule set {col} = least(?, 1 + floor(
                          offset_s / greatest((select max(offset_s) from schedule), 1e-9) * ?)::bigint) || ' of ' || ?""",
                    [n, n, n])
        con.execute(f"update ordered set {col} = ? where skip_reason is not null", [NONE_VALUE])


def _ddl(schema: pa.Schema) -> str:
    types = {pa.int64(): "bigint", pa.int32(): "integer", pa.float64(): "double", pa.string(): "varchar",
             pa.binary(): "blob"}
    return ", ".join(f'"{f.name}" {types[f.type]}' for f in schema)


def _flush(con: duckdb.DuckDBPyConnection, rows: list[dict[str, Any]], schema: pa.Schema) -> None:
    if not rows:
        return
    batch = pa.Table.from_pylist(rows, schema=schema)  # noqa: F841 - read by DuckDB through the name
    con.execute("insert into staged select * from batch")
    rows.clear()


def _row(seq: int, req: CapturedRequest, redactor: Redactor, segments: SegmentEvaluator,
         scenario: Scenario) -> dict[str, Any]:
    req = redactor.request(req)
    route = route_template(req.path)
    deny = None if is_allowed(req.method, req.path, route, scenario.replay.allow) else \
        f"not allowed: {req.method} changes state (add it to replay.allow if it is safe to replay)"
    row: dict[str, Any] = {
        "seq": seq, "source_line": req.line, "ts": req.ts, "method": req.method, "path": req.path,
        "route": route, "headers_json": json.dumps(req.headers), "body": req.body,
        "request_bytes": len(req.body), "deny_reason": deny,
        "captured_request_id": str(req.meta.get("request_id")) if req.meta.get("request_id") is not None else None,
        "production_status": req.response.status if req.response else None,
        "batch_size": batch_size_of(req.body, scenario),
    }
    for name, value in segments.values(req).items():
        row[f"seg__{name}"] = value
    return row


def batch_size_of(body: bytes, scenario: Scenario) -> int | None:
    """The rows the request asks predictions for, where the answers are read row by row (output.rows)."""
    protocol = scenario.target_for("baseline").protocol
    if not scenario.output.rows.active(protocol):
        return None
    return request_row_count(body, protocol)


def _finish(con: duckdb.DuckDBPyConnection, scenario: Scenario, workdir: Path, path: Path, fmt: str,
            seg_names: tuple[str, ...], records_read: int, capture_sha256: str | None = None) -> PreparedTraffic:
    cfg = scenario.traffic
    first_ts = con.execute("select min(ts) from staged").fetchone()[0]  # type: ignore[index]
    con.execute("create temp table ordered as select *, ts - ? as offset_s, "
                "row_number() over (order by ts, seq) - 1 as time_rank from staged",
                [first_ts if first_ts is not None else 0.0])
    # Each rule marks only rows no earlier rule has marked, so every skipped row has exactly one reason.
    con.execute("alter table ordered add column skip_reason varchar")
    con.execute("update ordered set skip_reason = deny_reason where deny_reason is not null")
    if cfg.from_s is not None:
        con.execute("update ordered set skip_reason = 'outside traffic.window' where skip_reason is null and offset_s < ?",
                    [cfg.from_s])
    if cfg.to_s is not None:
        con.execute("update ordered set skip_reason = 'outside traffic.window' where skip_reason is null and offset_s >= ?",
                    [cfg.to_s])
    if cfg.sample is not None:
        _sample(con, cfg.sample.fraction, cfg.sample.seed, cfg.sample.stratify_by, cfg.sample.min_per_stratum)
    if cfg.max_requests is not None:
        per_loop = max(1, -(-cfg.max_requests // cfg.loops))
        con.execute("""update ordered set skip_reason = 'beyond traffic.max_requests'
                       where skip_reason is null and time_rank in (
                         select time_rank from ordered where skip_reason is null order by time_rank offset ?)""",
                    [per_loop])
    if cfg.max_gap_s is not None:
        _shorten_gaps(con, cfg.max_gap_s)
    warnings = _long_gap(con, fmt)
    # The window start, not the first record, is time zero of the replay.
    start = con.execute("select coalesce(min(offset_s), 0) from ordered where skip_reason is null").fetchone()[0]  # type: ignore[index]
    span = con.execute("select coalesce(max(offset_s) - min(offset_s), 0) from ordered where skip_reason is null").fetchone()[0]  # type: ignore[index]
    n_kept = con.execute("select count(*) from ordered where skip_reason is null").fetchone()[0]  # type: ignore[index]
    gap = span / max(n_kept - 1, 1)
    seg_cols = "".join(f', "seg__{n}"' for n in seg_names)
    schedule_path = workdir / "schedule.parquet"
    skipped_path = workdir / "skipped.parquet"
    bad_path = workdir / "bad_records.parquet"
    max_total = cfg.max_requests if cfg.max_requests is not None else 2**62
    con.execute(f"""
        create temp table schedule as
        with loops as (select range as loop from range(?)),
        sent as (
          select o.*, l.loop, (o.offset_s - ?) + l.loop * (? + ?) as replay_offset_s
          from ordered o cross join loops l where o.skip_reason is null)
        select row_number() over (order by replay_offset_s, seq) - 1 as order_idx,
               case when loop = 0 then 'r' || lpad(seq::varchar, greatest(7, length(seq::varchar))::integer, '0')
                    else 'r' || lpad(seq::varchar, greatest(7, length(seq::varchar))::integer, '0') || '-' || loop end as request_id,
               seq, loop, source_line, to_timestamp(ts) as captured_at, replay_offset_s as offset_s,
               method, path, route, headers_json, body, request_bytes, captured_request_id, production_status,
               batch_size {seg_cols}
        from sent qualify order_idx < ?
    """, [cfg.loops, start, span, gap, max_total])
    set_run_phases(con, scenario)
    con.execute("alter table schedule add column warmup boolean")
    con.execute("update schedule set warmup = order_idx < ?", [cfg.warmup_requests])
    # Row groups of 16,384 (DuckDB's default is 122,880): the replay decodes one at a time, and a smaller one
    # is less memory held and a shorter read ahead of the send schedule.
    con.execute(f"copy (select * from schedule order by order_idx) to '{_sql_path(schedule_path)}' "
                "(format parquet, row_group_size 16384)")
    con.execute(f"""copy (select source_line, to_timestamp(ts) as captured_at, method, path, route, skip_reason as reason
                         {seg_cols} from ordered where skip_reason is not null order by time_rank)
                   to '{_sql_path(skipped_path)}' (format parquet)""")
    con.execute(f"copy (select * from bad order by line) to '{_sql_path(bad_path)}' (format parquet)")
    skipped = dict(con.execute("select skip_reason, count(*) from ordered where skip_reason is not null "
                               "group by 1 order by 2 desc").fetchall())
    examples: dict[str, list[tuple[str, int]]] = {}
    for reason, what, n in con.execute("""select skip_reason, method || ' ' || route, count(*) from ordered
                                          where skip_reason is not null group by 1, 2
                                          qualify row_number() over (partition by skip_reason order by count(*) desc,
                                                                     method || ' ' || route) <= 3
                                          order by 1, 3 desc, 2""").fetchall():
        examples.setdefault(reason, []).append((what, int(n)))
    replayed, warmup = con.execute("select count(*), count(*) filter (where warmup) from schedule").fetchone()  # type: ignore[misc]
    n_bad = con.execute("select count(*) from bad").fetchone()[0]  # type: ignore[index]
    first_bad = con.execute("select line, reason from bad order by line limit 1").fetchall()
    return PreparedTraffic(
        schedule_path=schedule_path, skipped_path=skipped_path, bad_path=bad_path, segment_names=seg_names,
        capture_sha256=capture_sha256 or file_sha256(path), capture_format=fmt, records_read=records_read, bad_records=n_bad,
        skipped=skipped, replayed=replayed, warmup=warmup, span_s=float(span) * cfg.loops, first_ts=first_ts,
        to_send=replayed, skipped_examples=examples, warnings=warnings,
        first_bad=(int(first_bad[0][0]), str(first_bad[0][1])[:200]) if first_bad else None)


LONG_GAP_S = 60.0  # an idle gap this long that is also most of the span is worth a word before the run


def _shorten_gaps(con: duckdb.DuckDBPyConnection, max_gap_s: float) -> None:
    """traffic.max_gap_s (tcpreplay's --maxsleep): each idle gap between consecutive replayed records longer
    than the limit is shortened to it; the records keep their order and every shorter gap. The window and
    the other skip rules have already read the captured offsets."""
    con.execute("""update ordered set offset_s = s.shortened from (
                     select time_rank, first_value(offset_s) over w
                            + coalesce(sum(least(gap, ?)) over w, 0) as shortened
                     from (select time_rank, offset_s, offset_s - lag(offset_s) over (order by time_rank) as gap
                           from ordered where skip_reason is null)
                     window w as (order by time_rank rows between unbounded preceding and current row)) s
                   where ordered.time_rank = s.time_rank""", [max_gap_s])


def _long_gap(con: duckdb.DuckDBPyConnection, fmt: str) -> list[str]:
    """A warning when one idle gap of the schedule is over LONG_GAP_S and most of its span: a record with a
    skewed clock (a day early) makes a 100 s capture a day-long run that sends one request and waits."""
    row = con.execute("""select gap, span, before_line, before_ts, source_line, ts from (
                           select offset_s - lag(offset_s) over w as gap,
                                  max(offset_s) over () - min(offset_s) over () as span,
                                  lag(source_line) over w as before_line, lag(ts) over w as before_ts, source_line, ts
                           from ordered where skip_reason is null window w as (order by time_rank))
                         where gap is not null order by gap desc limit 1""").fetchall()
    if not row:
        return []
    gap, span, before_line, before_ts, line, ts = row[0]
    if gap <= LONG_GAP_S or gap <= 0.5 * span:
        return []

    def at(t: float) -> str:
        return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")

    unit = record_unit(fmt)
    return [f"the schedule waits {gap:,.0f} s ({100 * gap / span:.0f} % of its span) between the record at {unit} "
            f"{before_line} (captured {at(before_ts)}) and the one at {unit} {line} ({at(ts)}): a clock-skewed "
            "record, or two captures in one file? traffic.max_gap_s "
            "shortens idle gaps; traffic.window keeps a part of the capture"]


def _sample(con: duckdb.DuckDBPyConnection, fraction: float, seed: int, stratify_by: str | None,
            min_per_stratum: int) -> None:
    """Deterministic under the seed: a request is kept when hash(seed, seq) falls under the fraction.
    Stratified: each stratum also keeps its first `min_per_stratum` requests by hash rank, so rare
    segments keep enough requests to be judged."""
    key = f"hash(seq, {int(seed)}) / 18446744073709551615.0"
    if stratify_by is None:
        con.execute(f"update ordered set skip_reason = 'not sampled' where skip_reason is null and {key} >= ?",
                    [fraction])
        return
    col = f'"seg__{stratify_by}"'
    con.execute(f"""update ordered set skip_reason = 'not sampled' where skip_reason is null and time_rank in (
        select time_rank from (
          select time_rank, {key} as u, row_number() over (partition by {col} order by {key}) as r
          from ordered where skip_reason is null)
        where u >= ? and r > ?)""", [fraction, min_per_stratum])


def _sql_path(p: Path) -> str:
    return str(p).replace("'", "''")
