"""`harness validate SCENARIO`: everything that can be checked without sending a request."""
from __future__ import annotations

from pathlib import Path

from .compat import OutputValidator
from .errors import TrafficError
from .scenario import load_scenario
from .traffic.readers import detect_format

__all__ = ["validate_scenario"]


def validate_scenario(path: Path) -> list[str]:
    s = load_scenario(path)
    if not s.traffic.path.exists():
        raise TrafficError(f"{path}: traffic.path: capture file not found: {s.traffic.path}")
    fmt = detect_format(s.traffic.path, s.traffic.format)
    OutputValidator(s.output.schema, s.output.route_schemas)
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
    return lines
