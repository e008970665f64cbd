"""Gate specs + analysed pairs -> gate results -> verdict. The rules, their thresholds and their measured
error rates are docs/judgement.md; in short:
- latency-like: paired bootstrap of the candidate/baseline quantile ratio (or difference); PASS only when
  the one-sided upper bound is within the limit and the pass floor is met, FAIL only when the lower bound
  is beyond it;
- rates: exact (Clopper-Pearson) one-sided bounds against absolute limits, Tango's paired score interval
  and test against the allowance for changes from the baseline; zero events in n gives about 3/n;
- a segment below the sample size its gate needs can never PASS; every per-segment FAIL must survive
  Benjamini-Hochberg across the segment tests; latency-like segments are also screened for a localized
  slowdown (suspects);
- verdict: BLOCK if a blocking gate fails (overall or in a segment), HOLD if a blocking gate is
  inconclusive in its own scope or a blocking segment is a suspect, else PROMOTE. Every result carries
  one sentence with its numbers.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Iterable

import numpy as np

from .analysis import llm_metrics, stats
from .analysis.dataset import PairData
from .analysis.rows import row_gate
from .gate_config import DETECTOR_RATES, HIGHER_IS_BETTER, LATENCY_LIKE, PAIR_METRICS, ROW_METRICS, GateSpec

__all__ = ["GateResult", "Verdict", "ResourceSummary", "evaluate_gates", "decide_verdict"]

OVERALL = None


@dataclass(frozen=True)
class ResourceSummary:
    peak_rss_mb: dict[str, float | None]
    restarts: dict[str, int]
    oom_events: dict[str, int]
    peak_gpu_memory_mb: dict[str, float | None]
    gpu_sampled: bool
    samples: dict[str, int]


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
    # a blocking segment result that is inconclusive, beyond the limit by its estimate, and worse than the
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


@dataclass(frozen=True)
class Verdict:
    verdict: str
    reasons: list[str] = field(default_factory=list)


def _clean(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (np.floating, np.integer)):
        return _clean(v.item())
    if isinstance(v, list):
        return [_clean(x) for x in v]
    return v


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


_RESOURCE_METRICS = {"gpu_oom_events", "oom_kills", "restarts", "peak_rss_mb", "peak_gpu_memory_mb"}


def evaluate_gates(specs: Iterable[GateSpec], data: PairData, resources: ResourceSummary | None, *,
                   alpha: float = 0.05, n_resamples: int = 2000, seed: int = 0,
                   aa_noise: dict[tuple[str, str | None], float] | None = None) -> list[GateResult]:
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


def natural_delta(r: GateResult) -> float | None:
    """The candidate-minus-baseline difference of a result on its metric's own scale (latency: ratio - 1)."""
    if r.metric in LATENCY_LIKE and r.comparison == "relative":
        return None if r.observed is None else r.observed - 1.0
    if r.baseline is None or r.candidate is None:
        return None
    return r.candidate - r.baseline


def _against_noise(r: GateResult, aa_noise: dict[tuple[str, str | None], float]) -> GateResult:
    """Diffy's rule against an A/A run: a FAIL stands only where the difference exceeds the A/A
    difference of the same gate and scope by a relative margin (25 %) and an absolute one."""
    noise = aa_noise.get((r.name, r.segment))
    delta = natural_delta(r)
    if noise is None or delta is None or (r.comparison == "absolute" and r.metric not in PAIR_METRICS):
        return r  # an absolute limit judges the candidate alone: noise between the versions does not excuse it
    note = f" A/A noise for this gate and scope: {noise:+.4g}."
    worse_is_lower = r.metric in HIGHER_IS_BETTER
    d, n = (-delta, -noise) if worse_is_lower else (delta, noise)
    if r.status == "fail" and (d <= max(n, 0.0) * 1.25 or d - max(n, 0.0) < 1e-3):
        return replace(r, status="inconclusive", reason=r.reason + note + " The difference is within it.")
    return replace(r, reason=r.reason + note)


def _multiplicity(results: list[GateResult], specs: Iterable[GateSpec], alpha: float) -> list[GateResult]:
    overall_labels = {s.name: (", ".join(f"{k}={v}" for k, v in s.segment.items()) if s.segment else None)
                      for s in specs}
    out = list(results)
    rejected = _segment_bh(out, overall_labels, "p_value", alpha)
    for i, rej in rejected.items():
        r = out[i]
        if r.status == "fail" and not rej:
            out[i] = replace(r, status="inconclusive", reason=r.reason + (
                f" Not significant after Benjamini-Hochberg across {len(rejected)} segment tests."))
    return _suspects(out, overall_labels, alpha)


def _segment_bh(results: list[GateResult], overall_labels: dict[str, str | None], p_field: str,
                alpha: float) -> dict[int, bool]:
    """Benjamini-Hochberg at alpha across the per-segment results (not a gate's own scope) that carry the
    p-value `p_field`: {index in results: rejected}."""
    idx = [i for i, r in enumerate(results)
           if r.segment != overall_labels.get(r.name) and getattr(results[i], p_field) is not None]
    if not idx:
        return {}
    rejected = stats.benjamini_hochberg([getattr(results[i], p_field) for i in idx], alpha)
    return {i: bool(rej) for i, rej in zip(idx, rejected)}


