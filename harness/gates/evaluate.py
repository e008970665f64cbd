"""Gate specs + analysed pairs -> gate results: each gate overall, then per segment value."""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..analysis import llm_metrics
from ..analysis.dataset import PairData
from ..analysis.rows import row_gate
from ..gate_config import DETECTOR_RATES, HIGHER_IS_BETTER, LATENCY_LIKE, ROW_METRICS, GateSpec
from .distribution import _distribution
from .latency import _IMPUTED_CACHE, _latency
from .multiplicity import _against_noise, _multiplicity
from .rates import _pair_rate, _rate
from .resources import _RESOURCE_METRICS, ResourceSummary, _resource
from .result import GateResult, _result
from .review import _review


def _segment_masks(data: PairData, spec: GateSpec) -> Iterable[tuple[str | None, np.ndarray]]:
    base = np.ones(data.n, dtype=bool)
    label = None
    if spec.segment:
        for name, value in spec.segment.items():
            column = data.segments.get(name)
            base &= column.equals(value) if column is not None else False
        label = ", ".join(f"{k}={v}" for k, v in spec.segment.items())
    yield label, base
    if spec.per_segment and spec.metric not in _RESOURCE_METRICS:
        for name, column in data.segments.items():
            for value in column.present(base):
                yield (f"{label}, " if label else "") + f"{name}={value}", base & column.equals(value)


def evaluate_gates(specs: Iterable[GateSpec], data: PairData, resources: ResourceSummary | None, *,
                   alpha: float = 0.05, n_resamples: int = 2000, seed: int = 0,
                   aa_noise: dict[tuple[str, str | None], tuple[float, str | None]] | None = None) -> list[GateResult]:
    """All gate results: each gate overall first, then per segment value. Per-segment FAILs are
    confirmed by Benjamini-Hochberg over all segment tests; unconfirmed ones become INCONCLUSIVE."""
    results: list[GateResult] = []
    try:
        for spec in specs:
            for i, (label, mask) in enumerate(_segment_masks(data, spec)):
                result = _evaluate_one(spec, data, mask, label, resources, alpha, n_resamples, seed)
                if i > 0 and result.n == 0:
                    continue  # a segment with nothing to judge for this metric (e.g. GET routes: no scores)
                results.append(result)
    finally:
        _IMPUTED_CACHE.clear()  # run-sized arrays: not kept past the judgement
    results = _multiplicity(results, specs, alpha)
    return [_against_noise(r, aa_noise) for r in results] if aa_noise else results


def _evaluate_one(spec: GateSpec, data: PairData, mask: np.ndarray, label: str | None,
                  resources: ResourceSummary | None, alpha: float, n_resamples: int, seed: int) -> GateResult:
    m = spec.metric
    if m in ROW_METRICS:
        return _result(spec, label, **row_gate(spec, data.rows, mask, label, alpha, n_resamples, seed))
    if m in LATENCY_LIKE:
        series = {"latency_ms": data.latency, "time_to_first_token_ms": data.ttft, "inter_token_ms": data.inter_token,
                  "completion_tokens": data.completion_tokens}.get(m)
        series = llm_metrics.SERIES[m](data) if series is None else series
        return _latency(spec, data, mask, label, alpha, n_resamples, seed, series)
    if m == "goodput":
        good, judged = llm_metrics.goodput(data, spec.slo or {})
        return _rate(spec, label, good, judged, mask, alpha, higher_is_worse=False, unit=data.unit)
    if m in DETECTOR_RATES:
        column = DETECTOR_RATES[m]
        if column not in data.detected:
            return _result(spec, label, baseline=None, candidate=None, observed=None, ci=None, n=0,
                           status="inconclusive", reason=f"No {column} column in this run.")
        return _rate(spec, label, data.detected[column], data.detector_judged[column], mask, alpha,
                     higher_is_worse=m not in HIGHER_IS_BETTER, unit=data.unit)
    if m in ("label_agreement", "label_flip_rate", "field_diff_rate"):
        return _pair_rate(spec, data, mask, label, alpha)
    if m in ("label_kappa", "confidence_psi", "confidence_ks", "confidence_mean_shift"):
        return _distribution(spec, data, mask, label, alpha, n_resamples, seed)
    if m in ("error_rate", "timeout_rate"):
        if m == "error_rate":
            return _rate(spec, label, data.error, None, mask, alpha, higher_is_worse=True, refusals=data.refusals(),
                         unit=data.unit)
        return _rate(spec, label, data.timeout, None, mask, alpha, higher_is_worse=True, unit=data.unit)
    if m == "schema_pass_rate":
        return _rate(spec, label, data.schema_valid, data.schema_judged, mask, alpha, higher_is_worse=False,
                     unit=data.unit)
    if m == "review_score":
        return _review(spec, data, mask, label, alpha)
    return _resource(spec, resources, int(mask.sum()), alpha)

