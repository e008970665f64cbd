"""The canary schedule of one run: its traffic, sizing, steps and rollback conditions, as plain data."""
from __future__ import annotations

from typing import Any

import duckdb

from .policy import _RESOURCE_METRICS
from .profile import _resource_weight, _risk, traffic_profile
from .rollback import _rollback_condition
from .sizing import _size_gate, _smallest_segment
from .steps import _live_step, _scope_results, _shadow_step


def build_schedule(summary: dict[str, Any], scenario: Any, con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The canary schedule of one run (plain data, JSON- and YAML-safe). ``summary`` is the judgement
    so far (outputs.judge), ``con`` a read-only connection to the run's results.duckdb."""
    alpha, power = float(scenario.analysis.alpha), float(scenario.canary.power)
    verdict = summary.get("verdict", "HOLD")
    reasons = list(summary.get("verdict_reasons") or [])
    traffic = traffic_profile(con, scenario)
    rate = traffic["production_rps"]
    first_results = _scope_results(summary.get("gates") or [])
    sizing = [_size_gate(spec, first_results.get(spec.name), con, alpha, power) for spec in scenario.gates]
    segment = _smallest_segment(summary.get("segments") or [], sizing)
    heavy = _resource_weight(summary.get("resources") or {})
    risk = _risk(scenario)
    steps: list[dict[str, Any]] = [_shadow_step(summary, sizing, traffic)]
    live = [float(p) for p in scenario.canary.steps_percent if float(p) > 0]
    for i, pct in enumerate(live):
        steps.append(_live_step(pct, i == 0, rate, sizing, segment, traffic, heavy, risk))
    if segment:
        covered = next((s["name"] for s in steps[1:] if s["smallest_segment"]["covered_in_step"]), None)
        segment["first_step_covering_it"] = covered
    banner = ("ready to start: verdict PROMOTE" if verdict == "PROMOTE" else
              f"do not start: verdict {verdict}" + (f" — {_join_reasons(reasons)}" if reasons else ""))
    notes = [s["basis"] for s in sizing if s["requests"] is None and s["metric"] not in _RESOURCE_METRICS]
    owner = scenario.owner or "the owner (none named in the scenario)"
    if rate is None:
        notes.append("No production rate: the capture has no time span and canary.production_rps is not set, "
                     "so no step has a duration. Set canary.production_rps in the scenario.")
    return {
        "banner": banner,
        "start_allowed": verdict == "PROMOTE",
        "scenario": scenario.name,
        "run_id": (summary.get("run") or {}).get("id"),
        "verdict": verdict,
        "verdict_reasons": reasons,
        "owner": scenario.owner,
        "parameters": {"alpha": alpha, "power": power,
                       "basis": f"one-sided alpha {alpha:g} from analysis.alpha, power {power:g} from canary.power; "
                                "each live step gathers its own evidence (requests are counted per step)"},
        "traffic": traffic,
        "resources": heavy,
        "risk": risk,
        "sizing": sizing,
        "smallest_segment": segment,
        "steps": steps,
        "rollback": {"owner": scenario.owner,
                     "basis": "one condition per gate, judged over each step's window; a blocking gate rolls back, "
                              f"a warning gate alerts; page {owner}",
                     "conditions": [_rollback_condition(spec, first_results.get(spec.name))
                                    for spec in scenario.gates]},
        "notes": notes,
    }


def _join_reasons(reasons: list[str], limit: int = 3) -> str:
    shown = "; ".join(r.rstrip(".") for r in reasons[:limit])
    return shown + (f"; and {len(reasons) - limit} more" if len(reasons) > limit else "")

