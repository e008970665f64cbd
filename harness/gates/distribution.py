"""Distribution gates: label kappa and confidence drift (PSI, KS, mean shift) on paired answers."""
from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

import scipy.stats as sps

from ..analysis import stats
from ..analysis.clustered import ClusterIndex, copies_design_effect, repeated_units
from ..analysis.dataset import PairData
from ..gate_config import GateSpec
from .rates import both_labelled
from .result import GateResult, _result, _where


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
        ok = mask & both_labelled(data)
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
    units = repeated_units(data.unit, ok)  # replays of one input: resample inputs, not pairs
    copies_txt = "" if units is None else f"; {n} pairs replay {int(units.max()) + 1} captured inputs, " + (
        "their spread clustered by input" if fn is None else "resampled as inputs")
    if n < DISTRIBUTION_MIN_N:
        return _result(spec, label, baseline=None, candidate=None, observed=None, ci=None, n=n, status="inconclusive",
                       min_n=DISTRIBUTION_MIN_N,
                       reason=f"{what.capitalize()}{_where(label)}: {n} pairs with both values; at least "
                              f"{DISTRIBUTION_MIN_N} are needed.")
    thr = spec.threshold
    if fn is None:
        iv = stats.paired_mean_difference_ci(b, c, confidence=1 - alpha, one_sided=True)
        if units is not None:  # the t bound's standard error, clustered by input
            iv = replace(iv, se=iv.se * math.sqrt(copies_design_effect(c - b, units)))
            tq = float(sps.t.ppf(1 - alpha, iv.df)) if iv.df > 0 else math.inf
            iv = replace(iv, lower=iv.estimate - tq * iv.se, upper=iv.estimate + tq * iv.se)
        value, lo, hi = iv.estimate, iv.lower, iv.upper
        base, cand = float(b.mean()), float(c.mean())
        p = iv.p_above(thr) if spec.direction == "max" else iv.p_below(thr)
    else:
        value = float(fn(b, c))
        arr = _distribution_bootstrap(m, b, c, np.random.default_rng(seed), min(n_resamples, _DISTRIBUTION_RESAMPLES),
                                      units)
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
                          f"{hi:.3g}, n={n}{copies_txt}) vs {spec.threshold_text}: {verdict_txt}.")


_TABLE_CELLS_MAX = 10_000  # a confusion table larger than this is resampled pair by pair


def _distribution_bootstrap(metric: str, b: np.ndarray, c: np.ndarray, rng: np.random.Generator,
                            n_resamples: int, units: np.ndarray | None = None) -> np.ndarray:
    """Bootstrap replicates of a pair statistic. Kappa and PSI depend only on a small table of the pairs
    (confusion matrix; bins of baseline x candidate), so they resample the table (O(cells) each, whatever
    n); KS, and a label set too large for a table, resample the pairs. Pairs that replay one input
    (`units`) are resampled by input, all their pairs together."""
    if metric == "label_kappa" and (int(max(b.max(), c.max())) + 1) ** 2 <= _TABLE_CELLS_MAX:
        return stats.bootstrap_paired_kappa(b, c, n_resamples, rng, units)
    if metric == "confidence_psi":
        return stats.bootstrap_paired_psi(b, c, n_resamples, rng, units=units)
    fn = _kappa_codes if metric == "label_kappa" else stats.ks_statistic
    n = len(b)
    index = ClusterIndex(units) if units is not None else None
    out = np.empty(n_resamples)
    for r in range(n_resamples):
        i = index.resample(rng) if index is not None else rng.integers(0, n, n)
        out[r] = fn(b[i], c[i])
    return out


def _kappa_codes(b: np.ndarray, c: np.ndarray) -> float:
    k = int(max(b.max(), c.max())) + 1
    n = len(b)
    p_o = float(np.mean(b == c))
    p_e = float(np.dot(np.bincount(b, minlength=k), np.bincount(c, minlength=k))) / (n * n)
    return (p_o - p_e) / (1 - p_e) if p_e < 1.0 else math.nan

