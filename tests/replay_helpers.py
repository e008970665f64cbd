"""Build a capture, prepare it and replay it for real against servers on 127.0.0.1, without judging."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb

from harness.scenario import scenario_from_dict

__all__ = ["write_capture", "replay", "scenario_dict"]


def write_capture(path: Path, records: list[dict[str, Any]]) -> Path:
    with open(path, "w") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def scenario_dict(capture: Path, baseline: str, candidate: str | None, **replay: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": "t", "traffic": {"path": str(capture), "speed": replay.pop("speed", 1)},
        "segments": {"route": {"path_template": True}},
        "targets": {"baseline": {"url": baseline}},
        "replay": {"allow": ["* /*"], **replay},
        "promotion_gates": {"error_rate": {"maximum": 0.01}},
    }
    if candidate:
        d["targets"]["candidate"] = {"url": candidate}
    else:
        d["replay"]["mode"] = "baseline-only"
    return d


def replay(tmp_path: Path, scenario: dict[str, Any], sampler: Any = None) -> tuple[duckdb.DuckDBPyConnection, Any]:
    """Prepare + replay into tmp_path/run/results.duckdb; returns an open read-only connection and the outcome."""
    from harness.replay.dispatcher import DispatchPlan, TargetPlan
    from harness.replay.runner import ReplayOptions, run_replay
    from harness.store import RunMeta, RunStore
    from harness.traffic.prepare import prepare_traffic

    s = scenario_from_dict(scenario)
    run = tmp_path / "run"
    run.mkdir()
    p = prepare_traffic(s, run / ".work")
    store = RunStore(run / "results.duckdb")
    store.create(RunMeta("t", "t", "", "{}", "", "", "0", None, "", None, s.replay.mode, 1.0, p.segment_names),
                 p.schedule_path, p.skipped_path, p.bad_path)
    plan = DispatchPlan(
        schedule_path=p.schedule_path,
        targets=tuple(TargetPlan(v, s.target_for(v).url, s.target_for(v).protocol, dict(s.replay.headers),
                                 s.target_for(v).tls) for v in s.versions),
        speed=s.traffic.speed, timeout_s=s.replay.timeout_s, connect_timeout_s=s.replay.connect_timeout_s,
        max_in_flight=s.replay.max_in_flight, max_response_bytes=s.replay.max_response_bytes,
        prediction_path=s.output.prediction, confidence_path=s.output.confidence, schema=s.output.schema,
        route_schemas=s.output.route_schemas, max_duration_s=s.replay.max_duration_s,
        secrets=tuple(v for v in s.replay.headers.values() if v), detectors=s.output.detectors,
        rows=s.output.rows)
    outcome = run_replay(plan, {"legs": store.write_legs, "events": store.write_events,
                                "resources": store.write_resources},
                         ReplayOptions(progress_every_s=60), sampler=sampler, log=lambda m: None)
    store.close()
    return duckdb.connect(str(run / "results.duckdb"), read_only=True), outcome
