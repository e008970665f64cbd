"""A shadow run's capture and legs spool -> results.duckdb, made as a replay's is.

The capture goes through the replay's traffic preparation (redaction, segments, routes, the
side-effect rules), so `requests` and `skipped` are a replay's; the legs are joined to their requests by
the shadow id each record carries (`request_id` -> captured_request_id). A request has legs only when
both versions answered (or failed) in time; the others move to `skipped` with their reason.
Outputs are built in a folder of their own and then moved into the run folder file by file
(os.replace), so that `harness report RUN` reading the run folder meanwhile sees one whole version.
"""
from __future__ import annotations

import io
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json

from .. import __version__
from ..replay.leg import LEG_SCHEMA
from ..run import _git_commit
from ..scenario import Scenario, TrafficConfig
from ..store import RunMeta, RunStore
from ..traffic.prepare import PreparedTraffic, prepare_traffic

__all__ = ["build_results", "publish", "UNFINISHED", "OUTPUT_FILES"]

UNFINISHED = "not mirrored: the candidate copy was still in flight when the run stopped"
OUTPUT_FILES = ("results.duckdb", "summary.json", "gate_report.html", "canary_schedule.yaml", "junit.xml")


def build_results(scenario: Scenario, build_dir: Path, *, run_id: str, capture_path: Path, capture_recorded: Path,
                  legs_path: Path, drops: dict[str, str], replay_event: dict[str, Any], status: str,
                  reason: str | None, prepared: PreparedTraffic | None = None,
                  spool: pa.Table | None = None, resources: pa.Table | None = None,
                  resource_events: list[tuple[str, str]] | None = None) -> dict[str, Any]:
    """Makes results.duckdb and the outputs in build_dir; returns the summary. `prepared` and `spool`: the
    capture prepared and the legs read already (a snapshot's cache), instead of capture_path and legs_path;
    `resources` and `resource_events`: the targets' samples and their monitor's events (resources.py)."""
    from ..outputs import build_outputs

    build_dir.mkdir(parents=True, exist_ok=True)
    work = build_dir / ".work"
    if prepared is None:
        if not capture_path.exists():  # nothing came yet: an empty capture, still a run folder
            capture_path.write_bytes(b"")
        live = replace(scenario, traffic=TrafficConfig(path=capture_path, format="jsonl", speed=1.0,
                                                       redact=scenario.traffic.redact))
        prepared = prepare_traffic(live, work)
    store = RunStore(build_dir / "results.duckdb")
    try:
        meta = RunMeta(
            run_id=run_id, scenario=scenario.name, scenario_sha256=scenario.sha256,
            config_json=json.dumps(scenario.stored_config(), default=str), capture_path=str(capture_recorded),
            capture_sha256=prepared.capture_sha256, harness_version=__version__, git_commit=_git_commit(),
            baseline_url=scenario.target_for("baseline").url, candidate_url=scenario.target_for("candidate").url,
            mode="paired", speed=1.0, segments=prepared.segment_names)
        store.create(meta, prepared.schedule_path, prepared.skipped_path, prepared.bad_path)
        store.add_event("traffic", json.dumps({
            "records_read": prepared.records_read, "loops": 1, "format": "jsonl", "span_s": prepared.span_s,
            "source": "live shadow"}))
        store.write_legs_by_captured_id(spool if spool is not None else read_legs(legs_path))
        if resources is not None and resources.num_rows:
            store.write_resources(resources)
        for kind, detail in resource_events or ():
            store.add_event(kind, detail)
        store.move_unsent_to_skipped(UNFINISHED, reasons_by_captured_id=drops)
        store.add_event("replay", json.dumps(replay_event))
        store.finish(status, reason)
    except BaseException as exc:
        store.finish("failed", f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        store.close()
        shutil.rmtree(work, ignore_errors=True)
    return build_outputs(build_dir)


def publish(build_dir: Path, run_dir: Path) -> None:
    """Moves the outputs into the run folder, the database last: a reader sees the old or the new file."""
    for name in (*OUTPUT_FILES[1:], OUTPUT_FILES[0]):
        src = build_dir / name
        if src.exists():
            os.replace(src, run_dir / name)
    shutil.rmtree(build_dir, ignore_errors=True)


def read_legs(path: Path) -> pa.Table:
    return spool_table(path.read_bytes() if path.exists() else b"", LEG_SCHEMA)


def spool_table(data: bytes, schema: pa.Schema) -> pa.Table:
    """JSON lines spooled by the recorder (legs, resource samples) as a table of `schema`."""
    if not data:
        return schema.empty_table()
    return pa_json.read_json(io.BytesIO(data), parse_options=pa_json.ParseOptions(
        explicit_schema=schema, unexpected_field_behavior="ignore"))
