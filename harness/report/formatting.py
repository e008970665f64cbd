"""Numbers as the report prints them: one place decides units, signs and precision, so a gate's
observed value, threshold and interval always read the same way."""
from __future__ import annotations

import math
from typing import Any

__all__ = ["comparison_of", "fmt_ms", "fmt_pct", "fmt_num", "fmt_int", "fmt_mb", "NBSP", "gate_observed", "gate_interval",
           "gate_values", "gate_effect", "gate_threshold", "status_label", "fmt_allowance"]

DASH = "—"
NBSP = "\u00a0"  # between a number and its unit, so "2.25 %" never wraps before the "%"


def _ok(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def fmt_ms(v: Any) -> str:
    if not _ok(v):
        return DASH
    digits = 0 if abs(v) >= 100 else 1 if abs(v) >= 1 else 2
    return f"{v:.{digits}f}{NBSP}ms"


def fmt_pct(v: Any, digits: int = 2, sign: bool = False) -> str:
    if not _ok(v):
        return DASH
    return f"{100 * v:{'+' if sign else ''}.{digits}f}{NBSP}%"


def fmt_num(v: Any, digits: int = 3, sign: bool = False) -> str:
    if not _ok(v):
        return DASH
    return f"{v:{'+' if sign else ''}.{digits}f}"


def fmt_allowance(v: Any) -> str:
    """The share of a gate's allowance the candidate uses: 1× is at the threshold."""
    if not _ok(v):
        return DASH
    return f"{v:.2f}×" if abs(v) < 10 else f"{v:.0f}×"


def fmt_int(v: Any) -> str:
    if not _ok(v):
        return DASH
    return f"{int(v):,}".replace(",", "\u202f")  # narrow no-break space: 1 000 000


def fmt_mb(v: Any) -> str:
    if not _ok(v):
        return DASH
    return f"{v:,.0f}{NBSP}MB".replace(",", "\u202f") if abs(v) >= 100 else f"{v:.1f}{NBSP}MB"


def comparison_of(gate: dict[str, Any]) -> str:
    """relative | delta | absolute. Read from the result when it says so, else from its threshold text
    (harness.gate_config.GateSpec.threshold_text)."""
    if gate.get("comparison") in ("relative", "delta", "absolute"):
        return str(gate["comparison"])
    text = str(gate.get("threshold_text") or "")
    if "vs baseline" in text:
        return "relative"
    if text.startswith("candidate - baseline"):
        return "delta"
    return "absolute"


def _value(gate: dict[str, Any], v: Any, sign: bool = False) -> str:
    """A value on the gate's metric scale (not a ratio)."""
    metric = gate.get("metric")
    if metric == "latency_ms":
        return fmt_ms(v)
    if gate.get("unit") == "fraction":
        return fmt_pct(v, sign=sign)
    if metric == "review_score":
        return fmt_num(v, sign=sign)
    if gate.get("unit") == "MB":
        return fmt_mb(v)
    if gate.get("unit") == "events":
        return fmt_int(v)
    return fmt_num(v, sign=sign)


def _observed_scale(gate: dict[str, Any], v: Any) -> str:
    """The observed value or an interval bound, on the scale the threshold is written in."""
    comparison = comparison_of(gate)
    if comparison == "relative":
        if not _ok(v):
            return DASH
        # latency observes the ratio candidate/baseline; resources observe candidate/baseline - 1
        change = v - 1 if gate.get("metric") == "latency_ms" else v
        return f"{100 * change:+.1f}{NBSP}%"
    if comparison == "delta":
        if gate.get("unit") == "fraction":
            return f"{100 * v:+.2f}{NBSP}pts" if _ok(v) else DASH
        return _value(gate, v, sign=True)
    return _value(gate, v)


def gate_threshold(gate: dict[str, Any]) -> str:
    """The condition, in the units the observed value is shown in (a rate limit of 0.01 reads "<= 1.00 %")."""
    text = str(gate.get("threshold_text") or "")
    thr = gate.get("threshold")
    sign = "≥" if ">=" in text else "≤"
    comparison = comparison_of(gate)
    if not _ok(thr) or comparison == "relative":
        return text.replace("<=", "≤").replace(">=", "≥")
    if comparison == "delta":
        return f"change {sign} {_observed_scale(gate, thr)}"
    return f"{sign} {_value(gate, thr)}"


def gate_observed(gate: dict[str, Any]) -> str:
    return _observed_scale(gate, gate.get("observed"))


def gate_interval(gate: dict[str, Any]) -> str:
    ci = gate.get("ci")
    if not ci or len(ci) != 2 or not (_ok(ci[0]) and _ok(ci[1])):
        return DASH
    return f"{_observed_scale(gate, ci[0])} to {_observed_scale(gate, ci[1])}"


def gate_values(gate: dict[str, Any]) -> str:
    """baseline -> candidate on the metric's own scale, e.g. "20.1 ms -> 22.2 ms"."""
    b, c = gate.get("baseline"), gate.get("candidate")
    if not _ok(b) and not _ok(c):
        return ""
    return f"{_value(gate, b)} → {_value(gate, c)}"


def gate_effect(row: dict[str, Any]) -> str:
    """The ranked table's change, defined as the heatmap's: candidate against baseline on the metric's
    natural scale (latency: relative change of the quantile; rates: difference in points; others: the
    difference)."""
    b, c = row.get("baseline"), row.get("candidate")
    if not _ok(b) or not _ok(c):
        return DASH
    b, c = float(b), float(c)  # type: ignore[arg-type]
    metric = str(row.get("metric") or "")
    if metric.endswith("_ms") and b:
        return f"{100 * (c / b - 1):+.1f}{NBSP}% {row.get('aggregation') or ''}".strip()
    if metric.endswith("_rate"):
        return f"{100 * (c - b):+.2f}{NBSP}pts"
    return fmt_num(c - b, sign=True)


def status_label(status: str, severity: str | None = None) -> str:
    label = {"pass": "PASS", "fail": "FAIL", "inconclusive": "INCONCLUSIVE"}.get(status, status.upper())
    if status == "fail" and severity == "warning":
        label += " (warning)"
    return label
