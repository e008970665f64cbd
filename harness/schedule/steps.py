"""The steps: the shadow replay already done, then one live step per canary share, each with its minimum
duration and the basis for it."""
from __future__ import annotations

import math
from typing import Any

from .policy import LOW_SHARE_PERCENT, MIN_STEP_S, RESOURCE_SOAK_S


def _scope_results(gates: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The first result of each gate is its own scope (overall, or the segment the gate names)."""
    out: dict[str, dict[str, Any]] = {}
    for g in gates:
        out.setdefault(g["name"], g)
    return out



def _shadow_step(summary: dict[str, Any], sizing: list[dict[str, Any]], traffic: dict[str, Any]) -> dict[str, Any]:
    counts, replay, run = summary.get("counts") or {}, summary.get("replay") or {}, summary.get("run") or {}
    gates = summary.get("gates") or []
    tally = {k: sum(1 for g in gates if g["status"] == k) for k in ("pass", "fail", "inconclusive")}
    scope = _scope_results(gates)
    per_gate = []
    for s in sizing:
        r = scope.get(s["gate"]) or {}
        per_gate.append({"gate": s["gate"], "segment": s["segment"], "status": r.get("status"), "n": r.get("n"),
                         "paired_n_needed": s["shadow_paired_n"], "observed": r.get("observed"),
                         "ci": r.get("ci"), "reason": r.get("reason")})
    return {"name": "shadow", "traffic_percent": 0, "kind": "shadow", "status": "done",
            "evidence": {"run_id": run.get("id"), "verdict": summary.get("verdict"),
                         "requests_replayed": counts.get("replayed"), "pairs_analysed": counts.get("analysed"),
                         "captured_span_s": traffic["captured_span_s"], "replay_speed": run.get("speed"),
                         "replay_wall_s": replay.get("wall_s"), "gate_results": tally, "gates": per_gate},
            "basis": "the paired replay already done: every candidate answer was compared with the baseline's on "
                     "the same request, with no user exposed; its results are summary.json's gates"}


def _live_step(pct: float, first: bool, rate: float | None, sizing: list[dict[str, Any]],
               segment: dict[str, Any] | None, traffic: dict[str, Any], heavy: dict[str, Any],
               risk: dict[str, Any]) -> dict[str, Any]:
    w = pct / 100.0
    step: dict[str, Any] = {"name": f"canary-{pct:g}", "traffic_percent": pct, "kind": "live",
                            "candidate_rps": w * rate if rate else None}
    sized = [s for s in sizing if s["requests"] is not None]
    per_gate = []
    for s in sized:
        dur = s["requests"] / (w * rate * s["scope_share"]) if rate and s["scope_share"] > 0 else None
        per_gate.append({"gate": s["gate"], "segment": s["segment"], "requests": s["requests"],
                         "duration_s": round(dur, 1) if dur is not None else None, "manual": s["manual"]})
    step["gates"] = per_gate
    # Manual gates (human review) are judged offline on sampled canary answers: their time is listed per gate
    # but does not hold the step; the rollout tools can only wait for what they can measure.
    timed = [g for g in per_gate if g["duration_s"] is not None and not g["manual"]]
    driving = max(timed, key=lambda g: g["duration_s"], default=None)
    step["requests_needed"] = max((g["requests"] for g in per_gate if not g["manual"]), default=None)
    step["driving_gate"] = driving["gate"] if driving else None
    stat_s = driving["duration_s"] if driving else None
    step["statistical_duration_s"] = stat_s
    duration, adjustments = _adjusted_duration(stat_s, pct, first, traffic, heavy, risk)
    step["adjustments"] = adjustments
    if rate is None or driving is None:
        step["min_duration_s"] = None
        step["min_duration"] = None
        step["basis"] = "no duration: " + ("no production rate" if rate is None else "no gate could be sized")
    else:
        step["min_duration_s"] = int(math.ceil(duration / 60.0) * 60)
        step["min_duration"] = format_duration(step["min_duration_s"])
        step["basis"] = (f"{driving['requests']} requests for {driving['gate']} / ({pct:g} % x {rate:.4g} rps"
                         + (f" x scope share {_share_of(sized, driving['gate']):.3g}" if driving["segment"] else "")
                         + f") = {stat_s:.0f} s" + "".join(f"; {a['kind']}: " + (f"x{a['factor']:.2f}" if "factor" in a
                                                                                  else f"at least {a['floor_s']} s")
                                                             for a in adjustments)
                         + f"; rounded up to whole minutes = {step['min_duration']}"
                         + "".join(f"; manual gate {g['gate']} needs {g['requests']} reviewed answers "
                                   f"({format_duration(g['duration_s'])} of canary traffic at this share), judged "
                                   "offline: it does not hold the step" for g in per_gate
                                   if g["manual"] and g["duration_s"] is not None))
    step["smallest_segment"] = _segment_in_step(segment, pct, rate, step["min_duration_s"]) if segment else None
    return step


def _adjusted_duration(stat_s: float | None, pct: float, first: bool, traffic: dict[str, Any], heavy: dict[str, Any],
                       risk: dict[str, Any]) -> tuple[float, list[dict[str, Any]]]:
    """(duration, adjustments): the statistical duration lengthened at a low share of bursty traffic, then
    held to the floors (minimum step, soak window of a resource-heavy candidate, daily cycle of a risky one)."""
    adjustments: list[dict[str, Any]] = []
    duration = stat_s or 0.0
    if stat_s is None:
        return duration, adjustments
    burst = traffic["burstiness"]
    if burst["bursty"] and pct <= LOW_SHARE_PERCENT:
        duration = stat_s * burst["factor_at_low_shares"]
        adjustments.append({"kind": "bursty traffic", "factor": burst["factor_at_low_shares"],
                            "basis": f"low share (<= {LOW_SHARE_PERCENT:g} %) of bursty traffic: "
                                     "see traffic.burstiness"})
    floors = [("minimum step", MIN_STEP_S, f"no live step shorter than {MIN_STEP_S // 60} min (enough "
                                           "Prometheus scrapes for rate windows)")]
    if heavy["heavy"]:
        floors.append(("resource-heavy candidate", RESOURCE_SOAK_S, "soak window: see resources"))
    if first and risk["first_live_step_floor_s"]:
        floors.append(("risk", risk["first_live_step_floor_s"],
                       "full daily cycle at the first live step: see risk"))
    for kind, floor_s, basis in floors:
        if floor_s > duration:
            duration = float(floor_s)
            adjustments.append({"kind": kind, "floor_s": floor_s, "basis": basis})
    return duration, adjustments


def _segment_in_step(segment: dict[str, Any], pct: float, rate: float | None,
                     min_duration_s: int | None) -> dict[str, Any]:
    """How long the step takes to see the smallest segment's requests, and whether its duration covers that."""
    seg_s = segment["requests_needed"] / (pct / 100.0 * rate * segment["share"]) if rate else None
    return {"segment": segment["segment"], "share": segment["share"],
            "requests_needed": segment["requests_needed"],
            "duration_s": round(seg_s, 1) if seg_s is not None else None,
            "duration": format_duration(seg_s) if seg_s is not None else None,
            "covered_in_step": bool(seg_s is not None and min_duration_s is not None and seg_s <= min_duration_s),
            "basis": f"{segment['requests_needed']} / ({pct:g} % x rate x segment share "
                     f"{segment['share']:.4f})"}


def _share_of(sizing: list[dict[str, Any]], gate: str) -> float:
    return float(next(s["scope_share"] for s in sizing if s["gate"] == gate))


def format_duration(seconds: float) -> str:
    """Seconds -> a Go duration string rounded up to whole minutes ("45m", "3h47m", "24h")."""
    minutes = max(1, math.ceil(seconds / 60.0 - 1e-9))
    hours, rest = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + (f"{rest}m" if rest or not hours else "")

