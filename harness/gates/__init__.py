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

from .evaluate import evaluate_gates
from .resources import ResourceSummary
from .result import GateResult, delta_scale, natural_delta
from .verdict import Verdict, decide_verdict

__all__ = ["GateResult", "Verdict", "ResourceSummary", "evaluate_gates", "decide_verdict", "natural_delta", "delta_scale"]
