"""No answers, no PASS: a replay whose baseline answered too few of its requests compares nothing.

The baseline is the model production runs; replayed, it answers what production answered. Where it answers
fewer than MIN_BASELINE_ANSWERED of the analysed requests with a readable 2xx, what failed is the replay's
setup, not a model: a target URL without the model's path (404 from both versions: nobody's error), a
`replay.timeout_s` shorter than the model's answers (timeouts on both: no paired excess), credentials the
capture does not carry (401 from both). Every comparison then passes on nothing, and absolute limits pass on
requests no model saw, or fail on both versions alike. So each result that passed becomes INCONCLUSIVE (HOLD,
exit 2) with what the baseline answered and what to check, and so does a FAIL of an absolute limit where the
candidate did no worse than the baseline (both timing out is the replay's timeout, not the candidate); a FAIL
where the candidate did worse than the baseline stands.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace
from typing import Mapping

from .analysis.dataset import PairData
from .gate_config import PAIR_METRICS
from .gates import GateResult

__all__ = ["MIN_BASELINE_ANSWERED", "baseline_shortfall", "apply_answered"]

# Production's own share of non-2xx answers (bad requests, auth failures in a capture) stays well under this;
# a replay set up wrong is far beyond it.
MIN_BASELINE_ANSWERED = 0.5


def baseline_shortfall(data: PairData, error_kinds: Mapping[str, int]) -> str | None:
    """Why the baseline's answers are no evidence (None when they are). `error_kinds`: the baseline's legs by
    error kind, to say what it answered instead."""
    if "baseline" not in data.error or not data.n:
        return None
    refused = data.refusals()["baseline"]
    answered = int((~data.error["baseline"] & ~refused).sum())
    if answered >= MIN_BASELINE_ANSWERED * data.n:
        return None
    kinds = ", ".join(f"{n:,} {k}" for k, n in Counter(error_kinds).most_common(4))
    return (f"the baseline answered only {answered:,} of {data.n:,} requests ({100 * answered / data.n:.1f} %) "
            f"with a readable 2xx{f' ({kinds})' if kinds else ''}: the replay compared no model's answers. Check the "
            f"targets' URLs and paths, replay.timeout_s, and the credentials the requests carry "
            f"(harness validate; one request by hand)")


def apply_answered(results: list[GateResult], shortfall: str | None, paired: bool) -> list[GateResult]:
    """`paired`: there is a candidate; a single version's FAIL is its own, whatever it answered."""
    if shortfall is None:
        return results
    out = []
    for r in results:
        if r.status == "pass":
            r = replace(r, status="inconclusive", reason=f"{r.reason} Inconclusive: {shortfall}.")
        elif r.status == "fail" and paired and not _worse_than_baseline(r):
            r = replace(r, status="inconclusive", reason=f"{r.reason} Inconclusive: the candidate did no worse than "
                                                         f"the baseline, and {shortfall}.")
        out.append(r)
    return out


def _worse_than_baseline(r: GateResult) -> bool:
    """A comparison's FAIL is the candidate worse than the baseline, and so is a pair metric's (measured on the
    pair); an absolute limit's, only where the candidate's whole interval is worse than the baseline's figure
    (a figure without the baseline's, or NaN: nothing judged on the baseline, keeps its FAIL)."""
    if (r.comparison != "absolute" or r.metric in PAIR_METRICS or r.baseline is None or r.candidate is None
            or not math.isfinite(r.baseline)):
        return True
    lo, hi = r.ci or (r.candidate, r.candidate)
    return lo > r.baseline if "<=" in r.threshold_text else hi < r.baseline

