"""summary.json + report data -> the plain rows each section of the template prints.

No HTML here (the template escapes everything it is given); no judgement either: statuses, intervals
and reasons come from the gate results as they are."""
from __future__ import annotations

from typing import Any

from .formatting import (DASH, NBSP, fmt_int, fmt_mb, fmt_ms, fmt_num, fmt_pct, gate_effect, gate_interval,
                         gate_observed, gate_threshold, gate_values, status_label)
from .queries import ReportData

__all__ = ["gate_sections", "version_table", "worst_segment_rows", "fidelity_rows", "accounting_rows",
           "metadata_rows", "example_groups", "MAX_COLLAPSED_GATES"]

MAX_COLLAPSED_GATES = 600
VERSIONS = ("baseline", "candidate")


def _gate_row(g: dict[str, Any], headline: bool) -> dict[str, Any]:
    return {"name": g.get("name"), "scope": g.get("segment") or "overall", "headline": headline,
            "observed": gate_observed(g), "compare": gate_values(g), "threshold": gate_threshold(g),
            "interval": gate_interval(g), "n": fmt_int(g.get("n")), "status": g.get("status"),
            "status_label": status_label(str(g.get("status")), g.get("severity")), "severity": g.get("severity"),
            "reason": g.get("reason") or ""}


def gate_sections(gates: list[dict[str, Any]]) -> dict[str, Any]:
    """Each gate's own result first (overall, or the segment the gate names: the first result of each
    gate), then per-segment failures, then the per-segment rest, which the template collapses."""
    seen: set[str] = set()
    headline, failures, rest = [], [], []
    for g in gates:
        if g.get("name") not in seen:
            seen.add(str(g.get("name")))
            headline.append(_gate_row(g, True))
        elif g.get("status") == "fail":
            failures.append(_gate_row(g, False))
        else:
            rest.append(g)
    order = {"inconclusive": 0, "pass": 1}
    rest.sort(key=lambda g: (order.get(str(g.get("status")), 2), str(g.get("name")), str(g.get("segment"))))
    counts = {s: sum(1 for g in rest if g.get("status") == s) for s in ("inconclusive", "pass")}
    return {"headline": headline, "segment_failures": failures,
            "rest": [_gate_row(g, False) for g in rest[:MAX_COLLAPSED_GATES]],
            "rest_total": len(rest), "rest_hidden": max(0, len(rest) - MAX_COLLAPSED_GATES), "rest_counts": counts}


def _ratio_change(b: Any, c: Any) -> str:
    if isinstance(b, (int, float)) and isinstance(c, (int, float)) and b:
        return f"{100 * (c / b - 1):+.1f}{NBSP}%"
    return ""


def _points_change(b: Any, c: Any) -> str:
    if isinstance(b, (int, float)) and isinstance(c, (int, float)):
        return f"{100 * (c - b):+.2f}{NBSP}pts"
    return ""


