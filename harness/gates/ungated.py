"""What no gate of the scenario judges, said next to the verdict: a candidate that breaks its answers' shape, fails
more requests or answers more slowly than the baseline, clearly and beyond a tolerance, when the scenario has no
gate on that. The verdict stays the gates' (written before the run); these lines say what it did not look at.

Each kind of line (errors, latency) is a one-sided test at the analysis's alpha, split (Bonferroni) over the
whole run and every segment value looked at, so that a run where nothing changed carries a line of a kind in at
most alpha of runs (tests/test_ungated.py simulates it at the hardest null)."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from ..analysis import stats
from ..analysis.dataset import PairData
from ..gate_config import GateSpec

__all__ = ["ungated_notes", "UNGATED_BREAK_SHARE", "UNGATED_ERROR_RATE", "UNGATED_P95_RATIO"]

# A field the baseline's answers carry that the candidate's lack (or carry with another type) in at least this
# share of the compared pairs.
UNGATED_BREAK_SHARE = 0.01
# The candidate fails at least this share of requests (the common error_rate gate, <= 1 %), more than the
# baseline does, on the same requests.
UNGATED_ERROR_RATE = 0.01
# The candidate's p95 latency is above the baseline's by more than this ratio (the common gate, +10 %), with
# the whole one-sided interval above it.
UNGATED_P95_RATIO = 1.10
_SHAPE_GATES = frozenset({"field_diff_rate", "schema_pass_rate"})
_SEGMENT_LINES = 3  # the worst segments named, so that the notes stay a few lines
_MIN_SEGMENT_PAIRS = 100


def ungated_notes(gates: Iterable[GateSpec], outputs: dict[str, Any], data: PairData | None, alpha: float,
                  n_resamples: int, seed: int) -> list[str]:
    gates = list(gates)
    # a gate scoped to one segment (tenant=a) judges that segment, not the rest of the run
    metrics = {g.metric for g in gates if not g.segment}
    notes = [] if metrics & _SHAPE_GATES else shape_notes(outputs)
    if data is None or "candidate" not in data.error or not data.n:
        return notes
    if "error_rate" not in metrics:
        gated = {", ".join(f"{k}={v}" for k, v in g.segment.items()) for g in gates
                 if g.metric == "error_rate" and g.segment}
        notes.extend(error_notes(data, alpha, skip=gated))
    if "latency_ms" not in metrics:
        notes.extend(latency_notes(data, alpha, n_resamples, seed))
    return notes


def shape_notes(outputs: dict[str, Any]) -> list[str]:
    compared = int(outputs.get("compared") or 0)
    out = []
    for f in outputs.get("fields") or []:
        if f.get("kind") not in ("missing", "type") or not f.get("reported") or not compared:
            continue
        n = int(f.get("n") or 0)
        if n / compared >= UNGATED_BREAK_SHARE:
            what = "missing from" if f["kind"] == "missing" else "of another type in"
            out.append(f"Not gated: {f['path']} is {what} {100 * n / compared:.1f} % of the candidate's answers "
                       f"({n:,} of {compared:,} compared pairs) where the baseline's had it; a field_diff_rate or "
                       f"schema_pass_rate gate would judge it")
    return out


def error_notes(data: PairData, alpha: float, skip: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """The whole run first (at alpha/2); segments only when the whole run is not named (a tenant the average
    hides), at alpha/2 split over every segment value; `skip`: segments a gate of the scenario judges."""
    fb, fc = data.error["baseline"], data.error["candidate"]
    whole = _error_excess(fb, fc, alpha / 2)
    if whole is not None:
        return [f"Not gated: the candidate failed {whole} overall; an error_rate gate would judge it"]
    values = [(name, i, label) for name, coded in sorted(data.segments.items())
              for i, label in enumerate(coded.labels)]
    found = []
    for name, i, label in values:
        if f"{name}={label}" in skip:
            continue
        mask = data.segments[name].codes == i
        if int(mask.sum()) < _MIN_SEGMENT_PAIRS:
            continue
        text = _error_excess(fb[mask], fc[mask], alpha / (2 * max(1, len(values))))
        if text is not None:
            found.append((-(int(fc[mask].sum()) - int(fb[mask].sum())), f"{name}={label}", text))
    return [f"Not gated: the candidate failed {text} in {where}; an error_rate gate would judge it"
            for _, where, text in sorted(found)[:_SEGMENT_LINES]]


def _error_excess(fb: np.ndarray, fc: np.ndarray, alpha: float) -> str | None:
    n = len(fc)
    b = int((fb & ~fc).sum())  # only the baseline failed
    c = int((fc & ~fb).sum())  # only the candidate failed
    kc, kb = int(fc.sum()), int(fb.sum())
    if not n or kc / n < UNGATED_ERROR_RATE or c <= b or stats.mcnemar_one_sided(b, c) >= alpha:
        return None
    return (f"{100 * kc / n:.2f} % of requests ({kc:,} of {n:,} pairs) against the baseline's {100 * kb / n:.2f} % "
            f"({c:,} failed only on the candidate, {b:,} only on the baseline)")


def latency_notes(data: PairData, alpha: float, n_resamples: int, seed: int) -> list[str]:
    """p95 over the pairs both versions answered: a failed leg is the error notes' (or gate's) matter, and a
    refusal or redirect (fast, and no answer) would pull the p95 down."""
    refused = data.refusals()
    ok = ~(data.error["baseline"] | data.error["candidate"] | refused["baseline"] | refused["candidate"])
    b, c = data.latency["baseline"][ok], data.latency["candidate"][ok]
    keep = np.isfinite(b) & np.isfinite(c)
    b, c = b[keep], c[keep]
    if len(b) < 400:  # 20 observations beyond the p95, as for a latency gate to pass
        return []
    ratio = stats.paired_quantile_ratio_ci(b, c, 0.95, confidence=1 - alpha, n_resamples=n_resamples, seed=seed)
    if not ratio.lower > UNGATED_P95_RATIO:  # NaN (an undefined ratio) names nothing
        return []
    return [f"Not gated: the candidate's p95 latency is {ratio.estimate:.2f}x the baseline's overall "
            f"({100 * (1 - alpha):g} % lower bound {ratio.lower:.2f}x, {len(b):,} pairs both answered); a latency_ms "
            f"gate would judge it"]
