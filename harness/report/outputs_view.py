"""How the answers differ (summary["outputs"], from harness.analysis.output_diff), the A/A noise floor
and the canary plan, as bounded rows for the template. Every block is optional: a summary written
without it renders without the section."""
from __future__ import annotations

from typing import Any

from .formatting import DASH, NBSP, fmt_int, fmt_pct

__all__ = ["output_diff_view", "noise_floor_view", "schedule_view", "MAX_FIELDS", "MAX_LABELS", "MAX_NOISE_ROWS"]

MAX_FIELDS = 15
MAX_LABELS = 8
MAX_NOISE_ROWS = 40


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _are_scores(labels: dict[str, Any]) -> bool:
    """Predictions that are numbers with a fractional part, or more distinct numbers than a label table
    shows, are scores (a probability, a risk score): a confusion table of them is noise."""
    seen = {*(labels.get("baseline_labels") or {}), *(labels.get("candidate_labels") or {})}
    numbers = []
    for label in seen:
        try:
            numbers.append(float(label))
        except (TypeError, ValueError):
            return False
    return bool(numbers) and (len(numbers) > MAX_LABELS or any(not x.is_integer() for x in numbers))


def output_diff_view(summary: dict[str, Any]) -> dict[str, Any] | None:
    out = summary.get("outputs")
    if not isinstance(out, dict) or not out.get("pairs"):
        return None
    fields = [f for f in out.get("fields") or [] if isinstance(f, dict)]
    rows = [{"path": f.get("path"), "kind": f.get("kind"), "n": fmt_int(f.get("n")),
             "diff_rate": fmt_pct(f.get("diff_rate")), "aa_rate": fmt_pct(f.get("aa_rate")) if f.get("aa_rate")
             is not None else DASH, "noise": bool(f.get("ignored")) or not f.get("reported", True)}
            for f in fields[:MAX_FIELDS]]
    not_compared = out.get("not_compared") or {}
    view: dict[str, Any] = {
        "pairs": fmt_int(out.get("pairs")), "compared": fmt_int(out.get("compared")),
        "not_compared": ", ".join(f"{k} {v}" for k, v in not_compared.items() if v) or "none",
        "field_diff_rate": fmt_pct(out.get("field_diff_rate")),
        "fields": rows, "fields_hidden": max(0, len(fields) - MAX_FIELDS) + int(out.get("fields_not_listed") or 0),
        "labels": None, "scores_as_labels": None,
    }
    labels = out.get("labels")
    if isinstance(labels, dict) and labels.get("n") and _are_scores(labels):
        seen = {*(labels.get("baseline_labels") or {}), *(labels.get("candidate_labels") or {})}
        view["scores_as_labels"] = {"n": fmt_int(labels.get("n")), "distinct": fmt_int(len(seen))}
    elif isinstance(labels, dict) and labels.get("n"):
        confusion = labels.get("confusion") or {}
        names = sorted({*confusion, *[c for row in confusion.values() for c in (row or {})]},
                       key=lambda k: -sum((confusion.get(k) or {}).values()))[:MAX_LABELS]
        view["labels"] = {
            "n": fmt_int(labels.get("n")), "agreement": fmt_pct(labels.get("agreement")),
            "kappa": f"{labels['kappa']:.3f}" if _num(labels.get("kappa")) is not None else DASH,
            "names": names,
            "matrix": [{"label": b, "cells": [fmt_int((confusion.get(b) or {}).get(c, 0)) for c in names]}
                       for b in names],
            "only_baseline": labels.get("only_baseline") or [], "only_candidate": labels.get("only_candidate") or [],
            "unlabelled": labels.get("unlabelled") or {},
        }
    return view


def noise_floor_view(summary: dict[str, Any]) -> dict[str, Any] | None:
    """An A/A run's gate deltas are its noise floor; a paired run may name the A/A run it was judged against."""
    floor = summary.get("noise_floor")
    ref = summary.get("aa_reference")
    if not floor and not ref:
        return None
    rows = []
    for x in (floor or [])[:MAX_NOISE_ROWS]:
        ci = x.get("ci")
        rows.append({"gate": x.get("gate"), "segment": x.get("segment") or "overall",
                     "delta": f"{x['delta']:+.4g}" if _num(x.get("delta")) is not None else DASH,
                     "ci": f"{ci[0]:+.4g} to {ci[1]:+.4g}" if ci and len(ci) == 2 and None not in ci else DASH,
                     "n": fmt_int(x.get("n"))})
    return {"rows": rows, "hidden": max(0, len(floor or []) - MAX_NOISE_ROWS), "reference": ref}


def schedule_view(summary: dict[str, Any]) -> dict[str, Any] | None:
    sched = summary.get("schedule")
    if not isinstance(sched, dict) or not sched.get("steps"):
        return None
    steps = []
    for st in sched["steps"]:
        if not isinstance(st, dict):
            continue
        pct = _num(st.get("traffic_percent"))
        steps.append({"name": st.get("name"), "traffic": f"{pct:g}{NBSP}%" if pct is not None else DASH,
                      "kind": st.get("kind") or "", "status": st.get("status") or "",
                      "duration": st.get("min_duration") or (f"{st['min_duration_s']:g}{NBSP}s"
                                                             if _num(st.get("min_duration_s")) is not None else DASH),
                      "requests": fmt_int(st.get("requests_needed")), "driver": st.get("driving_gate") or "",
                      "basis": st.get("basis") or ""})
    banner = str(sched.get("banner") or "")
    for prefix in ("do not start: ", "start: "):  # the template says it in its own words
        if banner.lower().startswith(prefix):
            banner = banner[len(prefix):]
    return {"banner": banner, "start_allowed": sched.get("start_allowed"), "owner": sched.get("owner"),
            "steps": steps}
