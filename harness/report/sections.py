"""summary.json + report data -> the plain rows each section of the template prints.

No HTML here (the template escapes everything it is given); no judgement either: statuses, intervals
and reasons come from the gate results as they are."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .formatting import (DASH, NBSP, fmt_allowance, fmt_int, fmt_mb, fmt_ms, fmt_num, fmt_pct, gate_effect, gate_interval,
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


@dataclass
class _VersionColumns:
    """What the side-by-side table reads for each version shown."""
    present: list[str]
    aa: bool
    versions: dict[str, Any]
    resources: dict[str, dict[str, Any]]
    legs: dict[str, Any]
    kinds: dict[str, dict[str, int]]
    llm: dict[str, dict[str, Any]]
    rows: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def of(cls, summary: dict[str, Any], data: ReportData | None) -> "_VersionColumns":
        versions = summary.get("versions") or {}
        resources = summary.get("resources") or {}
        # a version with scores but no legs (scores imported for a version not replayed) is not a column
        present = [v for v in VERSIONS if (versions.get(v) or {}).get("legs")] or [v for v in versions if v in VERSIONS]
        aa = (summary.get("run") or {}).get("mode") == "aa"
        # A/A mode samples one server, stored under baseline
        res = {v: resources.get(v) or (resources.get("baseline") if aa else None) or {} for v in present}
        legs = {v: (data.analysed_legs.get(v) if data else None) or versions[v].get("legs") for v in present}
        kinds = {v: (data.error_kinds.get(v) if data else None) or versions[v].get("error_kinds") or {}
                 for v in present}
        return cls(present, aa, versions, res, legs, kinds, (data.llm if data else {}) or {})

    def add(self, label: str, values: dict[str, Any], fmt: Any, change: Any = None, group: str = "") -> None:
        """One row, left out when every version lacks the value."""
        if all(values.get(v) is None for v in self.present):
            return
        shown = [fmt(values.get(v)) if values.get(v) is not None else DASH for v in self.present]
        delta = change(values.get("baseline"), values.get("candidate")) if change and len(self.present) == 2 else ""
        self.rows.append({"label": label, "cells": shown, "change": delta, "group": group})

    def summary_of(self, key: str) -> dict[str, Any]:
        return {v: self.versions[v].get(key) for v in self.present}

    def resource(self, key: str) -> dict[str, Any]:
        return {v: self.resources[v].get(key) for v in self.present}

    def llm_of(self, key: str) -> dict[str, Any]:
        return {v: (self.llm.get(v) or {}).get(key) for v in self.present}


def _size(v: float) -> str:
    return f"{v:,.0f} B".replace(",", "\u202f")


def _tenths(x: float) -> str:
    return f"{x:.1f}"


def _latency_rows(t: _VersionColumns) -> None:
    t.add("Requests analysed", t.legs, fmt_int, group="Volume")
    t.add("Latency p50", t.summary_of("p50_ms"), fmt_ms, _ratio_change, "Latency (from intended send time)")
    for q in ("p95", "p99", "max"):
        t.add(f"Latency {q}", t.summary_of(f"{q}_ms"), fmt_ms, _ratio_change)


def _failure_rows(t: _VersionColumns) -> None:
    timeouts = {v: (t.kinds[v].get("timeout", 0) / t.legs[v]) if t.legs[v] else None for v in t.present}
    t.add("Timeout rate", timeouts, fmt_pct, _points_change, "Failures")
    t.add("Error rate", t.summary_of("error_rate"), fmt_pct, _points_change)
    t.add("Error kinds", dict(t.kinds), lambda k: ", ".join(f"{name} {n}" for name, n in k.items()) or "none")
    failures = {v: (t.versions[v].get("schema_failures"), t.versions[v].get("schema_judged")) for v in t.present}
    t.add("Output validation failures", {v: f if f[1] else None for v, f in failures.items()},
          lambda f: f"{fmt_int(f[0])} of {fmt_int(f[1])} ({fmt_pct(f[0] / f[1])})",
          lambda b, c: _points_change(b[0] / b[1], c[0] / c[1]) if b and c else "")


def _quality_rows(t: _VersionColumns) -> None:
    scores = t.summary_of("review_score")
    if all(x is None for x in scores.values()):
        t.rows.append({"label": "Review score (mean)", "cells": ["not imported"] * len(t.present), "change": "",
                       "group": "Quality"})
    t.add("Review score (mean)", scores, fmt_num,
          lambda b, c: f"{c - b:+.3f}" if b is not None and c is not None else "", "Quality")
    t.add("Mean response size", t.summary_of("mean_response_bytes"), _size, _ratio_change)


_LLM_ROWS = (("Time to first token p50", "ttft_p50_ms", fmt_ms), ("Time to first token p95", "ttft_p95_ms", fmt_ms),
             ("Inter-token latency p50 (per-answer mean)", "itl_p50_ms", fmt_ms),
             ("Inter-token latency p95 (per-answer mean)", "itl_p95_ms", fmt_ms),
             ("Prompt tokens (mean)", "mean_prompt_tokens", _tenths),
             ("Completion tokens (mean)", "mean_completion_tokens", _tenths),
             ("Completion tokens per second", "completion_tokens_per_s", _tenths))


def _llm_rows(t: _VersionColumns) -> None:
    for i, (label, key, fmt) in enumerate(_LLM_ROWS):
        t.add(label, t.llm_of(key), fmt, _ratio_change, "LLM" if i == 0 else "")


def _resource_rows(t: _VersionColumns) -> None:
    t.add("Peak resident memory", t.resource("peak_rss_mb"), fmt_mb, _ratio_change, "Resources")
    t.add("Mean resident memory", t.resource("mean_rss_mb"), fmt_mb, _ratio_change)
    t.add("Peak CPU", t.resource("peak_cpu_percent"), lambda x: f"{x:.0f}{NBSP}%")
    t.add("Peak GPU memory", t.resource("peak_gpu_memory_mb"), fmt_mb, _ratio_change)
    t.add("Restarts", t.resource("restarts"), fmt_int)
    t.add("OOM events", t.resource("oom_events"), fmt_int)
    t.add("Resource samples", t.resource("samples"), fmt_int)


def version_table(summary: dict[str, Any], data: ReportData | None) -> dict[str, Any]:
    """Baseline and candidate side by side. Rows whose values are absent in every version are left out."""
    t = _VersionColumns.of(summary, data)
    for section in (_latency_rows, _failure_rows, _quality_rows, _llm_rows, _resource_rows):
        section(t)
    labels = {"baseline": "baseline A" if t.aa else "baseline",
              "candidate": "baseline A′ (A/A)" if t.aa else "candidate"}
    return {"columns": [labels.get(v, v) for v in t.present], "rows": t.rows, "paired": len(t.present) == 2}


def worst_segment_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for i, w in enumerate(summary.get("worst_segments") or [], 1):
        g = {**_headline_of(summary, w), **w, "name": w.get("gate")}
        out.append({"rank": i, "segment": w.get("segment"), "gate": w.get("gate"), "compare": gate_values(g),
                    "effect": gate_effect(w), "allowance_used": fmt_allowance(w.get("allowance_used", w.get("severity"))),
                    "observed": gate_observed(g), "interval": gate_interval(g),
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
    if r.get("ended_by") and not r.get("interrupted") and not r.get("stopped_early"):
        rows.append(("Sending ended", str(r["ended_by"])))
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
            ("Status", f"{run['status']}" + (f": {run['status_reason']}" if run.get("status_reason") else "")
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
