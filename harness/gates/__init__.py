"""Gate specs + analysed pairs -> gate results -> verdict.

Rules (DESIGN.md, "Judgement, not eyeballing"):
- latency: paired bootstrap of the candidate/baseline quantile ratio; PASS only when the one-sided
  upper bound is within the allowed regression, FAIL only when the lower bound is beyond it;
- rates: exact (Clopper-Pearson) one-sided bounds against absolute limits, McNemar on discordant pairs
  for increases over the baseline; zero events in n gives an upper bound of about 3/n;
- a segment below the sample size its gate needs can never PASS; per-segment FAILs are the diagnostic
  list and must survive Benjamini-Hochberg across it;
- verdict: BLOCK if a blocking gate fails (overall or in a segment), HOLD if a blocking overall gate
  is inconclusive, else PROMOTE. Every result carries one sentence with its numbers.
"""
from __future__ import annotations

from .evaluate import evaluate_gates
from .resources import ResourceSummary
from .result import GateResult, natural_delta
from .verdict import Verdict, decide_verdict

__all__ = ["GateResult", "Verdict", "ResourceSummary", "evaluate_gates", "decide_verdict", "natural_delta"]