def _beyond_limit(r: GateResult) -> bool:
    """The point estimate is on the wrong side of the gate's limit."""
    if r.observed is None or not math.isfinite(r.observed):
        return False
    value = r.observed - 1.0 if r.comparison == "relative" and r.metric in LATENCY_LIKE else r.observed
    return value > r.threshold if r.direction == "max" else value < r.threshold


def _suspects(results: list[GateResult], overall_labels: dict[str, str | None], alpha: float) -> list[GateResult]:
    """A regression confined to one segment is often too small a sample to FAIL there, and BH with one real
    signal acts like Bonferroni: such a segment would let the release PROMOTE. The screen: in every segment
    of every latency-like comparison gate, "the candidate leg is no more often the slower one here than in
    the rest of the run", Benjamini-Hochberg across those tests at alpha; a blocking segment result that is
    inconclusive, rejected there, and beyond the limit by its estimate is a suspect, and holds the release
    (docs/judgement.md, "Segments and multiplicity"). A slowdown shared by every segment, within the
    allowance, makes none of them suspect."""
    out = list(results)
    rejected = _segment_bh(out, overall_labels, "p_worse", alpha)
    for i, rej in rejected.items():
        r = out[i] = replace(out[i], worse_here=rej)
        if rej and r.status == "inconclusive" and r.severity == "blocking" and _beyond_limit(r):
            out[i] = replace(r, suspect=True, reason=r.reason + (
                f" Suspected regression: worse than the baseline after Benjamini-Hochberg across {len(rejected)} "
                f"segment tests (p={r.p_worse:.2g}) and beyond the limit by its estimate; held until a larger run "
                "settles it."))
    return out


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
        return _rate(spec, label, good, judged, mask, alpha, higher_is_worse=False)
    if m in DETECTOR_RATES:
        column = DETECTOR_RATES[m]
        if column not in data.detected:
            return _result(spec, label, baseline=None, candidate=None, observed=None, ci=None, n=0,
                           status="inconclusive", reason=f"No {column} column in this run.")
        return _rate(spec, label, data.detected[column], data.detector_judged[column], mask, alpha,
                     higher_is_worse=m not in HIGHER_IS_BETTER)
    if m in ("label_agreement", "label_flip_rate", "field_diff_rate"):
        return _pair_rate(spec, data, mask, label, alpha)
    if m in ("label_kappa", "confidence_psi", "confidence_ks", "confidence_mean_shift"):
        return _distribution(spec, data, mask, label, alpha, n_resamples, seed)
    if m in ("error_rate", "timeout_rate"):
        col = data.error if m == "error_rate" else data.timeout
        return _rate(spec, label, col, None, mask, alpha, higher_is_worse=True)
    if m == "schema_pass_rate":
        return _rate(spec, label, data.schema_valid, data.schema_judged, mask, alpha, higher_is_worse=False)
    if m == "review_score":
        return _review(spec, data, mask, label, alpha)
    return _resource(spec, resources, int(mask.sum()), alpha)


def _result(spec: GateSpec, label: str | None, **kw: Any) -> GateResult:
    return GateResult(name=spec.name, metric=spec.metric, aggregation=spec.aggregation, segment=label,
                      threshold=spec.threshold, threshold_text=spec.threshold_text, severity=spec.severity,
                      unit=spec.unit, comparison=spec.comparison, direction=spec.direction, **kw)


def _where(label: str | None) -> str:
    return f" in {label}" if label else " overall"


_SERIES_TEXT = {"latency_ms": ("latency", "ms"), "time_to_first_token_ms": ("time to first token", "ms"),
                "inter_token_ms": ("inter-token gap", "ms"), "completion_tokens": ("completion tokens", "tokens"),
                "latency_per_token_ms": ("latency per output token", "ms"),
                "output_tokens_per_s": ("output tokens per second per stream", "tokens/s")}


# Series where a failed leg has no honest value of its own: a quick 503 is not a fast answer.
_FAILURE_IS_SLOW = frozenset({"latency_ms", "time_to_first_token_ms", "inter_token_ms", "latency_per_token_ms"})
_INTEGER_SERIES = frozenset({"completion_tokens"})  # counts: their quantiles are judged jittered (stats)
TAIL_OBSERVATIONS_TO_PASS = 20  # observations beyond the quantile before a quantile gate may PASS
TAIL_OBSERVATIONS_TO_JUDGE = 10  # ... before it is judged at all


def _pass_floor(q: float | None) -> int:
    """Pairs where both versions answered that a latency-like gate needs before it may PASS: 20 observations
    beyond the quantile, on its tail's side (400 for a p95 or a p5, 2,000 for a p99), 30 for a mean. This
    is the only size rule: whether n is enough is otherwise decided by the paired interval itself."""
    return math.ceil(TAIL_OBSERVATIONS_TO_PASS / min(q, 1 - q) - 1e-9) if q else 30