def version_table(summary: dict[str, Any], data: ReportData | None) -> dict[str, Any]:
    """Baseline and candidate side by side. Rows whose values are absent in every version are left out."""
    versions = summary.get("versions") or {}
    resources = summary.get("resources") or {}
    # a version with scores but no legs (scores imported for a version not replayed) is not a column
    present = [v for v in VERSIONS if (versions.get(v) or {}).get("legs")] or [v for v in versions if v in VERSIONS]
    aa = (summary.get("run") or {}).get("mode") == "aa"
    # A/A mode samples one server, stored under baseline
    res = {v: resources.get(v) or (resources.get("baseline") if aa else None) or {} for v in present}
    legs = {v: (data.analysed_legs.get(v) if data else None) or versions[v].get("legs") for v in present}
    kinds = {v: (data.error_kinds.get(v) if data else None) or versions[v].get("error_kinds") or {} for v in present}
    rows: list[dict[str, Any]] = []

    def add(label: str, values: dict[str, Any], fmt: Any, change: Any = None, group: str = "") -> None:
        if all(values.get(v) is None for v in present):
            return
        shown = [fmt(values.get(v)) if values.get(v) is not None else DASH for v in present]
        delta = change(values.get("baseline"), values.get("candidate")) if change and len(present) == 2 else ""
        rows.append({"label": label, "cells": shown, "change": delta, "group": group})

    get = lambda key: {v: versions[v].get(key) for v in present}  # noqa: E731
    add("Requests analysed", legs, fmt_int, group="Volume")
    add("Latency p50", get("p50_ms"), fmt_ms, _ratio_change, "Latency (from intended send time)")
    add("Latency p95", get("p95_ms"), fmt_ms, _ratio_change)
    add("Latency p99", get("p99_ms"), fmt_ms, _ratio_change)
    add("Latency max", get("max_ms"), fmt_ms, _ratio_change)
    timeouts = {v: (kinds[v].get("timeout", 0) / legs[v]) if legs[v] else None for v in present}
    add("Timeout rate", timeouts, fmt_pct, _points_change, "Failures")
    add("Error rate", get("error_rate"), fmt_pct, _points_change)
    add("Error kinds", {v: kinds[v] for v in present},
        lambda k: ", ".join(f"{name} {n}" for name, n in k.items()) or "none")
    failures = {v: (versions[v].get("schema_failures"), versions[v].get("schema_judged")) for v in present}
    add("Output validation failures",
        {v: f if f[1] else None for v, f in failures.items()},
        lambda f: f"{fmt_int(f[0])} of {fmt_int(f[1])} ({fmt_pct(f[0] / f[1])})",
        lambda b, c: _points_change(b[0] / b[1], c[0] / c[1]) if b and c else "")
    scores = get("review_score")
    if all(x is None for x in scores.values()):
        rows.append({"label": "Review score (mean)", "cells": ["not imported"] * len(present), "change": "",
                     "group": "Quality"})
    add("Review score (mean)", scores, fmt_num,
        lambda b, c: f"{c - b:+.3f}" if b is not None and c is not None else "", "Quality")
    add("Mean response size", get("mean_response_bytes"), lambda v: f"{v:,.0f} B".replace(",", "\u202f"),
        _ratio_change)
    llm = (data.llm if data else {}) or {}
    add("Time to first token p50", {v: (llm.get(v) or {}).get("ttft_p50_ms") for v in present}, fmt_ms,
        _ratio_change, "LLM")
    add("Time to first token p95", {v: (llm.get(v) or {}).get("ttft_p95_ms") for v in present}, fmt_ms,
        _ratio_change)
    add("Inter-token latency p50 (per-answer mean)", {v: (llm.get(v) or {}).get("itl_p50_ms") for v in present},
        fmt_ms, _ratio_change)
    add("Inter-token latency p95 (per-answer mean)", {v: (llm.get(v) or {}).get("itl_p95_ms") for v in present},
        fmt_ms, _ratio_change)
    add("Prompt tokens (mean)", {v: (llm.get(v) or {}).get("mean_prompt_tokens") for v in present},
        lambda x: f"{x:.1f}", _ratio_change)
    add("Completion tokens (mean)", {v: (llm.get(v) or {}).get("mean_completion_tokens") for v in present},
        lambda x: f"{x:.1f}", _ratio_change)
    add("Completion tokens per second", {v: (llm.get(v) or {}).get("completion_tokens_per_s") for v in present},
        lambda x: f"{x:.1f}", _ratio_change)
    rget = lambda key: {v: res[v].get(key) for v in present}  # noqa: E731
    add("Peak resident memory", rget("peak_rss_mb"), fmt_mb, _ratio_change, "Resources")
    add("Mean resident memory", rget("mean_rss_mb"), fmt_mb, _ratio_change)
    add("Peak CPU", rget("peak_cpu_percent"), lambda x: f"{x:.0f}{NBSP}%")
    add("Peak GPU memory", rget("peak_gpu_memory_mb"), fmt_mb, _ratio_change)
    add("Restarts", rget("restarts"), fmt_int)
    add("OOM events", rget("oom_events"), fmt_int)
    add("Resource samples", rget("samples"), fmt_int)
    labels = {"baseline": "baseline A" if aa else "baseline", "candidate": "baseline A′ (A/A)" if aa else "candidate"}
    return {"columns": [labels.get(v, v) for v in present], "rows": rows, "paired": len(present) == 2}


def worst_segment_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, w in enumerate(summary.get("worst_segments") or [], 1):
        g = {**_headline_of(summary, w), **w, "name": w.get("gate")}
        out.append({"rank": i, "segment": w.get("segment"), "gate": w.get("gate"), "compare": gate_values(g),
                    "effect": gate_effect(w), "observed": gate_observed(g), "interval": gate_interval(g),
                    "threshold": gate_threshold(g), "n": fmt_int(w.get("n")), "status": w.get("status"),
                    "status_label": status_label(str(w.get("status"))), "reason": w.get("reason") or ""})
    return out


