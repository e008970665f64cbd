"""Canary schedule: from the evidence of one paired replay to a plan for the live rollout, and its exports.

`build_schedule` sizes each step of ``canary.steps_percent`` (after the shadow replay already done):

- requests: for each gate, the candidate requests a live step needs to tell the gate's threshold apart
  from the baseline behaviour observed in this run, at ``analysis.alpha`` (one-sided) and
  ``canary.power``. A live canary compares two *independent* arms (canary vs stable traffic), so:
  quantile latency gates use `stats.n_quantile_ratio_from_density` with the density of the baseline's
  log latency at the quantile, measured from this run (the lognormal `stats.n_quantile_ratio` only
  where the run cannot give one); absolute rate limits use the exact `stats.n_one_proportion_bound`
  (the candidate's bound must clear the limit when its true rate is the baseline's); rate increases over the baseline use `stats.n_two_proportions`;
  review-score deltas use `stats.n_mean_difference`. The shadow step records the paired sizes
  (McNemar for rate increases) next to what the replay had.
- duration: requests / (share x production rate x share of the gate's scope), where the production rate
  is the captured one (requests / span of ``captured_at``) unless ``canary.production_rps`` says
  otherwise; lengthened at low shares when the traffic is bursty, held for a soak window when the
  candidate is resource-heavy, and a full daily cycle at the first live step when the scenario says the
  model moves money or customer trust.
- the smallest segment and how long each step needs before it has seen enough of it;
- rollback conditions: each gate with its live threshold and a PromQL template, and the owner.

Every number carries a ``basis`` string saying where it came from. Exports (`export_schedule`):
Argo Rollouts (Rollout + AnalysisTemplates), Flagger (Canary + MetricTemplates), Istio (one
VirtualService per step). Metric queries are templates over Istio's standard metrics and
kube-state-metrics, marked as such: adapt them to the telemetry you have.
"""
from __future__ import annotations

from .build import build_schedule
from .files import export_refusal, export_schedule, load_schedule, write_schedule
from .policy import DAILY_CYCLE_S, EXPORT_FORMATS, RESOURCE_SOAK_S
from .profile import traffic_profile
from .steps import format_duration

__all__ = ["build_schedule", "write_schedule", "load_schedule", "export_schedule", "export_refusal", "EXPORT_FORMATS",
           "traffic_profile", "format_duration", "DAILY_CYCLE_S", "RESOURCE_SOAK_S"]