@dataclass(frozen=True)
class _Imputed:
    """A latency-like series of the whole run with failed legs imputed, and what each pair has."""

    baseline: np.ndarray
    candidate: np.ndarray
    usable: np.ndarray  # both legs have a value (their own, or the imputed one)
    answered: np.ndarray  # both legs answered with a value of their own
    failed: np.ndarray  # a leg failed
    slower: np.ndarray  # usable and the candidate leg took longer
    differs: np.ndarray  # usable and the legs differ


_IMPUTED_CACHE: list[tuple[tuple[Any, ...], _Imputed]] = []  # the last series only: gates loop over segments


def _imputed(spec: GateSpec, data: PairData, series: dict[str, np.ndarray]) -> _Imputed:
    """A failed leg (an error that breaks a consumer) counts as no faster than the slowest leg of the run:
    worst-rank imputation, so a candidate cannot lower its p95 by failing quickly on its slowest requests
    (the failure share itself is the error-rate gate's). Legs that neither failed nor have a value (4xx
    answers, streams without token timing) are left out, pair by pair. Computed once per series."""
    b, c = series["baseline"], series["candidate"]
    fb, fc = data.error["baseline"], data.error["candidate"]
    key = (spec.metric in _FAILURE_IS_SLOW, b, c, fb, fc)
    for cached_key, value in _IMPUTED_CACHE:
        if all(x is y for x, y in zip(cached_key, key)):
            return value
    finite_b, finite_c = np.isfinite(b), np.isfinite(c)
    if spec.metric in _FAILURE_IS_SLOW:
        tops = [float(x[f].max()) for x, f in ((b, finite_b), (c, finite_c)) if f.any()]
        ceiling = max(tops) if tops else 1.0
        usable = (finite_b | fb) & (finite_c | fc)
        bb, cc = np.where(fb, np.fmax(b, ceiling), b), np.where(fc, np.fmax(c, ceiling), c)
        answered = usable & ~fb & ~fc & finite_b & finite_c
        failed = fb | fc
    else:
        usable = answered = finite_b & finite_c
        bb, cc, failed = b, c, np.zeros(len(b), bool)
    with np.errstate(invalid="ignore"):
        value = _Imputed(bb, cc, usable, answered, failed, usable & (cc > bb), usable & (cc != bb))
    _IMPUTED_CACHE[:] = [(key, value)]
    return value


