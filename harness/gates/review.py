"""The review-score gate: paired difference of imported scores, with betting bounds for a bounded mean."""
from __future__ import annotations

import numpy as np

from ..analysis import stats
from ..analysis.clustered import repeated_units, unit_means
from ..analysis.dataset import PairData
from ..gate_config import GateSpec
from .result import GateResult, _result, _where


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
    # Replays of one input (loops, scores imported by a captured id shared by several requests) carry one
    # review each, copied: the pairs of each input are averaged into one observation.
    units = repeated_units(data.unit, mask & np.isfinite(data.score["baseline"]) & np.isfinite(data.score["candidate"]))
    pairs = int(ok.sum())
    if units is not None:
        b, c = unit_means(b[ok], units), unit_means(c[ok], units)
        ok = np.ones(len(b), bool)
    n = int(ok.sum())
    copies_txt = (f"; {pairs} pairs replay {n} captured inputs, each input counted once" if units is not None
                  else "")
    if n < REVIEW_MIN_N:
        return _result(spec, label, baseline=None, candidate=None, observed=None, ci=None, n=n, status="inconclusive",
                       min_n=REVIEW_MIN_N,
                       reason=f"Review scores for {n} {'captured inputs' if units is not None else 'pairs'}"
                              f"{_where(label)}, fewer than the {REVIEW_MIN_N} a judgement "
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
                          f"{spec.threshold_text}{copies_txt}: {status}.")

