""""Where is the candidate worse?": segments x metrics, each cell coloured by how much of its gate's
threshold the candidate uses up. Rendered by the template as an HTML table with inline background
colours (text stays selectable, readable by screen readers, printable), never as an image.

Load of a cell: the gate result's allowance_used where the gate judged that segment (the same figure the
ranked table shows), else the same measure on the segment's point estimates: 0 = no worse than the
baseline, 1 = exactly at the gate's threshold, above 1 = beyond it. An inconclusive cell is never painted
as beyond the threshold: its interval reaches back inside it. The gate's own status for that segment is
printed in the cell too, so colour is never the only signal."""
from __future__ import annotations

import math
from typing import Any, Callable

from .formatting import DASH, NBSP, comparison_of, gate_threshold

__all__ = ["segment_heatmap", "HEATMAP_ROWS", "LEGEND"]

HEATMAP_ROWS = 60

# (upper bound of load, background, label) in increasing order; greys of these differ too
LEGEND: tuple[tuple[float, str, str], ...] = (
    (0.5, "#e8f3ea", "under half the threshold"),
    (1.0, "#fdf0c8", "half-way to the threshold"),
    (2.0, "#f6c3b8", "beyond the threshold"),
    (4.0, "#ea8f80", "over twice the threshold"),
    (math.inf, "#cf4f46", "over four times the threshold"),
)
_NEUTRAL = "#f4f4f4"


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def _colour(load: float | None) -> tuple[str, str]:
    if load is None:
        return _NEUTRAL, ""
    for bound, colour, label in LEGEND:
        if load <= bound:
            return colour, label
    return LEGEND[-1][1], LEGEND[-1][2]  # unreachable: the last bound is infinite


def _gate_for(gates: list[dict[str, Any]], metric: str, prefer_aggregation: str | None = None) -> dict[str, Any] | None:
    headline = [g for g in gates if g.get("metric") == metric]
    if prefer_aggregation:
        preferred = [g for g in headline if g.get("aggregation") == prefer_aggregation]
        headline = preferred or headline
    return headline[0] if headline else None


def _latency_load(gate: dict[str, Any] | None, b: float, c: float) -> float | None:
    if gate is None or comparison_of(gate) != "relative" or not gate.get("threshold"):
        return None
    return max(0.0, (c / b - 1) / float(gate["threshold"]))


def _error_load(gate: dict[str, Any] | None, b: float, c: float) -> float | None:
    thr = _num(gate.get("threshold")) if gate else None
    if gate is None or thr is None:
        return None
    if comparison_of(gate) == "delta":
        return max(0.0, (c - b) / thr) if thr > 0 else None
    return c / thr if thr > 0 else None


def _schema_load(gate: dict[str, Any] | None, b: float, c: float) -> float | None:
    """b and c are failure rates (1 - pass rate)."""
    thr = _num(gate.get("threshold")) if gate else None
    if gate is None or thr is None:
        return None
    if comparison_of(gate) == "delta":  # minimum_delta on the pass rate, e.g. -0.005
        return max(0.0, (c - b) / -thr) if thr < 0 else None
    allowed = 1 - thr
    return c / allowed if allowed > 0 else None


