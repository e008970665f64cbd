"""`harness validate SCENARIO`: everything that can be checked without sending a request."""
from __future__ import annotations

import tempfile
from pathlib import Path

from .aa_reference import read_aa_reference
from .compat import OutputValidator
from .errors import ScenarioError, TrafficError
from .gate_config import unseen_gate_values
from .run import check_send_headers
from .scenario import load_scenario
from .traffic.prepare import prepare_traffic
from .traffic.readers import detect_format

__all__ = ["validate_scenario"]


def validate_scenario(path: Path) -> list[str]:
    """The lines to print; raises (exit 3) where the scenario is invalid or would replay nothing."""
    s = load_scenario(path)
    if not s.traffic.path.exists():
        raise TrafficError(f"{path}: traffic.path: capture file not found: {s.traffic.path}")
    fmt = detect_format(s.traffic.path, s.traffic.format)
    OutputValidator(s.output.schema, s.output.route_schemas)
    check_send_headers(s)
    if s.replay.aa_reference:
        read_aa_reference(s.replay.aa_reference)
    lines = [f"{path}: valid scenario {s.name!r}",
             f"  traffic: {s.traffic.path} ({fmt}), speed {s.traffic.speed:g}x, on_bad_record {s.traffic.on_bad_record}",
             f"  mode {s.replay.mode}: " + ", ".join(f"{v} -> {s.target_for(v).url} ({s.target_for(v).protocol})"
                                                    for v in s.versions),
             f"  segments: {', '.join(x.name for x in s.segments) or '(overall only)'}",
             f"  outputs: prediction {s.output.prediction} is read as a class label (agreement, flips); "
             f"confidence {s.output.confidence} as the score (PSI, KS, mean shift): point confidence at a numeric "
             "score",
             f"  gates: {len(s.gates)}"]
    lines += [f"    {g.name}: {g.metric} {g.aggregation} {g.threshold_text} ({g.severity})" for g in s.gates]
    same_target = s.self_comparison()
    if same_target:
        lines.append(f"  warning: {same_target}")
    with tempfile.TemporaryDirectory(prefix="harness-validate-") as work:
        prepared = prepare_traffic(s, Path(work))
        lines += ["  capture: " + line for line in prepared.counts_lines()]
        lines += ["  warning: " + w for w in prepared.warnings]
        nothing = prepared.nothing_to_replay()
        if nothing is not None:
            raise TrafficError(f"{path}: {nothing}")
        unseen = unseen_gate_values(s.gates, prepared.segment_values({k for g in s.gates for k in (g.segment or {})}))
    if unseen:
        raise ScenarioError(f"{path}: {unseen[0]}" + (f" (and {len(unseen) - 1} more)" if len(unseen) > 1 else ""))
    return lines
