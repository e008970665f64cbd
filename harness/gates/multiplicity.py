"""Segment results across many tests: Benjamini-Hochberg, suspects, and the A/A noise floor."""
from __future__ import annotations

import math
from dataclasses import replace
from typing import Iterable

from ..analysis import stats
from ..gate_config import HIGHER_IS_BETTER, LATENCY_LIKE, PAIR_METRICS, GateSpec
from .result import GateResult, delta_scale, natural_delta


def _against_noise(r: GateResult, aa_noise: dict[tuple[str, str | None], tuple[float, str | None]]) -> GateResult:
    """Diffy's rule against an A/A run: a FAIL stands only where the difference exceeds the A/A
    difference of the same gate and scope by a relative margin (25 %) and an absolute one. The same gate
    means the same name measuring the same thing (delta_scale): an A/A gate of that name that measured
    milliseconds must not excuse a ratio."""
    found = aa_noise.get((r.name, r.segment))
    delta = natural_delta(r)
    if found is None or delta is None or (r.comparison == "absolute" and r.metric not in PAIR_METRICS):
        return r  # an absolute limit judges the candidate alone: noise between the versions does not excuse it
    noise, scale = found
    if scale is not None and scale != delta_scale(r):
        return replace(r, reason=r.reason + f" The A/A reference's {r.name} measured {scale}, not "
                                            f"{delta_scale(r)}: no noise floor for this gate.")
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
    unconfirmed: set[int] = set()
    for i, rej in rejected.items():
        r = out[i]
        if r.status == "fail" and not rej:
            unconfirmed.add(i)
            out[i] = _unconfirmed_fail(r, len(rejected))
    return _suspects(out, overall_labels, alpha, unconfirmed)


def _unconfirmed_fail(r: GateResult, tests: int) -> GateResult:
    """A segment FAIL that Benjamini-Hochberg does not confirm is INCONCLUSIVE. Latency-like gates have the
    screen (_suspects) to hold such a segment; every other blocking gate holds it here when the candidate is
    worse than the baseline there (or the metric compares the versions itself): its own interval is beyond
    the limit, which is no evidence for a PROMOTE (a tenant of 135 requests failing 4 % against a 1 % limit,
    the rest clean, PROMOTEd in 53 of 100 seeded runs)."""
    reason = r.reason + f" Not significant after Benjamini-Hochberg across {tests} segment tests."
    delta = natural_delta(r)
    worse = (r.metric in PAIR_METRICS if delta is None
             else (-delta if r.metric in HIGHER_IS_BETTER else delta) > 0)
    if r.metric in LATENCY_LIKE or r.severity != "blocking" or not worse:
        return replace(r, status="inconclusive", reason=reason)
    return replace(r, status="inconclusive", suspect=True, reason=reason + (
        " Suspected regression: its own interval is beyond the limit and the candidate is worse than the "
        "baseline here; held until a larger run settles it."))


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


def _suspects(results: list[GateResult], overall_labels: dict[str, str | None], alpha: float,
              unconfirmed: set[int] | frozenset[int] = frozenset()) -> list[GateResult]:
    """A regression confined to one segment is often too small a sample to FAIL there, and BH with one real
    signal acts like Bonferroni: such a segment would let the release PROMOTE. The screen: in every segment
    of every latency-like comparison gate, "the candidate leg is no more often the slower one here than in
    the rest of the run", Benjamini-Hochberg across those tests at alpha; a blocking segment result that is
    inconclusive (its interval cannot rule out a breach), rejected there, and slower than the baseline by its
    own estimate is a suspect, and holds the release (docs/judgement.md, "Segments and multiplicity"). The
    estimate is not asked to be beyond the limit: on a few hundred pairs a p95 estimate is too noisy for that
    (a tenant 20 % slower against a +10 % gate had its estimate within the limit in 1 run of 9 on heavy
    tails). A slowdown shared by every segment, within the allowance, makes none of them suspect."""
    out = list(results)
    rejected = _segment_bh(out, overall_labels, "p_worse", alpha)
    for i, rej in rejected.items():
        r = out[i] = replace(out[i], worse_here=rej)
        worse = natural_delta(r)
        if rej and r.status == "inconclusive" and r.severity == "blocking" and worse is not None and worse > 0:
            why = ("its FAIL was not confirmed across segments" if i in unconfirmed
                   else "its interval does not rule out the limit")
            out[i] = replace(r, suspect=True, reason=r.reason + (
                f" Suspected regression: worse than the baseline after Benjamini-Hochberg across {len(rejected)} "
                f"segment tests (p={r.p_worse:.2g}), and {why}; held until a larger run settles it."))
    return out

