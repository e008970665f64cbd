"""One gate result: the numbers, the status and the sentence that says them."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..gate_config import LATENCY_LIKE, GateSpec


OVERALL = None


@dataclass(frozen=True)
class GateResult:
    name: str
    metric: str
    aggregation: str
    segment: str | None
    baseline: float | None
    candidate: float | None
    observed: float | None
    threshold: float
    threshold_text: str
    ci: tuple[float, float] | None
    n: int
    status: str  # pass | fail | inconclusive
    reason: str
    severity: str
    unit: str
    p_value: float | None = None
    min_n: int | None = None
    effect: float | None = None  # signed "how much worse" on the metric's natural scale, for ranking
    comparison: str = "absolute"
    # latency-like segments: p-value of "the candidate is no more often slower here than in the rest"
    p_worse: float | None = None
    # a blocking segment result that is inconclusive, slower than the baseline by its estimate, and worse than the
    # baseline after Benjamini-Hochberg across the segment tests: it holds the release
    suspect: bool = False
    # the screen above rejected after Benjamini-Hochberg (suspect or not): ranks the segment in worst_segments
    worse_here: bool = False
    direction: str = "max"  # the condition's: "max" when a larger value is the worse one
    explained_by: str | None = None  # a stronger segment without whose requests this one is within the limit

    @property
    def comparison_is_relative(self) -> bool:
        return self.comparison == "relative"

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["ci"] = list(self.ci) if self.ci else None
        return {k: _clean(v) for k, v in d.items()}


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return _clean(v.item())
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


def natural_delta(r: GateResult) -> float | None:
    """The candidate-minus-baseline difference of a result on its metric's own scale (latency: ratio - 1)."""
    if r.metric in LATENCY_LIKE and r.comparison == "relative":
        return None if r.observed is None else r.observed - 1.0
    if r.baseline is None or r.candidate is None:
        return None
    return r.candidate - r.baseline


def delta_scale(r: GateResult) -> str:
    """What `natural_delta` measures, so that an A/A noise floor is only ever compared with the same thing:
    the metric, its aggregation, and ratio - 1 or a difference in the metric's unit."""
    kind = "ratio" if r.metric in LATENCY_LIKE and r.comparison == "relative" else "difference"
    return f"{r.metric} {r.aggregation or ''} {kind}".replace("  ", " ")


def _result(spec: GateSpec, label: str | None, **kw: Any) -> GateResult:
    return GateResult(name=spec.name, metric=spec.metric, aggregation=spec.aggregation, segment=label,
                      threshold=spec.threshold, threshold_text=spec.threshold_text, severity=spec.severity,
                      unit=spec.unit, comparison=spec.comparison, direction=spec.direction, **kw)


def _where(label: str | None) -> str:
    return f" in {label}" if label else " overall"


def _bound_status(spec: GateSpec, lo: float, hi: float, few: bool) -> str:
    """PASS when the bound on the bad side clears the limit (and the scope is large enough), FAIL when the
    bound on the good side is beyond it, else INCONCLUSIVE."""
    if spec.direction == "max":
        return "fail" if lo > spec.threshold else "pass" if hi <= spec.threshold and not few else "inconclusive"
    return "fail" if hi < spec.threshold else "pass" if lo >= spec.threshold and not few else "inconclusive"

