"""Latency-like gates: paired bootstrap of the quantile ratio or difference, or the candidate against a
fixed limit; failed legs imputed as the slowest."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import scipy.stats as sps

from ..analysis import stats
from ..analysis.clustered import copies_design_effect, repeated_units
from ..analysis.dataset import PairData
from ..gate_config import GateSpec
from .result import GateResult, _bound_status, _result, _where


_SERIES_TEXT = {"latency_ms": ("latency", "ms"), "time_to_first_token_ms": ("time to first token", "ms"),
                "inter_token_ms": ("inter-token gap", "ms"), "completion_tokens": ("completion tokens", "tokens"),
                "latency_per_token_ms": ("latency per output token", "ms"),
                "output_tokens_per_s": ("output tokens per second per stream", "tokens/s")}


# Series where a failed leg has no honest value of its own: a quick 503 is not a fast answer.
_FAILURE_IS_SLOW = frozenset({"latency_ms", "time_to_first_token_ms", "inter_token_ms", "latency_per_token_ms"})
_INTEGER_SERIES = frozenset({"completion_tokens"})  # counts: their quantiles are judged jittered (stats)
TAIL_OBSERVATIONS_TO_PASS = 20  # observations beyond the quantile before a quantile gate may PASS
TAIL_OBSERVATIONS_TO_JUDGE = 10  # ... before it is judged at all
SCREEN_MIN_PAIRS = 50  # a segment too small to judge is still screened for "slower here than elsewhere" from here


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
        return _too_few(spec, data, mask, series, label, b, c, q, n, floor, what)
    pass_floor = _pass_floor(q)
    failed_txt = (f" {failed} pairs with a failed leg count it as no faster than the slowest leg of the run."
                  if failed else "")
    selected = mask & _imputed(spec, data, series).usable
    repeated = repeated_units(data.unit, selected)
    deff = _copies(repeated, b, c, q, spec.comparison)
    # replays of one input: a quantile's paired interval resamples the inputs; a mean's or a bound on the
    # candidate alone is widened by the design effect (_copies says which)
    units = repeated if q is not None and spec.comparison != "absolute" else None
    stretch = 1.0 if units is not None else math.sqrt(deff)
    answered = int(answered / deff)
    few = answered < pass_floor
    pairs_txt = "pairs" if deff == 1.0 else "independent pairs' worth (counting the copies)"
    few_txt = (f"only {answered} {pairs_txt} where both versions answered, fewer than the {pass_floor} a PASS needs "
               f"({TAIL_OBSERVATIONS_TO_PASS} beyond the {agg})" if q else
               f"only {answered} {pairs_txt} where both versions answered, fewer than the {pass_floor} a PASS needs")
    if spec.comparison == "absolute":
        failed_txt += _copies_txt(repeated, n, deff, resampled=False)
        return _latency_absolute(spec, label, b, c, q, alpha, n, few, few_txt, pass_floor, what, unit, failed_txt,
                                 deff)
    local = _localized_p(spec, data, mask, series) if label is not None and spec.segment is None else None
    jitter = spec.metric in _INTEGER_SERIES
    if spec.comparison == "delta":
        if q:
            iv, resampled = _interval(lambda u: stats.paired_quantile_difference_ci(
                b, c, q, confidence=1 - alpha, n_resamples=n_resamples, seed=seed, jitter=jitter, units=u),
                units, stretch, deff)
        else:
            iv, resampled = stats.widened(stats.mean_difference_interval(b, c, confidence=1 - alpha), stretch), False
        failed_txt += _copies_txt(repeated, n, deff, resampled)
        return _latency_delta(spec, label, iv, alpha, n, few, few_txt, pass_floor, what, unit, failed_txt, local)
    ratio_ci: Any  # a RatioInterval (stats.widened keeps the type it is given)
    if q is None:
        ratio_ci, resampled = stats.widened(stats.paired_mean_ratio_ci(
            b, c, confidence=1 - alpha, n_resamples=n_resamples, seed=seed), stretch), False
    else:
        ratio_ci, resampled = _interval(lambda u: stats.paired_quantile_ratio_ci(
            b, c, q, confidence=1 - alpha, n_resamples=n_resamples, seed=seed, jitter=jitter, units=u),
            units, stretch, deff)
    failed_txt += _copies_txt(repeated, n, deff, resampled)
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


def _copies(units: np.ndarray | None, b: np.ndarray, c: np.ndarray, q: float | None, comparison: str) -> float:
    """The design effect where the pairs replay some captured input more than once (1 where none does): the
    latency of copies of one input shares that input's cost (its size, its output length), so the copies
    are not independent draws. The design effect is that of the statistic's influence function
    (`_quantile_design_effect`; for a mean, the linearised ratio or the difference; against a fixed limit,
    the candidate's own); the interval is widened by its square root and the pairs a PASS needs are
    counted in independent pairs. `units`: repeated_units of the selected pairs."""
    if units is None or len(b) < 2:
        return 1.0
    if comparison == "absolute":
        deff = copies_design_effect(c if q is None else c > np.quantile(c, q), units)
    elif q is not None:
        deff = _quantile_design_effect(b, c, q, units, relative=comparison == "relative")
    else:
        mb, mc = float(b.mean()), float(c.mean())
        relative = comparison == "relative" and mb > 0 and mc > 0
        deff = copies_design_effect(c / mc - b / mb if relative else c - b, units)
    return deff


def _copies_txt(units: np.ndarray | None, n: int, deff: float, resampled: bool) -> str:
    """The reason's word on the copies: how many inputs the pairs replay, and how the interval allows for it."""
    if units is None or n < 2:
        return ""
    how = ("the interval resamples the inputs, not the pairs" if resampled else
           f"the interval is widened {math.sqrt(deff):.2f}x for the copies (design effect {deff:.2f})")
    return f" The {n} pairs replay {int(units.max()) + 1} captured inputs: {how}."


def _interval(interval: Callable[[np.ndarray | None], Any], units: np.ndarray | None, stretch: float,
              deff: float) -> tuple[Any, bool]:
    """A quantile's paired interval, and whether it resampled the inputs: it does where they repeat, unless
    that bootstrap is out of reach at this size (stats.InputsBootstrapTooLarge: no input window, and more pairs
    than the bootstrap over every pair can afford); then the pair bootstrap is widened by the design effect."""
    if units is None:
        return stats.widened(interval(None), stretch), False
    try:
        return interval(units), True
    except stats.InputsBootstrapTooLarge:
        return stats.widened(interval(None), math.sqrt(deff)), False


def _quantile_design_effect(b: np.ndarray, c: np.ndarray, q: float, units: np.ndarray, relative: bool) -> float:
    """Design effect of the paired quantile ratio (or difference) over units: that of its influence
    function, each version's tail indicator over the density at its quantile (of the log values for the
    ratio; the density in ms is that over the quantile). Where the candidate's slowdown depends on the
    input, the indicators weigh differently and the inputs' own spread does not cancel between the
    versions: seeded simulations (docs/judgement.md, "Replays of one input") put the true variance at
    1.2-3.6x the pair bootstrap's and this estimate at 1.4-2.7x. Without a density (too few values, or
    none spread around the quantile) each input counts once."""
    qb, qc = float(np.quantile(b, q)), float(np.quantile(c, q))
    with np.errstate(divide="ignore", invalid="ignore"):
        gb = stats.log_quantile_density(np.log(b[b > 0]), q)
        gc = stats.log_quantile_density(np.log(c[c > 0]), q)
    if not (math.isfinite(gb) and math.isfinite(gc) and gb > 0 and gc > 0):
        return len(b) / (int(units.max()) + 1)
    wb, wc = (1 / gb, 1 / gc) if relative else (qb / gb, qc / gc)
    return copies_design_effect((c > qc) * wc - (b > qb) * wb, units)


def _too_few(spec: GateSpec, data: PairData, mask: np.ndarray, series: dict[str, np.ndarray], label: str | None,
             b: np.ndarray, c: np.ndarray, q: float | None, n: int, floor: int, what: str) -> GateResult:
    """Too few pairs for the quantile's interval: inconclusive. A segment of a comparison gate is still
    screened (_localized_p) from SCREEN_MIN_PAIRS pairs on, with the point estimate beside it, so that a
    small tenant slower in every pair becomes a suspect (multiplicity._suspects) rather than passing unseen."""
    base: dict[str, float | None] = {"baseline": None, "candidate": None, "observed": None, "p_worse": None}
    if label is not None and spec.segment is None and spec.comparison != "absolute" and n >= SCREEN_MIN_PAIRS:
        bq, cq = (float(np.quantile(b, q)), float(np.quantile(c, q))) if q else (float(b.mean()), float(c.mean()))
        observed = (cq / bq if bq > 0 else None) if spec.comparison == "relative" else cq - bq
        base = {"baseline": bq, "candidate": cq, "observed": observed,
                "p_worse": _localized_p(spec, data, mask, series)}
    return _result(spec, label, ci=None, n=n, status="inconclusive", min_n=floor, **base,
                   reason=f"{spec.aggregation} {what}{_where(label)}: only {n} pairs; at least {floor} are needed to "
                          f"estimate it.")


def _localized_p(spec: GateSpec, data: PairData, mask: np.ndarray, series: dict[str, np.ndarray]) -> float:
    """One-sided p-value that the candidate is worse here: the larger of two (an intersection-union test,
    valid for "both"). (1) The candidate leg is slower more often inside the segment than outside it: the
    share of pairs where it took longer (ties left out), segment against the rest, by the two-proportion z
    test (independent sets of pairs). A regression confined to a segment shifts the whole distribution
    there, which this sees long before the segment's own p95 interval clears the limit; a shift shared by
    every segment does not make any one of them suspect. (2) Inside the segment it is the slower leg more
    often than not (a sign test): a segment left as it was while the candidate got faster everywhere else
    stands out by (1) alone, and is no regression."""
    imp = _imputed(spec, data, series)
    ki, ni = int((imp.slower & mask).sum()), int((imp.differs & mask).sum())
    k_all, n_all = int(imp.slower.sum()), int(imp.differs.sum())
    units = repeated_units(data.unit, imp.differs)  # replays of one input: counts shrunk by the design effect
    deff = copies_design_effect(imp.slower[imp.differs], units) if units is not None else 1.0
    here = stats.two_proportion_p_above(ki / deff, ni / deff, (k_all - ki) / deff,  # type: ignore[arg-type]
                                        (n_all - ni) / deff)  # type: ignore[arg-type]
    k, n = ki / deff, ni / deff
    sign = float(sps.beta.cdf(0.5, k, n - k + 1)) if k > 0 else 1.0  # P(Bin(n, 1/2) >= k)
    return max(here, sign)


def _latency_absolute(spec: GateSpec, label: str | None, b: np.ndarray, c: np.ndarray, q: float | None, alpha: float,
                      n: int, few: bool, few_txt: str, pass_floor: int, what: str, unit: str,
                      failed_txt: str, deff: float = 1.0) -> GateResult:
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
    stretch = math.sqrt(deff)  # copies of one input (_copies)
    lo, hi = value - (value - lo) * stretch, value + (hi - value) * stretch
    status = _bound_status(spec, lo, hi, few)
    tail = f": {few_txt}" if status == "inconclusive" and few and not (lo > spec.threshold or hi < spec.threshold) else ""
    return _result(spec, label, baseline=base, candidate=value, observed=value, ci=(lo, hi), n=n, status=status,
                   p_value=p, min_n=pass_floor,
                   effect=(value - spec.threshold) if spec.direction == "max" else (spec.threshold - value),
                   reason=f"Candidate {agg} {what} {value:.1f} {unit}{_where(label)} (interval {lo:.1f}-{hi:.1f}) "
                          f"vs limit {spec.threshold:g} {unit}: {status}{tail}.{failed_txt}")


def _latency_delta(spec: GateSpec, label: str | None, iv: Any, alpha: float, n: int, few: bool, few_txt: str,
                   pass_floor: int, what: str, unit: str, failed_txt: str, local: float | None) -> GateResult:
    """candidate - baseline in the metric's unit (maximum_increase: 5 = at most 5 ms slower), judged on `iv`:
    the paired bootstrap of the quantile difference, or the paired t bound of the mean difference."""
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

