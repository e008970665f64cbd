"""A snapshot of a running shadow run, made in a process of its own so that the proxy's serving loop
never waits for DuckDB or the report:

    python -m harness.shadow.snapshot ARGS.json

ARGS.json (written by run.py): run_dir, scenario (the YAML path), capture and legs (paths) with the
sizes of their whole-flush prefixes, drops, the replay event. The run folder's outputs are built from
those prefixes as at the end of a run (status incomplete, "live shadow still running"), then moved into
the run folder.

Snapshots are incremental: what earlier ones read is kept in `.work/snapshot.duckdb` (the staged
requests, the legs, and how far into the capture and the legs spool they reach). A snapshot reads and
stages only what was appended since (whole gzip members of the capture, whole lines of the spool), so
its per-record work (parsing, redaction, segments) is bounded by the new traffic, not by how long the
shadow has run; ordering, joining and judging are DuckDB's passes over the tables. The cache is
updated in one transaction: a snapshot killed half-way leaves it as the previous one left it."""
from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sys
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from ..replay.leg import LEG_SCHEMA
from ..scenario import Scenario, load_scenario
from ..traffic.prepare import PREPARE_MEMORY_LIMIT, PreparedTraffic, create_staging, finish_staged, stage_records
from ..traffic.readers import iter_records
from .resources import read_resources
from .results import build_results, publish, spool_table

__all__ = ["SnapshotCache", "make_snapshot"]


class SnapshotCache:
    def __init__(self, path: Path, scenario: Scenario) -> None:
        self.scenario = scenario
        self.work = path.parent
        fresh = not path.exists()
        self.con = duckdb.connect(str(path))
        self.con.execute(f"set memory_limit = '{PREPARE_MEMORY_LIMIT}'")
        self.con.execute(f"set temp_directory = '{str(self.work / 'snapshot-spill').replace(chr(39), chr(39) * 2)}'")
        if fresh:
            self.con.execute("begin")
            create_staging(self.con, scenario)
            empty = LEG_SCHEMA.empty_table()  # noqa: F841 - read by DuckDB through the name
            self.con.execute("create table spool as select * from empty")
            self.con.execute("create table state (capture_offset bigint, capture_lines bigint, records_read bigint, "
                             "legs_offset bigint)")
            self.con.execute("insert into state values (0, 0, 0, 0)")
            self.con.execute("commit")

    def close(self) -> None:
        self.con.close()

    def state(self) -> tuple[int, int, int, int]:
        row = self.con.execute("select * from state").fetchall()[0]  # fetchall: no unfinished result left
        return int(row[0]), int(row[1]), int(row[2]), int(row[3])

    def update(self, capture: Path | None, capture_size: int, legs: Path | None, legs_size: int,
               recorded: str) -> tuple[int, int]:
        """Stages what was appended to the capture and the spool since the last update; returns (requests
        read, legs read) this time."""
        capture_offset, lines, records_read, legs_offset = self.state()
        new_records = new_legs = 0
        self.con.execute("begin")
        try:
            if capture is not None and capture_size > capture_offset:
                text = gzip.decompress(_read_range(capture, capture_offset, capture_size))
                delta = self.work / "snapshot-delta.jsonl"
                delta.write_bytes(text)
                before = records_read
                records_read = stage_records(self.con, self.scenario, iter_records(delta, "jsonl"),
                                             records_read=records_read, line_offset=lines, source=recorded)
                delta.unlink()
                new_records = records_read - before
                lines += text.count(b"\n")
                capture_offset = capture_size
            if legs is not None and legs_size > legs_offset:
                table = spool_table(_read_range(legs, legs_offset, legs_size), LEG_SCHEMA)
                self.con.register("new_legs", table)
                self.con.execute("insert into spool by name select * from new_legs")
                self.con.unregister("new_legs")
                new_legs = table.num_rows
                legs_offset = legs_size
            self.con.execute("update state set capture_offset = ?, capture_lines = ?, records_read = ?, "
                             "legs_offset = ?", [capture_offset, lines, records_read, legs_offset])
            self.con.execute("commit")
        except BaseException:
            self.con.execute("rollback")
            raise
        return new_records, new_legs

    def prepared(self, workdir: Path, capture_path: Path, capture_sha256: str) -> PreparedTraffic:
        workdir.mkdir(parents=True, exist_ok=True)
        return finish_staged(self.con, self.scenario, workdir, capture_path, self.state()[2], capture_sha256)

    def legs(self) -> pa.Table:
        return self.con.sql("select * from spool").to_arrow_table()


def _read_range(path: Path, start: int, end: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(start)
        return f.read(end - start)


def _prefix_sha256(path: Path | None, size: int) -> str:
    h = hashlib.sha256()
    if path is not None:
        with open(path, "rb") as f:
            remaining = size
            while remaining > 0 and (chunk := f.read(min(remaining, 1 << 20))):
                h.update(chunk)
                remaining -= len(chunk)
    return h.hexdigest()


def make_snapshot(args: dict[str, Any]) -> tuple[int, int]:
    """Builds and publishes one snapshot; returns (requests, legs) read for it (only the new ones)."""
    run_dir = Path(args["run_dir"])
    scenario = load_scenario(args["scenario"])
    build = run_dir / ".snapshot"
    shutil.rmtree(build, ignore_errors=True)  # what a failed snapshot left: its database would refuse this one
    build.mkdir()
    capture = Path(args["capture"]) if args["capture"] else None
    legs = Path(args["legs"]) if args["legs"] else None
    recorded = Path(args["capture_recorded"])
    cache = SnapshotCache(run_dir / ".work" / "snapshot.duckdb", scenario)
    try:
        new = cache.update(capture, int(args["capture_size"]), legs, int(args["legs_size"]), str(recorded))
        spool = cache.legs()
        prepared = cache.prepared(build / ".work", recorded, _prefix_sha256(capture, int(args["capture_size"])))
    finally:
        cache.close()
    build_results(scenario, build, run_id=run_dir.name, capture_path=recorded, capture_recorded=recorded,
                  legs_path=run_dir / ".work" / "legs.jsonl", drops=args["drops"], replay_event=args["replay_event"],
                  status="incomplete", reason=args["reason"], prepared=prepared, spool=spool,
                  resources=read_resources(Path(args["resources"])) if args.get("resources") else None,
                  resource_events=[tuple(e) for e in args.get("resource_events", [])])
    publish(build, run_dir)
    return new


if __name__ == "__main__":
    make_snapshot(json.loads(Path(sys.argv[1]).read_text()))
