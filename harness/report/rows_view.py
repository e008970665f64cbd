"""Batched answers row by row (summary["rows"], from harness.analysis.rows) as bounded rows for the
template: the row-level confusion matrix, row flips per segment ranked by rate, and a few flipped rows.
Examples carry the request id, the row's position, labels and scores only, never the payload; labels are
shortened. Optional: a summary without rows renders without the section."""
from __future__ import annotations

from typing import Any

from .formatting import DASH, fmt_int, fmt_num, fmt_pct

__all__ = ["rows_view", "MAX_ROW_LABELS", "MAX_ROW_SEGMENTS", "LABEL_CHARS"]

MAX_ROW_LABELS = 8
MAX_ROW_SEGMENTS = 12
LABEL_CHARS = 40


def _short(v: Any) -> str:
    if v is None:
        return DASH
    s = str(v)
    return s if len(s) <= LABEL_CHARS else s[:LABEL_CHARS - 1] + "…"


def _interval(ci: Any) -> str:
    if not isinstance(ci, list) or len(ci) != 2 or None in ci:
        return DASH
    return f"{fmt_pct(ci[0])} to {fmt_pct(ci[1])}"


def rows_view(summary: dict[str, Any]) -> dict[str, Any] | None:
    rows = summary.get("rows")
    if not isinstance(rows, dict) or not rows.get("judged_rows"):
        return None
    labels = [str(x) for x in rows.get("labels") or []]
    matrix = rows.get("confusion") or []
    totals = [sum(r) + sum(matrix[j][i] for j in range(len(matrix))) for i, r in enumerate(matrix)]
    keep = sorted(range(len(labels)), key=lambda i: -totals[i])[:MAX_ROW_LABELS]
    counts = rows.get("counts") or {}
    overall = rows.get("overall") or {}
    segments = [s for s in rows.get("segments") or [] if isinstance(s, dict)]
    return {
        "judged": fmt_int(rows.get("judged_rows")),
        "flip_rate": fmt_pct(overall.get("flip_rate")), "interval": _interval(overall.get("ci")),
        "requests": fmt_int(overall.get("requests")), "design_effect": fmt_num(overall.get("design_effect"), 2),
        "mismatched": fmt_int(counts.get("mismatched_legs")),
        "invalid": {"baseline": fmt_int(counts.get("invalid_baseline", 0)),
                    "candidate": fmt_int(counts.get("invalid_candidate", 0))},
        "invalid_reasons": [{"version": r.get("version"), "reason": _short(r.get("reason")), "rows": fmt_int(r.get("rows"))}
                            for r in (rows.get("invalid_reasons") or [])[:5]],
        "names": [_short(labels[i]) for i in keep],
        "matrix": [{"label": _short(labels[i]), "cells": [fmt_int(matrix[i][j]) for j in keep]} for i in keep],
        "labels_hidden": max(0, len(labels) - MAX_ROW_LABELS),
        "segments": [{"segment": s.get("segment"), "flip_rate": fmt_pct(s.get("flip_rate")),
                      "interval": _interval(s.get("ci")), "flips": fmt_int(s.get("flips")), "rows": fmt_int(s.get("rows")),
                      "requests": fmt_int(s.get("requests"))} for s in segments[:MAX_ROW_SEGMENTS]],
        "segments_hidden": max(0, len(segments) - MAX_ROW_SEGMENTS),
        "examples": [{"request_id": _short(e.get("request_id")), "row": e.get("row"), "batch_size": e.get("batch_size"),
                      "baseline": _short(e.get("baseline_label")), "candidate": _short(e.get("candidate_label")),
                      "baseline_score": fmt_num(e.get("baseline_score")),
                      "candidate_score": fmt_num(e.get("candidate_score"))} for e in rows.get("examples") or []],
    }
