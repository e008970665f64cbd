"""Rate gates: exact one-sided bounds against absolute limits, paired score tests for increases over
the baseline, and rates measured on the pair (label agreement, flips, field diffs)."""
from __future__ import annotations

import numpy as np

from ..analysis import stats
from ..analysis.clustered import copies_design_effect, repeated_units, unit_rate
from ..analysis.dataset import PairData
from ..gate_config import HIGHER_IS_BETTER, GateSpec
from .result import GateResult, _result, _where


_RATE_TEXT = {"error_rate": "error rate", "timeout_rate": "timeout rate", "schema_pass_rate": "schema pass rate",
              "abstention_rate": "abstention rate", "citation_rate": "citation rate", "fallback_rate": "fallback rate",
              "tool_call_validity_rate": "tool-call validity rate", "label_agreement": "label agreement",
              "label_flip_rate": "label flip rate", "field_diff_rate": "field diff rate", "goodput": "goodput"}


def _rate(spec: GateSpec, label: str | None, col: dict[str, np.ndarray], judged: dict[str, np.ndarray] | None,
          mask: np.ndarray, alpha: float, higher_is_worse: bool,
          refusals: dict[str, np.ndarray] | None = None, unit: np.ndarray | None = None) -> GateResult:
    """`refusals` (error_rate): the 4xx and 3xx legs, so that the reason says how many errors are answers the
    other version gave otherwise (error_kinds.pair_failed). `unit` (PairData.unit): where the scope replays
    an input more than once, the copies are judged as clustered (clustered.unit_rate), not as new evidence."""
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
        return _rate_delta(spec, label, col, sel, mask, rate, alpha, what, refusals, unit)
    units = repeated_units(unit, sel[target])
    thr = spec.threshold
    copies_txt = ""
    if units is None:
        lo, hi = stats.clopper_pearson_interval(k[target], nn, confidence=1 - alpha, one_sided=True)
        p = (stats.binomial_p_above(k[target], nn, thr) if spec.direction == "max"
             else stats.binomial_p_above(nn - k[target], nn, 1 - thr))
    else:
        cr = unit_rate(col[target][sel[target]], units, 1 - alpha)
        lo, hi = cr.lower, cr.upper
        p = cr.p_above(thr) if spec.direction == "max" else cr.p_below(thr)
        copies_txt = _copies_text(cr.clusters, nn, cr.n_effective)
    if spec.direction == "max":
        status = "pass" if hi <= thr else "fail" if lo > thr else "inconclusive"
        effect = rate[target] - thr
    else:
        status = "pass" if lo >= thr else "fail" if hi < thr else "inconclusive"
        effect = thr - rate[target]
    pct = lambda x: f"{100 * x:.2f} %"  # noqa: E731
    base_txt = f"baseline {pct(rate['baseline'])}, " if "baseline" in rate and target == "candidate" else ""
    zero = (f" (no events in {nn}: upper bound {pct(hi)}, about 3/n)" if k[target] == 0 and higher_is_worse
            and units is None else "")
    refused = int((col[target] & refusals[target])[sel[target]].sum()) if refusals and len(versions) == 2 else 0
    other = "baseline" if target == "candidate" else "candidate"
    refused_txt = f", {refused} of them 4xx or 3xx answers to requests the {other} took" if refused else ""
    verdict_txt = {"pass": "within the limit", "fail": "beyond the limit",
                   "inconclusive": "the interval straddles the limit"}[status]
    return _result(spec, label, baseline=rate.get("baseline"), candidate=rate[target], observed=rate[target],
                   ci=(lo, hi), n=nn, status=status, p_value=p, effect=effect,
                   reason=f"{target.capitalize()} {what}{_where(label)} {pct(rate[target])} ({k[target]}/{nn}{refused_txt}; "
                          f"{base_txt}{100 * (1 - alpha):g} % bounds {pct(lo)}-{pct(hi)}){zero}{copies_txt} vs "
                          f"{spec.threshold_text}: {verdict_txt}.")