def segment_heatmap(summary: dict[str, Any]) -> dict[str, Any]:
    segments = summary.get("segments") or []
    gates = summary.get("gates") or []
    paired = any("candidate_p95_ms" in s for s in segments)
    if not segments or not paired:
        return {"rows": [], "columns": [], "hidden": 0, "paired": paired, "legend": LEGEND}
    by_key: dict[tuple[str, str | None], dict[str, Any]] = {}
    by_name: dict[tuple[str, str | None], dict[str, Any]] = {}
    for g in gates:
        by_key.setdefault((str(g.get("metric")), g.get("segment")), g)
        by_name.setdefault((str(g.get("name")), g.get("segment")), g)
    lat_gate = _gate_for(gates, "latency_ms", "p95")
    err_gate = _gate_for(gates, "error_rate")
    sch_gate = _gate_for(gates, "schema_pass_rate")

    Metric = tuple[str, str, Callable[[dict[str, Any]], tuple[float, float] | None],
                   Callable[[float, float], str], Callable[[float, float], float | None]]

    def pair(bkey: str, ckey: str, invert: bool = False) -> Callable[[dict[str, Any]], tuple[float, float] | None]:
        def get(s: dict[str, Any]) -> tuple[float, float] | None:
            b, c = _num(s.get(bkey)), _num(s.get(ckey))
            if b is None or c is None:
                return None
            return (1 - b, 1 - c) if invert else (b, c)
        return get

    metrics: list[Metric] = [
        ("p95 latency change", "latency_ms", pair("baseline_p95_ms", "candidate_p95_ms"),
         lambda b, c: f"{100 * (c / b - 1):+.1f}{NBSP}%" if b else DASH, lambda b, c: _latency_load(lat_gate, b, c) if b else None),
        ("error rate change", "error_rate", pair("baseline_error_rate", "candidate_error_rate"),
         lambda b, c: f"{100 * (c - b):+.2f}{NBSP}pts", lambda b, c: _error_load(err_gate, b, c)),
        ("schema failure change", "schema_pass_rate",
         pair("baseline_schema_pass_rate", "candidate_schema_pass_rate", invert=True),
         lambda b, c: f"{100 * (c - b):+.2f}{NBSP}pts", lambda b, c: _schema_load(sch_gate, b, c)),
    ]
    rows = []
    for s in segments:
        label = str(s.get("segment") or f"{s.get('segment_name')}={s.get('segment_value')}")
        cells, worst = [], -1.0
        for _title, metric, get, fmt, load_of in metrics:
            values = get(s)
            gate = by_key.get((metric, label))
            if values is None:
                cells.append({"text": DASH, "detail": "", "colour": _NEUTRAL, "band": "no data", "status": "",
                              "status_text": ""})
                continue
            b, c = values
            if metric == "latency_ms" and lat_gate is not None:
                # the column's own gate (not another latency gate of the segment, a p50), and its p95s where it
                # has them: Harrell-Davis with failed legs as the slowest, the figures of its row in the gate
                # table. The segment overview's plain p95 of every leg showed a route whose candidate failed 3 %
                # of requests as "-0.0 %" beside that gate's FAIL at +44.7 %.
                gate = by_name.get((str(lat_gate.get("name")), label))
                gb, gc = (_num(gate.get("baseline")), _num(gate.get("candidate"))) if gate else (None, None)
                if gate is not None and gate.get("aggregation") == "p95" and gb and gc is not None:
                    b, c = gb, gc
            status = str(gate.get("status")) if gate else ""
            if gate is not None and gate.get("observed") is None and gate.get("ci") is None:
                # the gate could not estimate anything here (too few requests): a colour would be noise
                cells.append({"text": fmt(b, c), "colour": _NEUTRAL, "band": "too few requests to judge",
                              "detail": _detail(metric, b, c), "status": status, "status_text": "too few"})
                continue
            used = _num(gate.get("allowance_used")) if gate else None
            load = max(0.0, used) if used is not None else load_of(b, c)
            if status == "inconclusive" and load is not None and load > 1.0:
                load = 1.0
                colour, band = LEGEND[1][1], "inconclusive: the estimate is past the threshold, its interval is not"
            else:
                colour, band = _colour(load)
            worst = max(worst, load if load is not None else -1.0)
            cells.append({"text": fmt(b, c), "colour": colour, "band": band,
                          "detail": _detail(metric, b, c), "status": status,
                          "status_text": {"fail": "FAIL", "inconclusive": "?", "pass": "✓"}.get(status, "")})
        rows.append({"segment": label, "name": s.get("segment_name"), "n": s.get("n"), "cells": cells,
                     "worst": worst, "any_fail": any(c["status"] == "fail" for c in cells)})
    rows.sort(key=lambda r: (not r["any_fail"], -r["worst"], r["segment"]))
    return {"rows": rows[:HEATMAP_ROWS], "hidden": max(0, len(rows) - HEATMAP_ROWS), "paired": True,
            "columns": [m[0] for m in metrics], "legend": LEGEND,
            "thresholds": [gate_threshold(g) if g else None for g in (lat_gate, err_gate, sch_gate)]}


def _detail(metric: str, b: float, c: float) -> str:
    if metric == "latency_ms":
        return f"{b:.1f} → {c:.1f}{NBSP}ms"
    return f"{100 * b:.2f}{NBSP}% → {100 * c:.2f}{NBSP}%"