def _latency_pairs(spec: GateSpec, data: PairData, mask: np.ndarray,
                   series: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(baseline, candidate, pairs where both answered, failed legs counted) of the scope (`_imputed`)."""
    imp = _imputed(spec, data, series)
    ok = mask & imp.usable
    return imp.baseline[ok], imp.candidate[ok], int((ok & imp.answered).sum()), int((ok & imp.failed).sum())


def _latency(spec: GateSpec, data: PairData, mask: np.ndarray, label: str | None, alpha: float,
             n_resamples: int, seed: int, series: dict[str, np.ndarray] | None = None) -> GateResult:
    series = data.latency if series is None else series
    what, unit = _SERIES_TEXT[spec.metric]
    if "candidate" not in series:
        return _result(spec, label, baseline=None, candidate=None, observed=None, ci=None, n=0,
                       status="inconclusive", reason="No candidate legs (baseline-only run).")
    b, c, answered, failed = _latency_pairs(spec, data, mask, series)
    n = len(b)
    q = {"p5": 0.05, "p10": 0.1, "p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}.get(spec.aggregation)
    agg = spec.aggregation
    floor = int(math.ceil(TAIL_OBSERVATIONS_TO_JUDGE / min(q, 1 - q))) if q else 30  # p5, p10: the low tail
    if n < floor:
        return _result(spec, label, baseline=None, candidate=None, observed=None, ci=None, n=n, status="inconclusive",
                       reason=f"{agg} {what}{_where(label)}: only {n} pairs; at least {floor} are needed to estimate it.",
                       min_n=floor)
    pass_floor = _pass_floor(q)
    failed_txt = (f" {failed} pairs with a failed leg count it as no faster than the slowest leg of the run."
                  if failed else "")
    few = answered < pass_floor
    few_txt = (f"only {answered} pairs where both versions answered, fewer than the {pass_floor} a PASS needs "
               f"({TAIL_OBSERVATIONS_TO_PASS} beyond the {agg})" if q else
               f"only {answered} pairs where both versions answered, fewer than the {pass_floor} a PASS needs")
    if spec.comparison == "absolute":
        return _latency_absolute(spec, label, b, c, q, alpha, n, few, few_txt, pass_floor, what, unit, failed_txt)
    local = _localized_p(spec, data, mask, series) if label is not None and spec.segment is None else None
    if spec.comparison == "delta":
        return _latency_delta(spec, label, b, c, q, alpha, n_resamples, seed, n, few, few_txt, pass_floor, what, unit,
                              failed_txt, local)
    if q is None:
        ratio_ci = stats.paired_mean_ratio_ci(b, c, confidence=1 - alpha, n_resamples=n_resamples, seed=seed)
    else:
        ratio_ci = stats.paired_quantile_ratio_ci(b, c, q, confidence=1 - alpha, n_resamples=n_resamples, seed=seed,
                                                  jitter=spec.metric in _INTEGER_SERIES)
    limit = 1.0 + spec.threshold
    p_fail = ratio_ci.p_above(limit)
    if ratio_ci.lower > limit:
        status = "fail"
    elif ratio_ci.upper <= limit and not few:
        status = "pass"
    else:
        status = "inconclusive"
    change = (ratio_ci.estimate - 1) * 100
    why = {
        "fail": f"the whole interval is above +{spec.threshold * 100:g} %",
        "pass": f"the interval stays within +{spec.threshold * 100:g} %",
        "inconclusive": (few_txt if few and ratio_ci.upper <= limit
                         else f"the interval straddles +{spec.threshold * 100:g} %"),
    }[status]
    return _result(spec, label, baseline=ratio_ci.baseline_q, candidate=ratio_ci.candidate_q,
                   observed=ratio_ci.estimate, ci=(ratio_ci.lower, ratio_ci.upper), n=n, status=status,
                   p_value=p_fail, p_worse=local, min_n=pass_floor,
                   effect=ratio_ci.estimate - 1,
                   reason=f"{agg} {what}{_where(label)} {ratio_ci.baseline_q:.1f} -> {ratio_ci.candidate_q:.1f} {unit} "
                          f"({change:+.1f} %, {100 * (1 - alpha):g} % bounds {100 * (ratio_ci.lower - 1):+.1f} % to "
                          f"{100 * (ratio_ci.upper - 1):+.1f} %, n={n}): {why}.{failed_txt}")


def _localized_p(spec: GateSpec, data: PairData, mask: np.ndarray, series: dict[str, np.ndarray]) -> float:
    """One-sided p-value that the candidate is slower more often inside the segment than outside it: the
    share of pairs where the candidate leg took longer (ties left out), segment against the rest, by the
    two-proportion z test (independent sets of pairs). A regression confined to a segment shifts the whole
    distribution there, which this sees long before the segment's own p95 interval clears the limit; a
    shift shared by every segment does not make any one of them suspect."""
    imp = _imputed(spec, data, series)
    ki, ni = int((imp.slower & mask).sum()), int((imp.differs & mask).sum())
    k_all, n_all = int(imp.slower.sum()), int(imp.differs.sum())
    return stats.two_proportion_p_above(ki, ni, k_all - ki, n_all - ni)


def _bound_status(spec: GateSpec, lo: float, hi: float, few: bool) -> str:
    """PASS when the bound on the bad side clears the limit (and the scope is large enough), FAIL when the
    bound on the good side is beyond it, else INCONCLUSIVE."""
    if spec.direction == "max":
        return "fail" if lo > spec.threshold else "pass" if hi <= spec.threshold and not few else "inconclusive"
    return "fail" if hi < spec.threshold else "pass" if lo >= spec.threshold and not few else "inconclusive"


def _latency_absolute(spec: GateSpec, label: str | None, b: np.ndarray, c: np.ndarray, q: float | None, alpha: float,
                      n: int, few: bool, few_txt: str, pass_floor: int, what: str, unit: str,
                      failed_txt: str) -> GateResult:
    """The candidate's quantile (order-statistic bounds, exact binomial p-value) or mean (t bound) against a
    fixed limit."""
    agg = spec.aggregation
    if q:
        value = float(np.quantile(c, q))
        lo, hi = stats.quantile_ci(c, q, confidence=1 - alpha)
        p = stats.quantile_p_beyond(c, q, spec.threshold, "max" if spec.direction == "max" else "min")
        base = float(np.quantile(b, q))
    else:
        iv = stats.mean_ci(c, confidence=1 - alpha)
        value, lo, hi = iv.estimate, iv.lower, iv.upper
        p = iv.p_above(spec.threshold) if spec.direction == "max" else iv.p_below(spec.threshold)
        base = float(np.mean(b))
    status = _bound_status(spec, lo, hi, few)
    tail = f": {few_txt}" if status == "inconclusive" and few and not (lo > spec.threshold or hi < spec.threshold) else ""
    return _result(spec, label, baseline=base, candidate=value, observed=value, ci=(lo, hi), n=n, status=status,
                   p_value=p, min_n=pass_floor,
                   effect=(value - spec.threshold) if spec.direction == "max" else (spec.threshold - value),
                   reason=f"Candidate {agg} {what} {value:.1f} {unit}{_where(label)} (interval {lo:.1f}-{hi:.1f}) "
                          f"vs limit {spec.threshold:g} {unit}: {status}{tail}.{failed_txt}")


def _latency_delta(spec: GateSpec, label: str | None, b: np.ndarray, c: np.ndarray, q: float | None, alpha: float,
                   n_resamples: int, seed: int, n: int, few: bool, few_txt: str, pass_floor: int, what: str,
                   unit: str, failed_txt: str, local: float | None) -> GateResult:
    """candidate - baseline in the metric's unit (maximum_increase: 5 = at most 5 ms slower): the paired
    bootstrap of the quantile difference, or the paired t bound of the mean difference."""
    if q:
        iv = stats.paired_quantile_difference_ci(b, c, q, confidence=1 - alpha, n_resamples=n_resamples, seed=seed,
                                                 jitter=spec.metric in _INTEGER_SERIES)
    else:
        iv = stats.mean_difference_interval(b, c, confidence=1 - alpha)
    status = _bound_status(spec, iv.lower, iv.upper, few)
    why = {"fail": f"the whole interval is above +{spec.threshold:g} {unit}",
           "pass": f"the interval stays within +{spec.threshold:g} {unit}",
           "inconclusive": few_txt if few and iv.upper <= spec.threshold
           else f"the interval straddles +{spec.threshold:g} {unit}"}[status]
    return _result(spec, label, baseline=iv.baseline, candidate=iv.candidate, observed=iv.estimate,
                   ci=(iv.lower, iv.upper), n=n, status=status, p_value=iv.p_above(spec.threshold),
                   p_worse=local, min_n=pass_floor, effect=iv.estimate - spec.threshold,
                   reason=f"{spec.aggregation} {what}{_where(label)} {iv.baseline:.1f} -> {iv.candidate:.1f} {unit} "
                          f"({iv.estimate:+.1f} {unit}, {100 * (1 - alpha):g} % bounds {iv.lower:+.1f} to "
                          f"{iv.upper:+.1f} {unit}, n={n}): {why}.{failed_txt}")


_RATE_TEXT = {"error_rate": "error rate", "timeout_rate": "timeout rate", "schema_pass_rate": "schema pass rate",
              "abstention_rate": "abstention rate", "citation_rate": "citation rate", "fallback_rate": "fallback rate",
              "tool_call_validity_rate": "tool-call validity rate", "label_agreement": "label agreement",
              "label_flip_rate": "label flip rate", "field_diff_rate": "field diff rate", "goodput": "goodput"}


def _rate(spec: GateSpec, label: str | None, col: dict[str, np.ndarray], judged: dict[str, np.ndarray] | None,
          mask: np.ndarray, alpha: float, higher_is_worse: bool) -> GateResult:
    versions = [v for v in ("baseline", "candidate") if v in col]
    target = "candidate" if "candidate" in col else "baseline"
    sel = {v: mask & judged[v] if judged is not None else mask for v in versions}
    k = {v: int(col[v][sel[v]].sum()) for v in versions}
    n = {v: int(sel[v].sum()) for v in versions}
    rate = {v: (k[v] / n[v]) if n[v] else float("nan") for v in versions}
    what = _RATE_TEXT[spec.metric]
    nn = n[target]
    if nn == 0:
        return _result(spec, label, baseline=rate.get("baseline"), candidate=None, observed=None, ci=None, n=0,
                       status="inconclusive", reason=f"No judged {target} answers{_where(label)} for the {what}.")
    if spec.comparison == "delta":
        return _rate_delta(spec, label, col, sel, mask, rate, alpha, what)
    lo, hi = stats.clopper_pearson_interval(k[target], nn, confidence=1 - alpha, one_sided=True)
    thr = spec.threshold
    if spec.direction == "max":
        status = "pass" if hi <= thr else "fail" if lo > thr else "inconclusive"
        p = stats.binomial_p_above(k[target], nn, thr)
        effect = rate[target] - thr
    else:
        status = "pass" if lo >= thr else "fail" if hi < thr else "inconclusive"
        p = stats.binomial_p_above(nn - k[target], nn, 1 - thr)
        effect = thr - rate[target]
    pct = lambda x: f"{100 * x:.2f} %"  # noqa: E731
    base_txt = f"baseline {pct(rate['baseline'])}, " if "baseline" in rate and target == "candidate" else ""
    zero = (f" (no events in {nn}: upper bound {pct(hi)}, about 3/n)" if k[target] == 0 and higher_is_worse else "")
    verdict_txt = {"pass": "within the limit", "fail": "beyond the limit",
                   "inconclusive": "the interval straddles the limit"}[status]
    return _result(spec, label, baseline=rate.get("baseline"), candidate=rate[target], observed=rate[target],
                   ci=(lo, hi), n=nn, status=status, p_value=p, effect=effect,
                   reason=f"{target.capitalize()} {what}{_where(label)} {pct(rate[target])} ({k[target]}/{nn}; "
                          f"{base_txt}{100 * (1 - alpha):g} % bounds {pct(lo)}-{pct(hi)}){zero} vs "
                          f"{spec.threshold_text}: {verdict_txt}.")


def _rate_delta(spec: GateSpec, label: str | None, col: dict[str, np.ndarray], sel: dict[str, np.ndarray],
                mask: np.ndarray, rate: dict[str, float], alpha: float, what: str) -> GateResult:
    both = sel["baseline"] & sel["candidate"]
    bcol, ccol = col["baseline"][both], col["candidate"][both]
    b_only = int((bcol & ~ccol).sum())
    c_only = int((ccol & ~bcol).sum())
    n = int(both.sum())
    lo, hi = stats.paired_rate_difference_ci(b_only, c_only, n, confidence=1 - alpha)
    diff = (c_only - b_only) / n if n else float("nan")
    thr = spec.threshold
    if spec.direction == "max":
        status = "pass" if hi <= thr else "fail" if lo > thr else "inconclusive"
    else:
        status = "pass" if lo >= thr else "fail" if hi < thr else "inconclusive"
    # The p-value tests the gate's own allowance (Tango's score test at the threshold, the dual of the
    # interval), not "no change": McNemar against 0 would flag a candidate that is within its allowance.
    p = stats.paired_rate_difference_p(b_only, c_only, n, thr, "max" if spec.direction == "max" else "min")
    return _result(spec, label, baseline=rate.get("baseline"), candidate=rate.get("candidate"), observed=diff,
                   ci=(lo, hi), n=n, status=status, p_value=p, effect=diff,
                   reason=f"Paired {what} change{_where(label)} {100 * diff:+.2f} points ({b_only} baseline-only vs "
                          f"{c_only} candidate-only events in {n} pairs; score test against the allowance p={p:.3g}) "
                          f"vs {spec.threshold_text}: {status}.")


def _pair_rate(spec: GateSpec, data: PairData, mask: np.ndarray, label: str | None, alpha: float) -> GateResult:
    """Rates measured on the pair (one event per request): label agreement / flips on pairs where both
    versions gave a label; field diffs on pairs whose answers were compared."""
    if "candidate" not in data.prediction:
        return _result(spec, label, baseline=None, candidate=None, observed=None, ci=None, n=0, status="inconclusive",
                       reason="No candidate in this run.")
    if spec.metric == "field_diff_rate":
        if data.field_diff is None or data.field_judged is None:
            return _result(spec, label, baseline=None, candidate=None, observed=None, ci=None, n=0,
                           status="inconclusive", reason="The answers were not compared.")
        event, judged = data.field_diff, data.field_judged
    else:
        judged, agree = _label_pairs(data)
        event = agree if spec.metric == "label_agreement" else judged & ~agree
    return _rate(spec, label, {"candidate": event}, {"candidate": judged}, mask, alpha,
                 higher_is_worse=spec.metric not in HIGHER_IS_BETTER)


def _label_pairs(data: PairData) -> tuple[np.ndarray, np.ndarray]:
    """(both versions gave a label, they agree) per pair."""
    b, c = data.prediction["baseline"].codes, data.prediction["candidate"].codes
    judged = (b >= 0) & (c >= 0)
    return judged, judged & (b == c)


DISTRIBUTION_MIN_N = 30
_DISTRIBUTION_RESAMPLES = 400


def _distribution(spec: GateSpec, data: PairData, mask: np.ndarray, label: str | None, alpha: float,
                  n_resamples: int, seed: int) -> GateResult:
    """Label kappa and confidence drift (PSI, KS, mean shift) on the pairs where both versions answered:
    the mean shift by its paired t bound; the others by a percentile bootstrap over pairs (one-sided
    bounds at 1 - alpha). PASS when the bound on the bad side clears the limit, FAIL when the bound on
    the good side is beyond it."""
    if "candidate" not in data.prediction:
        return _result(spec, label, baseline=None, candidate=None, observed=None, ci=None, n=0, status="inconclusive",
                       reason="No candidate in this run.")
    m = spec.metric
    if m == "label_kappa":
        ok = mask & _label_pairs(data)[0]
        b = data.prediction["baseline"].codes[ok].astype(np.int64)
        c = data.prediction["candidate"].codes[ok].astype(np.int64)
        fn, what = _kappa_codes, "label kappa"
    else:
        bf, cf = data.confidence["baseline"], data.confidence["candidate"]
        ok = mask & np.isfinite(bf) & np.isfinite(cf)
        b, c = bf[ok], cf[ok]
        fn, what = {"confidence_psi": (stats.psi, "confidence PSI"), "confidence_ks": (stats.ks_statistic, "confidence KS"),
                    "confidence_mean_shift": (None, "confidence mean shift")}[m]
    n = len(b)
    if n < DISTRIBUTION_MIN_N:
        return _result(spec, label, baseline=None, candidate=None, observed=None, ci=None, n=n, status="inconclusive",
                       min_n=DISTRIBUTION_MIN_N,
                       reason=f"{what.capitalize()}{_where(label)}: {n} pairs with both values; at least "
                              f"{DISTRIBUTION_MIN_N} are needed.")
    thr = spec.threshold
    if fn is None:
        iv = stats.paired_mean_difference_ci(b, c, confidence=1 - alpha, one_sided=True)
        value, lo, hi = iv.estimate, iv.lower, iv.upper
        base, cand = float(b.mean()), float(c.mean())
        p = iv.p_above(thr) if spec.direction == "max" else iv.p_below(thr)
    else:
        value = float(fn(b, c))
        arr = _distribution_bootstrap(m, b, c, np.random.default_rng(seed), min(n_resamples, _DISTRIBUTION_RESAMPLES))
        arr = arr[np.isfinite(arr)]
        if not np.isfinite(value) or len(arr) == 0:
            return _result(spec, label, baseline=None, candidate=None, observed=None, ci=None, n=n,
                           status="inconclusive", reason=f"{what.capitalize()}{_where(label)} is undefined here "
                                                         "(a single label throughout).")
        lo, hi = float(np.quantile(arr, alpha)), float(np.quantile(arr, 1 - alpha))
        base = cand = None
        # the bootstrap share on the good side of the limit: below alpha exactly when the FAIL bound is beyond it
        p = float(np.mean(arr <= thr)) if spec.direction == "max" else float(np.mean(arr >= thr))
    if spec.direction == "max":
        status = "pass" if hi <= thr else "fail" if lo > thr else "inconclusive"
    else:
        status = "pass" if lo >= thr else "fail" if hi < thr else "inconclusive"
    verdict_txt = {"pass": "within the limit", "fail": "beyond the limit",
                   "inconclusive": "the interval straddles the limit"}[status]
    return _result(spec, label, baseline=base, candidate=cand, observed=value, ci=(lo, hi), n=n, status=status,
                   p_value=p, effect=(value - thr) if spec.direction == "max" else (thr - value),
                   reason=f"{what.capitalize()}{_where(label)} {value:.3g} ({100 * (1 - alpha):g} % bounds {lo:.3g} to "
                          f"{hi:.3g}, n={n}) vs {spec.threshold_text}: {verdict_txt}.")


_TABLE_CELLS_MAX = 10_000  # a confusion table larger than this is resampled pair by pair


def _distribution_bootstrap(metric: str, b: np.ndarray, c: np.ndarray, rng: np.random.Generator,
                            n_resamples: int) -> np.ndarray:
    """Bootstrap replicates of a pair statistic. Kappa and PSI depend only on a small table of the pairs
    (confusion matrix; bins of baseline x candidate), so they resample the table (O(cells) each, whatever
    n); KS, and a label set too large for a table, resample the pairs."""
    if metric == "label_kappa" and (int(max(b.max(), c.max())) + 1) ** 2 <= _TABLE_CELLS_MAX:
        return stats.bootstrap_paired_kappa(b, c, n_resamples, rng)
    if metric == "confidence_psi":
        return stats.bootstrap_paired_psi(b, c, n_resamples, rng)
    fn = _kappa_codes if metric == "label_kappa" else stats.ks_statistic
    n = len(b)
    out = np.empty(n_resamples)
    for r in range(n_resamples):
        i = rng.integers(0, n, n)
        out[r] = fn(b[i], c[i])
    return out


def _kappa_codes(b: np.ndarray, c: np.ndarray) -> float:
    k = int(max(b.max(), c.max())) + 1
    n = len(b)
    p_o = float(np.mean(b == c))
    p_e = float(np.dot(np.bincount(b, minlength=k), np.bincount(c, minlength=k))) / (n * n)
    return (p_o - p_e) / (1 - p_e) if p_e < 1.0 else math.nan


REVIEW_MIN_N = 10  # below this a review-score gate is not judged at all


def _review(spec: GateSpec, data: PairData, mask: np.ndarray, label: str | None, alpha: float) -> GateResult:
    """Paired review-score difference with betting bounds for a bounded mean (scores on [0, 1], or the wider
    range seen in the run): valid at any n and for any shape, where a t bound covered 66 % at n=10 for
    rare drops."""
    if "candidate" not in data.score:
        return _result(spec, label, baseline=None, candidate=None, observed=None, ci=None, n=0, status="inconclusive",
                       reason="No candidate in this run.")
    b, c = data.score["baseline"][mask], data.score["candidate"][mask]
    ok = np.isfinite(b) & np.isfinite(c)
    n = int(ok.sum())
    if n < REVIEW_MIN_N:
        return _result(spec, label, baseline=None, candidate=None, observed=None, ci=None, n=n, status="inconclusive",
                       min_n=REVIEW_MIN_N,
                       reason=f"Review scores for {n} pairs{_where(label)}, fewer than the {REVIEW_MIN_N} a judgement "
                              "needs: import scores for both versions with `harness scores import RUN_DIR FILE`.")
    # The scale: [0, 1], widened to every score seen in the run (a 1-5 rating, say). A range taken from
    # the scope alone would collapse where no drop happened to be seen, and so pass it.
    every = np.concatenate([x[np.isfinite(x)] for x in (data.score["baseline"], data.score["candidate"])])
    low, high = min(0.0, float(every.min())), max(1.0, float(every.max()))
    thr = spec.threshold
    iv = stats.bounded_mean_difference_ci(b[ok], c[ok], low, high, confidence=1 - alpha)
    p = stats.bounded_mean_difference_p(b[ok], c[ok], low, high, thr, "min", alpha)
    lower, upper, est = iv.lower, iv.upper, iv.estimate
    status = "pass" if lower >= thr else "fail" if upper < thr else "inconclusive"
    return _result(spec, label, baseline=float(b[ok].mean()), candidate=float(c[ok].mean()), observed=est,
                   ci=(lower, upper), n=n, status=status, p_value=p, effect=-est, min_n=REVIEW_MIN_N,
                   reason=f"Review score{_where(label)} {b[ok].mean():.3f} -> {c[ok].mean():.3f} (paired delta "
                          f"{est:+.3f}, bounds {lower:+.3f} to {upper:+.3f}, n={n}) vs "
                          f"{spec.threshold_text}: {status}.")


def _resource(spec: GateSpec, res: ResourceSummary | None, n_requests: int, alpha: float) -> GateResult:
    if res is None:
        return _result(spec, None, baseline=None, candidate=None, observed=None, ci=None, n=0, status="inconclusive",
                       reason="No resource samples were recorded.")
    m = spec.metric
    target = "candidate" if "candidate" in res.restarts else "baseline"
    if m in ("gpu_oom_events", "oom_kills", "restarts"):
        counts = res.oom_events if m != "restarts" else res.restarts
        k = counts.get(target, 0)
        base = counts.get("baseline")
        status = "pass" if k <= spec.threshold else "fail"
        note = ""
        if m == "gpu_oom_events" and not res.gpu_sampled:
            note = " No GPU was sampled (NVML unavailable), so only OOM kills of the server process could be seen."
        bound = 1 - alpha ** (1 / n_requests) if n_requests else 1.0
        per = f" ({k} in {n_requests} requests: rate upper bound {100 * bound:.3f} %, about 3/n)" if k == 0 else ""
        return _result(spec, None, baseline=base, candidate=k, observed=k, ci=None, n=n_requests, status=status,
                       effect=float(k - (base or 0)),
                       reason=f"{target.capitalize()} {m.replace('_', ' ')}: {k}{per} vs {spec.threshold_text}: "
                              f"{status}.{note}")
    peaks = res.peak_rss_mb if m == "peak_rss_mb" else res.peak_gpu_memory_mb
    b, c = peaks.get("baseline"), peaks.get(target)
    if c is None or (spec.comparison == "relative" and not b):
        return _result(spec, None, baseline=b, candidate=c, observed=None, ci=None, n=res.samples.get(target, 0),
                       status="inconclusive", reason=f"No {m} samples for the {target}{'' if c else ''}.")
    observed = c / b - 1 if spec.comparison == "relative" and b else c
    ok = observed <= spec.threshold if spec.direction == "max" else observed >= spec.threshold
    status = "pass" if ok else "fail"
    shown = f"{100 * observed:+.1f} %" if spec.comparison == "relative" else f"{observed:.0f} MB"
    return _result(spec, None, baseline=b, candidate=c, observed=observed, ci=None, n=res.samples.get(target, 0),
                   status=status, effect=observed,
                   reason=f"Peak {'RSS' if m == 'peak_rss_mb' else 'GPU memory'} {b or 0:.0f} -> {c:.0f} MB ({shown}) "
                          f"vs {spec.threshold_text}: {status}.")


def decide_verdict(results: list[GateResult], stopped_early: str | None = None) -> Verdict:
    """BLOCK if a blocking gate fails anywhere, or the replay was stopped early (the anytime-valid test
    showed the error excess beyond its allowance: what is left of the run cannot undo that); HOLD if a
    blocking gate is inconclusive in its own scope (overall, or the segment the gate names); else PROMOTE.
    Inconclusive diagnostic segments are listed in the report, but do not hold the release on their own."""
    blocking = [r for r in results if r.severity == "blocking"]
    fails = [r for r in blocking if r.status == "fail"]
    if stopped_early:
        text = stopped_early.rstrip(".")
        text = text[0].upper() + text[1:] if text.lower().startswith("stopped early") else f"Stopped early: {text}"
        return Verdict("BLOCK", [f"{text}.", *(r.reason for r in fails)])
    if fails:
        return Verdict("BLOCK", [r.reason for r in fails])
    scopes = {}
    for r in results:
        scopes.setdefault(r.name, r)  # the first result of each gate is its own scope
    inconclusive = [r for r in scopes.values() if r.severity == "blocking" and r.status == "inconclusive"]
    suspects = [r for r in blocking if r.suspect and r not in inconclusive]
    if inconclusive or suspects:
        return Verdict("HOLD", [r.reason for r in inconclusive + suspects])
    return Verdict("PROMOTE", [f"All {len(scopes)} gates pass in their scope; no segment fails."])