def _rate_delta(spec: GateSpec, label: str | None, col: dict[str, np.ndarray], sel: dict[str, np.ndarray],
                mask: np.ndarray, rate: dict[str, float], alpha: float, what: str,
                refusals: dict[str, np.ndarray] | None = None, unit: np.ndarray | None = None) -> GateResult:
    both = sel["baseline"] & sel["candidate"]
    bcol, ccol = col["baseline"][both], col["candidate"][both]
    b_only = int((bcol & ~ccol).sum())
    c_only = int((ccol & ~bcol).sum())
    units = repeated_units(unit, both)
    # Replays of one input: the score interval on counts shrunk by the design effect of the paired
    # difference (Rao & Scott's adjustment), so that copies of one answer are not counted as new pairs.
    deff = copies_design_effect(ccol.astype(np.int8) - bcol.astype(np.int8), units) if units is not None else 1.0
    refused = ""
    if refusals is not None:
        rb, rc = (int((x & refusals[v][both]).sum()) for x, v in ((bcol, "baseline"), (ccol, "candidate")))
        refused = f"; 4xx or 3xx answers to requests the other version took: {rb} baseline, {rc} candidate" if rb or rc else ""
    n = int(both.sum())
    eb, ec, en = b_only / deff, c_only / deff, n / deff
    lo, hi = stats.paired_rate_difference_ci(eb, ec, en, confidence=1 - alpha)  # type: ignore[arg-type]
    diff = (c_only - b_only) / n if n else float("nan")
    copies_txt = _copies_text(int(units.max()) + 1, n, en) if units is not None else ""
    thr = spec.threshold
    if spec.direction == "max":
        status = "pass" if hi <= thr else "fail" if lo > thr else "inconclusive"
    else:
        status = "pass" if lo >= thr else "fail" if hi < thr else "inconclusive"
    # The p-value tests the gate's own allowance (Tango's score test at the threshold, the dual of the
    # interval), not "no change": McNemar against 0 would flag a candidate that is within its allowance.
    p = stats.paired_rate_difference_p(eb, ec, en, thr,  # type: ignore[arg-type]
                                       "max" if spec.direction == "max" else "min")
    return _result(spec, label, baseline=rate.get("baseline"), candidate=rate.get("candidate"), observed=diff,
                   ci=(lo, hi), n=n, status=status, p_value=p, effect=diff,
                   reason=f"Paired {what} change{_where(label)} {100 * diff:+.2f} points ({b_only} baseline-only vs "
                          f"{c_only} candidate-only events in {n} pairs{refused}; score test against the allowance "
                          f"p={p:.3g}){copies_txt} "
                          f"vs {spec.threshold_text}: {status}.")


def _pair_rate(spec: GateSpec, data: PairData, mask: np.ndarray, label: str | None, alpha: float) -> GateResult:
    """Rates measured on the pair (one event per request): label agreement / flips on pairs where the
    baseline gave a label and the candidate answered (_label_pairs); field diffs on pairs whose answers were
    compared."""
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
                 higher_is_worse=spec.metric not in HIGHER_IS_BETTER, unit=data.unit)


def _copies_text(inputs: int, pairs: int, effective: float) -> str:
    return (f"; {pairs} pairs replay {inputs} captured inputs, so the bounds count the copies of one input as "
            f"about {effective:,.0f} independent pairs")


def _label_pairs(data: PairData) -> tuple[np.ndarray, np.ndarray]:
    """(judged, they agree) per pair: judged where the baseline gave a label and the candidate answered
    without an error (its errors are the error gates'); a candidate answer without a label is a
    disagreement, never left out (a candidate that drops the label on a third of its answers must not agree
    100 % on the rest)."""
    b, c = data.prediction["baseline"].codes, data.prediction["candidate"].codes
    judged = (b >= 0) & ~data.error["candidate"]
    return judged, judged & (b == c)


def both_labelled(data: PairData) -> np.ndarray:
    """Pairs where both versions gave a label (what a label kappa compares)."""
    return (data.prediction["baseline"].codes >= 0) & (data.prediction["candidate"].codes >= 0)