def _headline_of(summary: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    """unit, threshold_text (and comparison, where present) of the gate a ranked row belongs to."""
    for g in summary.get("gates") or []:
        if g.get("name") == row.get("gate"):
            return {k: g[k] for k in ("unit", "threshold_text", "comparison", "severity") if k in g}
    return {}


def fidelity_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    r = summary.get("replay") or {}
    bound = r.get("lag_bound_ms")
    rows = [("Send lag p50", fmt_ms(r.get("lag_p50_ms"))),
            ("Send lag p99", fmt_ms(r.get("lag_p99_ms")) + (f" (bound {fmt_ms(bound)})" if bound is not None else "")),
            ("Send lag max", fmt_ms(r.get("lag_max_ms"))),
            ("Pair skew p99 (baseline vs candidate send)", fmt_ms(r.get("pair_skew_p99_ms"))),
            ("Replay wall time", f"{r['wall_s']:.1f} s" if isinstance(r.get("wall_s"), (int, float)) else DASH),
            ("Requests dispatched", fmt_int(r.get("dispatched"))),
            ("Skipped at the in-flight limit", fmt_int(r.get("skipped_in_flight"))),
            ("Result sink failures", fmt_int(r.get("sink_failures")))]
    if r.get("last_sink_error"):
        rows.append(("Last sink error", str(r["last_sink_error"])))
    for key, label in (("interrupted", "Interrupted"), ("stopped_early", "Stopped early")):
        if r.get(key):
            rows.append((label, str(r[key])))
    if r.get("delivered") is not None:
        rows.append(("Load delivered", "yes" if r["delivered"] else "no: " + "; ".join(r.get("problems") or [])))
    for i, advice in enumerate(r.get("advice") or []):
        rows.append(("What to change" if i == 0 else "", advice))
    return rows


def accounting_rows(summary: dict[str, Any]) -> dict[str, Any]:
    c = summary.get("counts") or {}
    replayed, expected = c.get("replayed") or 0, c.get("legs_expected") or 0
    legs_per = expected // replayed if replayed else 2
    unique = (c.get("replayed") or 0) if (c.get("loops") or 1) == 1 else None
    captured_line = (f"captured {fmt_int(c.get('captured'))} = replayed {fmt_int(c.get('replayed'))} + skipped "
                     f"{fmt_int(c.get('skipped_total'))} + bad {fmt_int(c.get('bad_records'))}")
    if unique is None:
        captured_line += f" (replayed over {c.get('loops')} loops of the capture: checked per loop)"
    legs_line = (f"legs {fmt_int(c.get('legs'))} = {legs_per} × replayed {fmt_int(c.get('replayed'))}"
                 f" (expected {fmt_int(c.get('legs_expected'))})")
    return {"captured_line": captured_line, "captured_ok": bool(c.get("captured_balanced")),
            "legs_line": legs_line, "legs_ok": c.get("legs") == c.get("legs_expected"),
            "ok": bool(c.get("accounting_ok")), "warmup": c.get("warmup") or 0,
            "skipped": sorted((c.get("skipped") or {}).items(), key=lambda kv: -kv[1])}


def metadata_rows(summary: dict[str, Any]) -> list[tuple[str, str]]:
    run = summary.get("run") or {}
    speed = run.get("speed")
    rows = [("Run id", run.get("id")), ("Scenario", run.get("scenario")), ("Scenario sha256", run.get("scenario_sha256")),
            ("Capture", run.get("capture_path")), ("Capture sha256", run.get("capture_sha256")),
            ("Mode", run.get("mode")), ("Speed", f"{speed:g}× the captured rate" if isinstance(speed, (int, float)) else None),
            ("Baseline URL", run.get("baseline_url")), ("Candidate URL", run.get("candidate_url")),
            ("Started", run.get("started_at")), ("Finished", run.get("finished_at")),
            ("Status", run.get("status") + (f": {run['status_reason']}" if run.get("status_reason") else "")
             if run.get("status") else None),
            ("Owner", run.get("owner")), ("Harness version (run)", run.get("harness_version")),
            ("Harness version (report)", run.get("report_harness_version")),
            ("Git commit", run.get("git_commit") or "not known")]
    return [(k, str(v) if v is not None else DASH) for k, v in rows]


def example_groups(data: ReportData | None) -> list[dict[str, Any]]:
    if data is None:
        return []
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for e in data.examples:
        groups.setdefault((e["version"], e["kind"]), []).append(e)
    return [{"version": v, "kind": k, "total": data.example_totals.get((v, k), len(rows)), "rows": rows}
            for (v, k), rows in groups.items()]
