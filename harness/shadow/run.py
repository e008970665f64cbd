"""`harness shadow SCENARIO --listen HOST:PORT`: live shadow traffic into a run folder like a replay's.

While it runs, the proxy (proxy.py) writes the requests as a capture (`shadow_traffic.jsonl.gz` in the
run folder, redacted) and the legs to a spool. At the end (SIGINT/SIGTERM, --duration, --max-requests)
the capture goes through the replay's own traffic preparation (segments, routes, side-effect rules) and
the results database is made as for a replay: `requests` (mirrored requests, in arrival order), `legs`
(baseline and candidate of each), `skipped` (requests not mirrored, each with its reason: not allowed,
dropped at the in-flight limit, still in flight when the run stopped), then the same outputs
(summary.json, gate report, canary schedule, junit.xml). `harness report`, gates and the schedule work
on it unchanged; `harness run` can replay shadow_traffic.jsonl.gz later.
"""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.json as pa_json

from .. import __version__
from ..capture.exchange import ExchangeRecords
from ..capture.proxy import parse_listen
from ..capture.writer import CaptureWriter
from ..errors import ScenarioError, UsageError
from ..replay.leg import LEG_SCHEMA
from ..run import RunResult, _git_commit, _setup_log, check_targets, make_run_dir
from ..scenario import Scenario, TrafficConfig
from ..store import RunMeta, RunStore
from ..traffic.prepare import prepare_traffic
from .legs import LegBuilder
from .proxy import ShadowApp, ShadowStats, leg_records

__all__ = ["run_shadow", "CAPTURE_NAME"]

CAPTURE_NAME = "shadow_traffic.jsonl.gz"
log = logging.getLogger("harness")


def run_shadow(scenario: Scenario, listen: str, out_root: Path, *, duration_s: float | None = None,
               max_requests: int | None = None, echo: Callable[[str], None] = print) -> RunResult:
    from ..outputs import build_outputs

    if scenario.replay.mode != "paired" or "candidate" not in scenario.versions:
        raise ScenarioError(f"{scenario.source}: harness shadow needs replay.mode: paired and a candidate target")
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise UsageError(f"harness shadow: {exc}") from None
    # The baseline answers the users: it must be up. The candidate may be down: that is recorded, not fatal.
    check_targets(replace(scenario, replay=replace(scenario.replay, mode="baseline-only")))
    run_dir = make_run_dir(out_root, scenario.name)
    handler, say = _setup_log(run_dir, echo)
    work = run_dir / ".work"
    work.mkdir()
    try:
        say(f"harness {__version__}: live shadow {scenario.name}, run folder {run_dir}")
        capture_path = run_dir / CAPTURE_NAME
        legs_path = work / "legs.jsonl"
        stats, stopped_by = asyncio.run(_serve(scenario, host, port, capture_path, legs_path, duration_s,
                                               max_requests, say))
        say(f"shadow: {stats.requests} requests answered from the baseline, {stats.mirrored} mirrored, "
            f"{stats.not_allowed} not allowed, dropped: {dict(stats.dropped) or 0}; stopped by {stopped_by}")
        return _finish(scenario, run_dir, capture_path, legs_path, stats, stopped_by, say, build_outputs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        log.removeHandler(handler)
        handler.close()


async def _serve(scenario: Scenario, host: str, port: int, capture_path: Path, legs_path: Path,
                 duration_s: float | None, max_requests: int | None,
                 say: Callable[[str], None]) -> tuple[ShadowStats, str]:
    from aiohttp import web

    # a literal path: the writer's strftime must leave it as it is
    capture = CaptureWriter(str(capture_path).replace("%", "%%"),
                            ExchangeRecords(scenario.traffic.redact, max_body_bytes=1 << 24))
    legs = CaptureWriter(str(legs_path).replace("%", "%%"),
                         leg_records(LegBuilder(scenario), scenario.replay.max_response_bytes))
    stop = asyncio.Event()
    shadow = ShadowApp(scenario, capture, legs, max_requests, stop)
    runner = web.AppRunner(shadow.app(), access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    stopped_by = ["max-requests"]
    try:
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        await site.start()
        say(f"listening on http://{host}:{port}: baseline {scenario.target_for('baseline').url} answers, "
            f"candidate {scenario.target_for('candidate').url} gets a copy")
        sys.stdout.flush()
        loop = asyncio.get_running_loop()

        def stop_by(reason: str) -> None:
            stopped_by[0] = reason
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop_by, signal.Signals(sig).name)
        if duration_s is not None:
            loop.call_later(duration_s, stop_by, "duration")
        await stop.wait()
    finally:
        await runner.cleanup()
        await shadow.close(scenario.replay.timeout_s + 1.0)
        capture.close()
        legs.close()
    for w, what in ((capture, "capture"), (legs, "legs")):
        if w.stats.error or w.stats.dropped:
            say(f"shadow: {what} writer: dropped {w.stats.dropped}{'; ' + w.stats.error if w.stats.error else ''}")
    return shadow.stats, stopped_by[0]


def _finish(scenario: Scenario, run_dir: Path, capture_path: Path, legs_path: Path, stats: ShadowStats,
            stopped_by: str, say: Callable[[str], None], build_outputs: Callable[[Path], dict[str, Any]]) -> RunResult:
    work = run_dir / ".work"
    if not capture_path.exists():  # nothing came: an empty capture, still a run folder
        capture_path.write_bytes(b"")
    live = replace(scenario, traffic=TrafficConfig(path=capture_path, format="jsonl", speed=1.0,
                                                   redact=scenario.traffic.redact))
    prepared = prepare_traffic(live, work)
    store = RunStore(run_dir / "results.duckdb")
    try:
        meta = RunMeta(
            run_id=run_dir.name, scenario=scenario.name, scenario_sha256=scenario.sha256,
            config_json=json.dumps(scenario.stored_config(), default=str), capture_path=str(capture_path),
            capture_sha256=prepared.capture_sha256, harness_version=__version__, git_commit=_git_commit(),
            baseline_url=scenario.target_for("baseline").url, candidate_url=scenario.target_for("candidate").url,
            mode="paired", speed=1.0, segments=prepared.segment_names)
        store.create(meta, prepared.schedule_path, prepared.skipped_path, prepared.bad_path)
        con = store.con
        con.execute("insert into events values (now(), 'traffic', ?)", [json.dumps({
            "records_read": prepared.records_read, "loops": 1, "format": "jsonl", "span_s": prepared.span_s,
            "source": "live shadow"})])
        spool = _read_legs(legs_path)  # noqa: F841 - read by DuckDB through the name
        con.register("spool", spool)
        con.execute("create temp table paired as select request_id from spool group by 1 "
                    "having count(distinct version) = 2")
        cols = ", ".join("r.request_id" if n == "request_id" else "r.order_idx" if n == "order_idx" else f"s.{n}"
                         for n in LEG_SCHEMA.names)
        legs = con.sql(f"""select {cols} from spool s join requests r on r.captured_request_id = s.request_id
                               where s.request_id in (select request_id from paired)""").to_arrow_table()
        store.write_legs(legs.cast(LEG_SCHEMA))
        con.unregister("spool")
        drops = pa.table({"rid": list(stats.drop_reasons), "reason": list(stats.drop_reasons.values())},
                         schema=pa.schema([("rid", pa.string()), ("reason", pa.string())]))
        con.register("drops", drops)
        seg_cols = [r[0] for r in con.execute(
            "select column_name from information_schema.columns where table_name = 'skipped' and column_name not in "
            "('source_line', 'captured_at', 'method', 'path', 'route', 'reason')").fetchall()]
        extra = "".join(f', r."{c}"' for c in seg_cols)
        con.execute(f"""insert into skipped select r.source_line, r.captured_at, r.method, r.path, r.route,
            coalesce(d.reason, 'not mirrored: the candidate copy was still in flight when the run stopped') {extra}
            from requests r left join drops d on d.rid = r.captured_request_id
            where not exists (select 1 from legs l where l.order_idx = r.order_idx)""")
        con.execute("delete from requests r where not exists (select 1 from legs l where l.order_idx = r.order_idx)")
        con.unregister("drops")
        wall_s = time.time() - stats.started_at
        con.execute("insert into events values (now(), 'replay', ?)", [json.dumps({
            "mode": "live shadow", "wall_s": wall_s, "dispatched": stats.mirrored, "requests": stats.requests,
            "not_allowed": stats.not_allowed, "dropped": stats.dropped, "candidate_errors": stats.candidate_errors,
            "skipped_in_flight": stats.dropped.get("not mirrored: copies in flight at replay.max_in_flight", 0),
            "interrupted": None, "stopped_by": stopped_by, "sink_failures": 0})])
        store.finish("complete", f"live shadow, stopped by {stopped_by}")
    except BaseException as exc:
        store.finish("failed", f"{type(exc).__name__}: {exc}"[:500])
        raise
    finally:
        store.close()
    summary = build_outputs(run_dir)
    say(f"verdict {summary['verdict']}; report {run_dir / 'gate_report.html'}")
    return RunResult(run_dir=run_dir, verdict=summary["verdict"],
                     exit_code={"PROMOTE": 0, "BLOCK": 1, "HOLD": 2}[summary["verdict"]], summary=summary)


def _read_legs(path: Path) -> pa.Table:
    if not path.exists() or path.stat().st_size == 0:
        return LEG_SCHEMA.empty_table()
    return pa_json.read_json(path, parse_options=pa_json.ParseOptions(explicit_schema=LEG_SCHEMA,
                                                                      unexpected_field_behavior="ignore"))
