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

import json
import math
import re
from pathlib import Path
from typing import Any

import duckdb
import yaml

from .analysis import stats
from .analysis.dataset import ERROR_KINDS_COUNTED
from .analysis.rows import BATCH_BUCKETS, size_row_rate
from .errors import ExportRefused, StoreError, UsageError
from .gate_config import GateSpec

__all__ = ["build_schedule", "write_schedule", "load_schedule", "export_schedule", "export_refusal", "EXPORT_FORMATS",
           "traffic_profile", "format_duration"]

EXPORT_FORMATS = ("yaml", "argo", "flagger", "istio")

# Policy: each constant is quoted in the basis strings of the numbers it affects.
LOW_SHARE_PERCENT = 10.0      # steps at or below this share are "low-share" steps
BURSTY_DISPERSION = 2.0       # per-second count variance / mean at or above this: bursty (random arrivals: 1)
MAX_BURST_FACTOR = 3.0        # cap on the burstiness lengthening
RESOURCE_HEAVY_RATIO = 1.5    # candidate / baseline peak memory at or above this: resource-heavy
RESOURCE_SOAK_S = 1800        # resource-heavy: every live step lasts at least this long
DAILY_CYCLE_S = 86400         # moves money / customer trust: the first live step covers a full day
MIN_STEP_S = 300              # no live step shorter than 5 min (a few Prometheus scrapes and rate windows)
GUARD_INTERVAL = "5m"         # Argo background guard for event counts (restarts, OOM kills)

_QUANTILES = {"p50": 0.5, "p90": 0.9, "p95": 0.95, "p99": 0.99}
_KINDS = ", ".join(f"'{k}'" for k in ERROR_KINDS_COUNTED)
_EVENT_METRICS = {"gpu_oom_events", "oom_kills", "restarts"}
_RESOURCE_METRICS = _EVENT_METRICS | {"peak_rss_mb", "peak_gpu_memory_mb"}
_TEMPLATE_NOTE = "# TEMPLATE written by harness: adapt the metric names and labels to your telemetry"


# ============================================================================================ building

def build_schedule(summary: dict[str, Any], scenario: Any, con: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The canary schedule of one run (plain data, JSON- and YAML-safe). ``summary`` is the judgement
    so far (outputs.judge), ``con`` a read-only connection to the run's results.duckdb."""
    alpha, power = float(scenario.analysis.alpha), float(scenario.canary.power)
    verdict = summary.get("verdict", "HOLD")
    reasons = list(summary.get("verdict_reasons") or [])
    traffic = traffic_profile(con, scenario)
    rate = traffic["production_rps"]
    first_results = _scope_results(summary.get("gates") or [])
    sizing = [_size_gate(spec, first_results.get(spec.name), con, alpha, power) for spec in scenario.gates]
    segment = _smallest_segment(summary.get("segments") or [], sizing)
    heavy = _resource_weight(summary.get("resources") or {})
    risk = _risk(scenario)
    steps: list[dict[str, Any]] = [_shadow_step(summary, sizing, traffic)]
    live = [float(p) for p in scenario.canary.steps_percent if float(p) > 0]
    for i, pct in enumerate(live):
        steps.append(_live_step(pct, i == 0, rate, sizing, segment, traffic, heavy, risk))
    if segment:
        covered = next((s["name"] for s in steps[1:] if s["smallest_segment"]["covered_in_step"]), None)
        segment["first_step_covering_it"] = covered
    banner = ("ready to start: verdict PROMOTE" if verdict == "PROMOTE" else
              f"do not start: verdict {verdict}" + (f" — {_join_reasons(reasons)}" if reasons else ""))
    notes = [s["basis"] for s in sizing if s["requests"] is None and s["metric"] not in _RESOURCE_METRICS]
    owner = scenario.owner or "the owner (none named in the scenario)"
    if rate is None:
        notes.append("No production rate: the capture has no time span and canary.production_rps is not set, "
                     "so no step has a duration. Set canary.production_rps in the scenario.")
    return {
        "banner": banner,
        "start_allowed": verdict == "PROMOTE",
        "scenario": scenario.name,
        "run_id": (summary.get("run") or {}).get("id"),
        "verdict": verdict,
        "verdict_reasons": reasons,
        "owner": scenario.owner,
        "parameters": {"alpha": alpha, "power": power,
                       "basis": f"one-sided alpha {alpha:g} from analysis.alpha, power {power:g} from canary.power; "
                                "each live step gathers its own evidence (requests are counted per step)"},
        "traffic": traffic,
        "resources": heavy,
        "risk": risk,
        "sizing": sizing,
        "smallest_segment": segment,
        "steps": steps,
        "rollback": {"owner": scenario.owner,
                     "basis": "one condition per gate, judged over each step's window; a blocking gate rolls back, "
                              f"a warning gate alerts; page {owner}",
                     "conditions": [_rollback_condition(spec, first_results.get(spec.name))
                                    for spec in scenario.gates]},
        "notes": notes,
    }


def _join_reasons(reasons: list[str], limit: int = 3) -> str:
    shown = "; ".join(r.rstrip(".") for r in reasons[:limit])
    return shown + (f"; and {len(reasons) - limit} more" if len(reasons) > limit else "")


def _scope_results(gates: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The first result of each gate is its own scope (overall, or the segment the gate names)."""
    out: dict[str, dict[str, Any]] = {}
    for g in gates:
        out.setdefault(g["name"], g)
    return out


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> tuple[Any, ...]:
    row = con.execute(sql, params or []).fetchone()
    return tuple(row) if row else ()


def traffic_profile(con: duckdb.DuckDBPyConnection, scenario: Any) -> dict[str, Any]:
    """Production rate and burstiness from ``requests.captured_at`` (first loop only, warm-up included:
    it is production traffic too). Per-second counts include the empty seconds of the span."""
    n, first, last, span_s = _one(con, """select count(*), min(captured_at), max(captured_at),
                                              epoch(max(captured_at)) - epoch(min(captured_at))
                                           from requests where loop = 0""")
    ev = _one(con, "select detail from events where kind = 'traffic' order by occurred_at limit 1")
    event = json.loads(ev[0]) if ev and ev[0] else {}
    sample = scenario.traffic.sample
    fraction = float(sample.fraction) if sample else 1.0
    out: dict[str, Any] = {"captured_requests": int(n), "captured_span_s": float(span_s) if span_s else 0.0,
                           "captured_from": first.isoformat() if first else None,
                           "captured_to": last.isoformat() if last else None,
                           "records_read": event.get("records_read"), "sample_fraction": fraction}
    captured_rps = n / span_s / fraction if n >= 2 and span_s and span_s > 0 else None
    out["captured_rps"] = captured_rps
    if scenario.canary.production_rps is not None:
        out["production_rps"] = float(scenario.canary.production_rps)
        out["basis"] = (f"canary.production_rps = {float(scenario.canary.production_rps):g} from the scenario"
                        + (f" (the capture's rate was {captured_rps:.3g} rps)" if captured_rps else ""))
    else:
        out["production_rps"] = captured_rps
        out["basis"] = (f"{n} replayed requests / {span_s:.1f} s of captured_at"
                        + (f" / sample fraction {fraction:g}" if fraction != 1 else "")
                        + f" = {captured_rps:.4g} rps" if captured_rps else
                        "unknown: the capture has no time span; set canary.production_rps")
    out["burstiness"] = _burstiness(con, n, span_s)
    return out


def _burstiness(con: duckdb.DuckDBPyConnection, n: int, span_s: float | None) -> dict[str, Any]:
    if not span_s or span_s < 10 or n < 20:
        return {"bursty": False, "factor_at_low_shares": 1.0,
                "basis": "capture shorter than 10 s or under 20 requests: burstiness not judged"}
    seconds, mean, var, peak = _one(con, """
        with s as (select floor(epoch(captured_at))::bigint as sec, count(*) as c
                   from requests where loop = 0 group by 1),
             b as (select min(sec) as lo, max(sec) as hi from s),
             g as (select range as sec from range((select lo from b), (select hi from b) + 1))
        select count(*), avg(coalesce(c, 0)), var_pop(coalesce(c, 0)), max(coalesce(c, 0))
        from g left join s using (sec)""")
    mean, var = float(mean), float(var)
    cv = math.sqrt(var) / mean
    dispersion = var / mean
    # the variability of the arrival rate itself: the count CV less the Poisson part (1/mean)
    rate_cv = math.sqrt(max(cv**2 - 1.0 / mean, 0.0))
    bursty = dispersion >= BURSTY_DISPERSION
    factor = min(1.0 + rate_cv, MAX_BURST_FACTOR) if bursty else 1.0
    basis = (f"per-second counts over {seconds} s of captured_at: mean {mean:.3g}, CV {cv:.2f} (random arrivals at "
             f"this rate: {1 / math.sqrt(mean):.2f}), variance/mean {dispersion:.2f}, peak/mean {peak / mean:.2f}; ")
    basis += (f"bursty (variance/mean >= {BURSTY_DISPERSION:g}): steps at <= {LOW_SHARE_PERCENT:g} % are lengthened "
              f"x(1 + rate CV {rate_cv:.2f}) = x{factor:.2f} (capped at x{MAX_BURST_FACTOR:g}) so that the few "
              "candidate requests of a low share come from quiet periods as well as bursts"
              if bursty else f"not bursty (variance/mean < {BURSTY_DISPERSION:g})")
    return {"bursty": bursty, "seconds": int(seconds), "mean_per_s": mean, "cv": cv, "poisson_cv": 1 / math.sqrt(mean),
            "dispersion": dispersion, "rate_cv": rate_cv, "peak_to_mean": float(peak) / mean,
            "factor_at_low_shares": factor, "basis": basis}


def _resource_weight(resources: dict[str, Any]) -> dict[str, Any]:
    ratios = {}
    for key, label in (("peak_rss_mb", "RSS"), ("peak_gpu_memory_mb", "GPU memory")):
        b = (resources.get("baseline") or {}).get(key)
        c = (resources.get("candidate") or {}).get(key)
        if b and c:
            ratios[label] = (float(c) / float(b), float(b), float(c))
    if not ratios:
        return {"heavy": False, "ratio": None, "basis": "no peak memory of both versions in this run"}
    label, (ratio, b, c) = max(ratios.items(), key=lambda kv: kv[1][0])
    heavy = ratio >= RESOURCE_HEAVY_RATIO
    basis = f"candidate peak {label} {c:.0f} MB / baseline {b:.0f} MB = {ratio:.2f} (summary.resources)"
    basis += (f" >= {RESOURCE_HEAVY_RATIO:g}: resource-heavy; memory growth and OOM kills show over time under live "
              f"load, so every live step soaks for at least {RESOURCE_SOAK_S // 60} min" if heavy
              else f" < {RESOURCE_HEAVY_RATIO:g}: not resource-heavy")
    return {"heavy": heavy, "ratio": ratio, "metric": label, "basis": basis}


def _risk(scenario: Any) -> dict[str, Any]:
    flags = (("moving money", scenario.moves_money), ("affecting customer trust", scenario.customer_trust))
    why = [w for w, on in flags if on]
    basis = (f"risk: the scenario marks the model as {' and '.join(why)}: the first live step covers a full "
             f"daily cycle ({DAILY_CYCLE_S // 3600} h) so every hour's traffic mix and the daily peak are seen before "
             "more traffic is exposed" if why else "risk: neither moves_money nor customer_trust is set")
    return {"moves_money": bool(scenario.moves_money), "customer_trust": bool(scenario.customer_trust),
            "first_live_step_floor_s": DAILY_CYCLE_S if why else None, "basis": basis}


# -------------------------------------------------------------------------------------------- sizing

def _scope_where(spec: GateSpec, columns: set[str]) -> tuple[str, list[Any]]:
    if not spec.segment:
        return "", []
    if not set(spec.segment) <= columns:
        return " and false", []  # a segment this run did not record: nothing is in scope
    return "".join(f" and {_segment_sql(k)} = ?" for k in spec.segment), list(spec.segment.values())


def _segment_sql(name: str) -> str:
    """The segment's value per request as the gates see it: batch_size is stored as a row count and
    judged by its bucket label (harness.analysis.rows.batch_size_buckets)."""
    if name != "batch_size":
        return f'r."{name}"::varchar'
    whens = " ".join(f"when r.batch_size >= {lo}" + (f" and r.batch_size <= {hi}" if hi is not None else "")
                     + f" then '{lo if lo == hi else f'{lo}+' if hi is None else f'{lo}-{hi}'}'"
                     for lo, hi in BATCH_BUCKETS)
    return f"(case {whens} end)"


def _scope_label(spec: GateSpec) -> str | None:
    return ", ".join(f"{k}={v}" for k, v in spec.segment.items()) if spec.segment else None


def _size_gate(spec: GateSpec, result: dict[str, Any] | None, con: duckdb.DuckDBPyConnection,
               alpha: float, power: float) -> dict[str, Any]:
    columns = {d[0] for d in con.execute("select * from requests limit 0").description}
    where, params = _scope_where(spec, columns)
    total, in_scope = _one(con, f"""select count(*), count(*) filter (where true {where})
                                    from requests r where not r.warmup""", params)
    scope_share = in_scope / total if total else 0.0
    out: dict[str, Any] = {"gate": spec.name, "metric": spec.metric, "aggregation": spec.aggregation,
                           "segment": _scope_label(spec), "severity": spec.severity,
                           "per_segment": spec.per_segment, "manual": spec.metric == "review_score",
                           "threshold": spec.threshold,
                           "threshold_text": spec.threshold_text, "scope_share": scope_share,
                           "test": None, "n": None, "n_formula": None, "requests": None, "shadow_paired_n": None}
    where_txt = f" in {out['segment']}" if out["segment"] else ""
    if spec.metric == "latency_ms":
        _size_latency(spec, result, con, where, params, alpha, power, out, where_txt)
    elif spec.metric in ("error_rate", "timeout_rate", "schema_pass_rate"):
        _size_rate(spec, result, con, where, params, alpha, power, out, where_txt)
    elif spec.metric == "review_score":
        _size_review(spec, con, alpha, power, out)
    elif spec.metric in ("row_flip_rate", "row_agreement", "row_invalid_rate"):
        out.update(size_row_rate(spec, result, con, where, params, alpha, power))
    elif spec.metric.startswith("row_"):
        out["basis"] = (f"{spec.name}: {spec.metric} is judged by a bootstrap over requests; it has no sample-size "
                        "formula here")
    else:
        out["test"] = "event count or peak" if spec.metric in _RESOURCE_METRICS else "none"
        out["basis"] = (f"{spec.metric}: {spec.threshold_text} is checked on every measurement of every step; "
                        "a single breach rolls back, so it needs no sample size")
    if out["requests"] is None and "basis" not in out:
        out["basis"] = f"{spec.name}: cannot be sized"
    return out


def _size_latency(spec: GateSpec, result: dict[str, Any] | None, con: duckdb.DuckDBPyConnection, where: str,
                  params: list[Any], alpha: float, power: float, out: dict[str, Any], where_txt: str) -> None:
    sigma, n_legs = _one(con, f"""select stddev_samp(ln(l.latency_ms)), count(*)
                                  from legs l join requests r on r.order_idx = l.order_idx
                                  where l.version = 'baseline' and not r.warmup and l.latency_ms > 0 {where}""", params)
    out["latency_log_sd"] = sigma
    if sigma is None or not math.isfinite(sigma):
        out["basis"] = f"{spec.name}: fewer than 2 baseline latencies{where_txt}: no spread to size from"
        return
    spread = f"sigma_log = {sigma:.3f} (stddev_samp of ln(latency_ms) over {n_legs} baseline legs{where_txt})"
    q = _QUANTILES.get(spec.aggregation)
    base_q = (result or {}).get("baseline")
    if q is None:  # mean: normal approximation on the log scale, two independent arms
        if spec.comparison != "relative":
            out["basis"] = f"{spec.name}: only relative limits on mean latency are sized"
            return
        margin = math.log(1 + spec.threshold)
        n = stats.n_mean_difference(math.sqrt(2) * sigma, margin, alpha, power)
        out.update(test="mean log-latency difference, independent arms", n=n, n_formula=n, requests=n,
                   basis=f"n_mean_difference(sd_diff = sqrt(2) x {spread}, margin = ln({1 + spec.threshold:g}), "
                         f"alpha {alpha:g}, power {power:g}) = {n}")
        return
    if spec.comparison == "relative":
        ratio, what = 1 + spec.threshold, f"ratio {1 + spec.threshold:g} (maximum_regression_percent)"
    elif base_q:
        limit = spec.threshold if spec.comparison == "absolute" else base_q + spec.threshold
        ratio, what = limit / base_q, f"ratio {limit:g} ms / baseline {spec.aggregation} {base_q:.1f} ms"
    else:
        out["basis"] = f"{spec.name}: no baseline {spec.aggregation} in this run"
        return
    if ratio <= 1:
        out["basis"] = (f"{spec.name}: the baseline {spec.aggregation} already reaches the limit ({what}): no number "
                        "of requests can show the candidate within it")
        return
    # The density of ln(latency) at the quantile, from the run's own latencies (no lognormal assumed):
    # a heavy tail is sized for the power asked for, not a fraction of it.
    h = stats.hall_sheather_bandwidth(int(n_legs), q) if n_legs and n_legs >= 20 else None
    lo_hi = _one(con, f"""select quantile_cont(ln(l.latency_ms), [{q - h!r}, {q + h!r}])
                          from legs l join requests r on r.order_idx = l.order_idx
                          where l.version = 'baseline' and not r.warmup and l.latency_ms > 0 {where}""",
                 params)[0] if h else None
    density = 2 * h / (lo_hi[1] - lo_hi[0]) if h and lo_hi and lo_hi[1] > lo_hi[0] else math.nan
    n_density = stats.n_quantile_ratio_from_density(density, ratio, q, alpha, power)
    floor = math.ceil(20 / (1 - q) - 1e-9)
    if n_density is not None:
        n_formula = n_density
        out["latency_log_density"] = density
        test = "quantile ratio, density at the quantile from this run's latencies, independent arms"
        basis = (f"n_quantile_ratio_from_density(f = {density:.3f}: density of ln(latency) at the baseline "
                 f"{spec.aggregation}{where_txt}, Hall-Sheather sparsity over {n_legs} legs; {what}, q {q:g}, "
                 f"alpha {alpha:g}, power {power:g}) = {n_formula}")
    else:
        n_formula = stats.n_quantile_ratio(sigma, ratio, q, alpha, power)
        test = "quantile ratio (lognormal), independent arms"
        basis = f"n_quantile_ratio({spread}, {what}, q {q:g}, alpha {alpha:g}, power {power:g}) = {n_formula}"
    n = max(n_formula, floor)
    out.update(test=test, n=n, n_formula=n_formula, requests=n, shadow_paired_n=(result or {}).get("min_n"),
               basis=basis + f"; floor {floor} (20 requests above the {spec.aggregation})"
                     + ("" if spec.comparison == "relative" else "; one-sample use of a two-arm formula: conservative"))


def _bad_rate_sql(metric: str, v: str) -> str:
    if metric == "error_rate":
        return f"coalesce({v}_error_kind in ({_KINDS}), false)"
    if metric == "timeout_rate":
        return f"coalesce({v}_error_kind = 'timeout', false)"
    return f"not coalesce({v}_schema_valid, true)"


def _size_rate(spec: GateSpec, result: dict[str, Any] | None, con: duckdb.DuckDBPyConnection, where: str,
               params: list[Any], alpha: float, power: float, out: dict[str, Any], where_txt: str) -> None:
    """Sizes are in 'bad event' space: errors, timeouts, or schema failures (1 - pass rate)."""
    schema = spec.metric == "schema_pass_rate"
    base = (result or {}).get("baseline")
    if base is None:
        out["basis"] = f"{spec.name}: no baseline {spec.metric}{where_txt} in this run"
        return
    p0 = 1 - float(base) if schema else float(base)
    what = "schema failure rate" if schema else spec.metric.replace("_", " ")
    judged = 1.0
    if schema:
        version = "candidate" if _one(con, "select count(*) from legs where version = 'candidate'")[0] else "baseline"
        frac, = _one(con, f"""select avg((l.schema_valid is not null)::int)
                              from legs l join requests r on r.order_idx = l.order_idx
                              where l.version = '{version}' and not r.warmup {where}""", params)
        judged = float(frac or 0.0)
        out["judged_fraction"] = judged
        if judged == 0:
            out["basis"] = f"{spec.name}: no {version} answer{where_txt} was schema-checked in this run"
            return
    observed = f"baseline {what}{where_txt} {p0:.4g} (the gate's baseline in this run)"
    if spec.comparison == "absolute":
        limit = 1 - spec.threshold if schema else spec.threshold
        if (spec.direction == "min") != schema:
            out["basis"] = f"{spec.name}: a {spec.condition_key} limit on {spec.metric} is not sized"
            return
        if p0 >= limit:
            out["basis"] = (f"{spec.name}: {observed} is already at or beyond the limit {limit:g}: no number of "
                            "requests can show the candidate within it")
            return
        n = stats.n_one_proportion_bound(p0, limit, alpha, power)
        out.update(test="one-sided bound on the candidate's rate vs the absolute limit", n=n, n_formula=n,
                   shadow_paired_n=n,
                   basis=f"n_one_proportion_bound(p_true = {observed}, limit {limit:g}, alpha {alpha:g}, "
                         f"power {power:g}) = {n}")
    else:
        step = abs(spec.threshold)
        p1 = p0 * (1 + spec.threshold) if spec.comparison == "relative" else p0 + step
        if p1 <= p0 or p1 >= 1:
            out["basis"] = f"{spec.name}: {observed} leaves no room for the allowed change: not sized"
            return
        n = stats.n_two_proportions(p0, p1, alpha, power)
        bad_b, bad_c = _bad_rate_sql(spec.metric, "baseline"), _bad_rate_sql(spec.metric, "candidate")
        judged_sql = " and baseline_schema_valid is not null and candidate_schema_valid is not null" if schema else ""
        p10, = _one(con, f"""select avg(({bad_b} and not {bad_c})::int) from pairs r
                             where not r.warmup {judged_sql} {where}""", params)
        paired = None
        if p10 is not None and p10 + (p1 - p0) < 1:
            paired = stats.n_mcnemar(float(p10), float(p10) + (p1 - p0), alpha, power)
        out.update(test="two proportions, independent arms (canary vs stable)", n=n, n_formula=n,
                   shadow_paired_n=paired,
                   basis=f"n_two_proportions({observed} -> {p1:.4g}, alpha {alpha:g}, power {power:g}) = {n} per arm"
                         + (f"; paired (shadow) McNemar with baseline-only rate {p10:.4g}: {paired}" if paired else ""))
    out["requests"] = math.ceil(out["n"] / judged) if schema else out["n"]
    if schema:
        out["basis"] += f"; / {judged:.3f} of answers schema-checked = {out['requests']} requests"


def _size_review(spec: GateSpec, con: duckdb.DuckDBPyConnection, alpha: float, power: float,
                 out: dict[str, Any]) -> None:
    sd_b, sd_c, n_b, n_c = _one(con, """select stddev_samp(score) filter (where version = 'baseline'),
                                              stddev_samp(score) filter (where version = 'candidate'),
                                              count(*) filter (where version = 'baseline'),
                                              count(*) filter (where version = 'candidate') from scores""")
    out["test"] = "mean score difference, independent arms (human review of sampled canary outputs)"
    if sd_b is None or sd_c is None:
        out["basis"] = (f"{spec.name}: no review scores for both versions in this run; import them "
                        "(`harness scores import RUN_DIR FILE`) and rebuild (`harness report RUN_DIR`) to size it")
        return
    if spec.comparison != "delta" or spec.threshold >= 0:
        out["basis"] = f"{spec.name}: only negative minimum_delta limits on review scores are sized"
        return
    sd_diff = math.sqrt(float(sd_b) ** 2 + float(sd_c) ** 2)
    n = stats.n_mean_difference(sd_diff, -spec.threshold, alpha, power)
    out.update(n=n, n_formula=n, requests=n,
               basis=f"n_mean_difference(sd_diff = sqrt({sd_b:.3f}^2 + {sd_c:.3f}^2) from {n_b} + {n_c} review scores, "
                     f"margin {-spec.threshold:g}, alpha {alpha:g}, power {power:g}) = {n} reviewed requests")


def _smallest_segment(segments: list[dict[str, Any]], sizing: list[dict[str, Any]]) -> dict[str, Any] | None:
    per_segment = [s for s in sizing if s["per_segment"] and not s["manual"] and s["requests"] is not None]
    if not segments or not per_segment:
        return None
    totals: dict[str, int] = {}
    for s in segments:
        totals[s["segment_name"]] = totals.get(s["segment_name"], 0) + int(s["n"])
    seg = min((s for s in segments if s["n"]), key=lambda s: s["n"] / totals[s["segment_name"]], default=None)
    if seg is None:
        return None
    share = seg["n"] / totals[seg["segment_name"]]
    need = max(per_segment, key=lambda s: s["requests"])
    return {"segment": seg.get("segment") or f"{seg['segment_name']}={seg['segment_value']}", "share": share,
            "requests_needed": need["requests"], "driving_gate": need["gate"],
            "basis": f"smallest share in summary.segments: {seg['n']} of {totals[seg['segment_name']]} requests "
                     f"({100 * share:.2f} %); it needs the {need['requests']} requests of {need['gate']} "
                     "(the largest per-segment gate) before its segment gates can be judged live"}


# -------------------------------------------------------------------------------------------- steps

def _shadow_step(summary: dict[str, Any], sizing: list[dict[str, Any]], traffic: dict[str, Any]) -> dict[str, Any]:
    counts, replay, run = summary.get("counts") or {}, summary.get("replay") or {}, summary.get("run") or {}
    gates = summary.get("gates") or []
    tally = {k: sum(1 for g in gates if g["status"] == k) for k in ("pass", "fail", "inconclusive")}
    scope = _scope_results(gates)
    per_gate = []
    for s in sizing:
        r = scope.get(s["gate"]) or {}
        per_gate.append({"gate": s["gate"], "segment": s["segment"], "status": r.get("status"), "n": r.get("n"),
                         "paired_n_needed": s["shadow_paired_n"], "observed": r.get("observed"),
                         "ci": r.get("ci"), "reason": r.get("reason")})
    return {"name": "shadow", "traffic_percent": 0, "kind": "shadow", "status": "done",
            "evidence": {"run_id": run.get("id"), "verdict": summary.get("verdict"),
                         "requests_replayed": counts.get("replayed"), "pairs_analysed": counts.get("analysed"),
                         "captured_span_s": traffic["captured_span_s"], "replay_speed": run.get("speed"),
                         "replay_wall_s": replay.get("wall_s"), "gate_results": tally, "gates": per_gate},
            "basis": "the paired replay already done: every candidate answer was compared with the baseline's on "
                     "the same request, with no user exposed; its results are summary.json's gates"}


def _live_step(pct: float, first: bool, rate: float | None, sizing: list[dict[str, Any]],
               segment: dict[str, Any] | None, traffic: dict[str, Any], heavy: dict[str, Any],
               risk: dict[str, Any]) -> dict[str, Any]:
    w = pct / 100.0
    step: dict[str, Any] = {"name": f"canary-{pct:g}", "traffic_percent": pct, "kind": "live",
                            "candidate_rps": w * rate if rate else None}
    sized = [s for s in sizing if s["requests"] is not None]
    per_gate = []
    for s in sized:
        dur = s["requests"] / (w * rate * s["scope_share"]) if rate and s["scope_share"] > 0 else None
        per_gate.append({"gate": s["gate"], "segment": s["segment"], "requests": s["requests"],
                         "duration_s": round(dur, 1) if dur is not None else None, "manual": s["manual"]})
    step["gates"] = per_gate
    # Manual gates (human review) are judged offline on sampled canary answers: their time is listed per gate
    # but does not hold the step; the rollout tools can only wait for what they can measure.
    timed = [g for g in per_gate if g["duration_s"] is not None and not g["manual"]]
    driving = max(timed, key=lambda g: g["duration_s"], default=None)
    step["requests_needed"] = max((g["requests"] for g in per_gate if not g["manual"]), default=None)
    step["driving_gate"] = driving["gate"] if driving else None
    stat_s = driving["duration_s"] if driving else None
    step["statistical_duration_s"] = stat_s
    adjustments: list[dict[str, Any]] = []
    duration = stat_s or 0.0
    if stat_s is not None:
        burst = traffic["burstiness"]
        if burst["bursty"] and pct <= LOW_SHARE_PERCENT:
            duration = stat_s * burst["factor_at_low_shares"]
            adjustments.append({"kind": "bursty traffic", "factor": burst["factor_at_low_shares"],
                                "basis": f"low share (<= {LOW_SHARE_PERCENT:g} %) of bursty traffic: "
                                         "see traffic.burstiness"})
        floors = [("minimum step", MIN_STEP_S, f"no live step shorter than {MIN_STEP_S // 60} min (enough "
                                               "Prometheus scrapes for rate windows)")]
        if heavy["heavy"]:
            floors.append(("resource-heavy candidate", RESOURCE_SOAK_S, "soak window: see resources"))
        if first and risk["first_live_step_floor_s"]:
            floors.append(("risk", risk["first_live_step_floor_s"],
                           "full daily cycle at the first live step: see risk"))
        for kind, floor_s, basis in floors:
            if floor_s > duration:
                duration = float(floor_s)
                adjustments.append({"kind": kind, "floor_s": floor_s, "basis": basis})
    step["adjustments"] = adjustments
    if rate is None or driving is None:
        step["min_duration_s"] = None
        step["min_duration"] = None
        step["basis"] = "no duration: " + ("no production rate" if rate is None else "no gate could be sized")
    else:
        step["min_duration_s"] = int(math.ceil(duration / 60.0) * 60)
        step["min_duration"] = format_duration(step["min_duration_s"])
        step["basis"] = (f"{driving['requests']} requests for {driving['gate']} / ({pct:g} % x {rate:.4g} rps"
                         + (f" x scope share {_share_of(sized, driving['gate']):.3g}" if driving["segment"] else "")
                         + f") = {stat_s:.0f} s" + "".join(f"; {a['kind']}: " + (f"x{a['factor']:.2f}" if "factor" in a
                                                                                  else f"at least {a['floor_s']} s")
                                                             for a in adjustments)
                         + f"; rounded up to whole minutes = {step['min_duration']}"
                         + "".join(f"; manual gate {g['gate']} needs {g['requests']} reviewed answers "
                                   f"({format_duration(g['duration_s'])} of canary traffic at this share), judged "
                                   "offline: it does not hold the step" for g in per_gate
                                   if g["manual"] and g["duration_s"] is not None))
    if segment:
        seg_s = segment["requests_needed"] / (w * rate * segment["share"]) if rate else None
        step["smallest_segment"] = {"segment": segment["segment"], "share": segment["share"],
                                    "requests_needed": segment["requests_needed"],
                                    "duration_s": round(seg_s, 1) if seg_s is not None else None,
                                    "duration": format_duration(seg_s) if seg_s is not None else None,
                                    "covered_in_step": bool(seg_s is not None and step["min_duration_s"] is not None
                                                            and seg_s <= step["min_duration_s"]),
                                    "basis": f"{segment['requests_needed']} / ({pct:g} % x rate x segment share "
                                             f"{segment['share']:.4f})"}
    else:
        step["smallest_segment"] = None
    return step


def _share_of(sizing: list[dict[str, Any]], gate: str) -> float:
    return float(next(s["scope_share"] for s in sizing if s["gate"] == gate))


def format_duration(seconds: float) -> str:
    """Seconds -> a Go duration string rounded up to whole minutes ("45m", "3h47m", "24h")."""
    minutes = max(1, math.ceil(seconds / 60.0 - 1e-9))
    hours, rest = divmod(minutes, 60)
    return (f"{hours}h" if hours else "") + (f"{rest}m" if rest or not hours else "")


# -------------------------------------------------------------------------------------------- rollback

def _promql(spec: GateSpec, canary: str, stable: str, pods: str, window: str) -> str | None:
    """A PromQL template for the gate's live metric over Istio's standard metrics / kube-state-metrics.
    ``canary``/``stable`` are label matchers of each version's traffic, ``pods`` of the canary pods."""
    def latency(sel: str) -> str:
        q = _QUANTILES.get(spec.aggregation)
        if q is None:
            return (f"sum(rate(istio_request_duration_milliseconds_sum{{{sel}}}[{window}])) / "
                    f"sum(rate(istio_request_duration_milliseconds_count{{{sel}}}[{window}]))")
        buckets = f"istio_request_duration_milliseconds_bucket{{{sel}}}"
        return f"histogram_quantile({q}, sum by (le) (rate({buckets}[{window}])))"

    def bad_rate(sel: str) -> str:
        if spec.metric == "schema_pass_rate":
            return (f"(1 - sum(increase(model_output_schema_failures_total{{{sel}}}[{window}])) / "
                    f"sum(increase(model_output_schema_checked_total{{{sel}}}[{window}])))")
        match = 'response_code=~"5.*"' if spec.metric == "error_rate" else 'response_code="504"'
        return (f"(sum(rate(istio_requests_total{{{sel}, {match}}}[{window}])) / "
                f"sum(rate(istio_requests_total{{{sel}}}[{window}])))")

    m = spec.metric
    if m == "latency_ms":
        if spec.comparison == "relative":
            return f"{latency(canary)}\n/\n{latency(stable)}"
        return latency(canary) + (f"\n-\n{latency(stable)}" if spec.comparison == "delta" else "")
    if m in ("error_rate", "timeout_rate", "schema_pass_rate"):
        if spec.comparison == "absolute":
            return bad_rate(canary)
        op = "/" if spec.comparison == "relative" else "-"
        return f"{bad_rate(canary)}\n{op}\n{bad_rate(stable)}"
    series = {"restarts": "kube_pod_container_status_restarts_total", "oom_kills": "container_oom_events_total",
              "gpu_oom_events": "gpu_oom_events_total"}
    if m in series:
        return f"sum(increase({series[m]}{{{pods}}}[{window}])) or vector(0)"
    if m == "peak_rss_mb":
        return f"max(max_over_time(container_memory_working_set_bytes{{{pods}, container!=\"\"}}[{window}])) / 1e6"
    if m == "peak_gpu_memory_mb":
        return f"max(max_over_time(DCGM_FI_DEV_FB_USED{{{pods}}}[{window}]))"
    return None


def _live_threshold(spec: GateSpec) -> tuple[str, float, str]:
    """(direction 'max'|'min', number the live metric is compared with, human condition for rollback)."""
    what = f"{spec.aggregation} latency" if spec.metric == "latency_ms" else spec.metric.replace("_", " ")
    if spec.comparison == "relative":
        limit = 1 + spec.threshold
        op = ">" if spec.direction == "max" else "<"
        return spec.direction, limit, f"canary {what} / stable {what} {op} {limit:g}"
    if spec.comparison == "delta":
        return spec.direction, spec.threshold, (f"canary {what} - stable {what} "
                                                f"{'>' if spec.direction == 'max' else '<'} {spec.threshold:g}")
    return spec.direction, spec.threshold, f"canary {what} {'>' if spec.direction == 'max' else '<'} {spec.threshold:g}"


def _rollback_condition(spec: GateSpec, result: dict[str, Any] | None) -> dict[str, Any]:
    direction, limit, condition = _live_threshold(spec)
    query = _promql(spec, 'destination_workload="<canary-workload>"', 'destination_workload="<stable-workload>"',
                    'pod=~"<canary-pods>"', "<step window>")
    manual = spec.metric == "review_score"
    raw = spec.threshold * 100 if spec.condition_key == "maximum_regression_percent" else spec.threshold
    action = "manual review" if manual else ("rollback" if spec.severity == "blocking" else "alert")
    return {"gate": spec.name, "metric": spec.metric, "aggregation": spec.aggregation, "segment": _scope_label(spec),
            "severity": spec.severity, "action": action, "rollback_when": condition, "comparison": spec.comparison,
            "direction": direction, "gate_threshold": spec.threshold, "live_threshold": limit,
            "success_condition": f"result {'<=' if direction == 'max' else '>='} {limit:g}",
            "promql_template": query,
            "basis": f"gate {spec.name}: {spec.condition_key} {raw:g} ({spec.threshold_text})"
                     + (f"; shadow result: {result['status']}" if result else "")
                     + ("; a review score has no live metric: review a sample of canary answers" if manual else "")
                     + (f"; scoped to {_scope_label(spec)}: add that segment's label matcher to the query"
                        if spec.segment else "")}


# ============================================================================================ files

class _Dumper(yaml.SafeDumper):
    """Plain YAML for humans and kubectl: no anchors/aliases, multi-line strings (queries) as literal blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str_representer(dumper: yaml.SafeDumper, data: str) -> yaml.ScalarNode:
    style = "|" if "\n" in data and not any(line != line.rstrip() for line in data.splitlines()) else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _str_representer)


def _dump(docs: list[dict[str, Any]], multi: bool) -> str:
    if multi:
        return yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=4096, explicit_start=True)
    return yaml.dump(docs[0], Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)


def write_schedule(path: Path, schedule: dict[str, Any]) -> None:
    path.write_text(export_schedule(schedule, "yaml"), encoding="utf-8")


def load_schedule(run_dir: Path) -> dict[str, Any]:
    """The schedule of a run folder: canary_schedule.yaml, else the one in summary.json. A folder with
    neither is rebuilt from its results.duckdb by `harness report RUN_DIR`."""
    run_dir = Path(run_dir)
    path = run_dir / "canary_schedule.yaml"
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise StoreError(f"{path}: not valid YAML: {exc}") from None
        if isinstance(loaded, dict):
            return loaded
        raise StoreError(f"{path}: expected a mapping, got {type(loaded).__name__}")
    summary = run_dir / "summary.json"
    if summary.exists():
        sched = json.loads(summary.read_text(encoding="utf-8")).get("schedule")
        if isinstance(sched, dict):
            return sched
    if not (run_dir / "results.duckdb").exists():
        raise StoreError(f"{run_dir}: not a run folder (no canary_schedule.yaml, summary.json or results.duckdb)")
    raise StoreError(f"{run_dir}: no canary_schedule.yaml; rebuild it from results.duckdb with "
                     f"`harness report {run_dir}`")


def export_refusal(schedule: dict[str, Any], fmt: str) -> ExportRefused | None:
    """Why manifests of this schedule must not be exported without --force (None when they may): applied by
    kubectl they would start a canary of a candidate that did not PROMOTE. The yaml schedule says so itself."""
    verdict = str(schedule.get("verdict"))
    if fmt == "yaml" or verdict == "PROMOTE":
        return None
    reasons = list(schedule.get("verdict_reasons") or [])
    why = f": {_join_reasons(reasons, limit=1)}" if reasons else ""
    return ExportRefused(f"run {schedule.get('run_id')}: verdict {verdict}{why}; no {fmt} export of a candidate that "
                         "did not PROMOTE (--force exports it, marked as forced in every object)",
                         {"BLOCK": 1, "HOLD": 2}.get(verdict, 4))


def export_schedule(schedule: dict[str, Any], fmt: str, *, force: bool = False) -> str:
    """The schedule as canary_schedule.yaml text ("yaml") or as manifests for Argo Rollouts, Flagger or Istio.
    With `force`, manifests of a run that did not PROMOTE carry the annotation harness/forced-export."""
    if fmt == "yaml":
        head = f"# canary schedule for {schedule.get('scenario')} (harness); every number has a basis\n"
        head += f"# {schedule.get('banner')}\n"
        return head + _dump([schedule], multi=False)
    builders = {"argo": _argo, "flagger": _flagger, "istio": _istio}
    if fmt not in builders:
        raise UsageError(f"unknown schedule format {fmt!r} (choose from {', '.join(EXPORT_FORMATS)})")
    docs, comments = builders[fmt](schedule)
    if force and export_refusal(schedule, fmt) is not None:
        mark = f"verdict {schedule.get('verdict')}: exported with --force, not a promoted candidate"
        for doc in docs:
            doc.setdefault("metadata", {}).setdefault("annotations", {})["harness/forced-export"] = mark
        comments = [f"FORCED EXPORT: {mark}", *comments]
    head = "".join(f"# {c}\n" for c in [f"{fmt} export of the canary schedule for {schedule.get('scenario')} "
                                        f"(run {schedule.get('run_id')}) by harness", str(schedule.get("banner")),
                                        *comments])
    return head + _dump(docs, multi=True)


# ============================================================================================ exports

def _k8s_name(text: str) -> str:
    """A DNS-1123 label (lower case, digits and '-', at most 63 characters) from a scenario or gate name."""
    return (re.sub(r"[^a-z0-9-]+", "-", str(text).lower()).strip("-") or "model")[:63].rstrip("-")


def _annotations(schedule: dict[str, Any]) -> dict[str, str]:
    return {"harness/owner": str(schedule.get("owner") or "none named in the scenario"),
            "harness/verdict": str(schedule.get("verdict")), "harness/run": str(schedule.get("run_id"))}


def _live_steps(schedule: dict[str, Any], fmt: str) -> list[dict[str, Any]]:
    steps = [s for s in schedule.get("steps", [])
             if s.get("kind", "live" if s.get("traffic_percent") else "shadow") == "live"]
    for s in steps:
        if float(s["traffic_percent"]) != int(s["traffic_percent"]):
            raise UsageError(f"step {s['name']}: {fmt} weights are whole percents, the schedule has "
                             f"{s['traffic_percent']:g} %; use whole percents in canary.steps_percent")
    return steps


def _exported_conditions(schedule: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    conds = (schedule.get("rollback") or {}).get("conditions", [])
    used = [c for c in conds if c["action"] == "rollback" and c.get("promql_template")]
    left = [f"not exported ({c['action']}): {c['gate']}: {c['rollback_when']}" for c in conds if c not in used]
    return used, left


def _spec_of(cond: dict[str, Any]) -> GateSpec:
    """A GateSpec again from a stored condition (to re-render its query for another tool's variables)."""
    return GateSpec(name=cond["gate"], metric=cond["metric"], aggregation=cond["aggregation"],
                    comparison=cond["comparison"], direction=cond["direction"], threshold=cond["gate_threshold"],
                    condition_key="")


def _query(cond: dict[str, Any], canary: str, stable: str, pods: str, window: str) -> str:
    body = _promql(_spec_of(cond), canary, stable, pods, window)
    return f"{_TEMPLATE_NOTE}\n# rollback when {cond['rollback_when']}\n{body}\n"


def _argo(schedule: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    name = _k8s_name(schedule.get("scenario") or "model")
    conds, left = _exported_conditions(schedule)
    canary = 'destination_service_name="{{args.canary-service}}", destination_service_namespace="{{args.namespace}}"'
    stable = 'destination_service_name="{{args.stable-service}}", destination_service_namespace="{{args.namespace}}"'
    pods = 'namespace="{{args.namespace}}", pod=~"{{args.rollout}}-{{args.canary-hash}}-.*"'
    address = "http://prometheus.istio-system.svc:9090"  # TEMPLATE

    def template(tname: str, chosen: list[dict[str, Any]], window_arg: bool, interval: str | None) -> dict[str, Any]:
        args: list[dict[str, Any]] = [{"name": "namespace", "value": "default"},
                                      {"name": "rollout", "value": name},
                                      {"name": "canary-service", "value": f"{name}-canary"},
                                      {"name": "stable-service", "value": f"{name}-stable"},
                                      {"name": "canary-hash"}]
        if window_arg:
            args.insert(0, {"name": "window"})
        metrics = []
        for c in chosen:
            metric: dict[str, Any] = {"name": _k8s_name(c["gate"])}
            if interval:
                metric["interval"] = interval
            else:
                metric["count"] = 1
            metric.update({"failureLimit": 0, "successCondition": c["success_condition"].replace("result", "result[0]"),
                           "provider": {"prometheus": {"address": address, "query": _query(
                               c, canary, stable, pods, "{{args.window}}" if window_arg else interval or "5m")}}})
            metrics.append(metric)
        return {"apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
                "metadata": {"name": tname,
                             "annotations": {"harness/template": "adapt the Prometheus address and queries"}},
                "spec": {"args": args, "metrics": metrics}}

    hash_arg = {"name": "canary-hash", "valueFrom": {"podTemplateHashValue": "Latest"}}
    steps: list[dict[str, Any]] = []
    for s in _live_steps(schedule, "Argo Rollouts setWeight"):
        steps.append({"setWeight": int(s["traffic_percent"])})
        duration = s.get("min_duration")
        steps.append({"pause": {"duration": duration} if duration else {}})
        if conds:
            steps.append({"analysis": {"templates": [{"templateName": f"{name}-gates"}],
                                       "args": [{"name": "window", "value": duration or "1h"}, hash_arg]}})
    canary_spec: dict[str, Any] = {
        "canaryService": f"{name}-canary", "stableService": f"{name}-stable",
        "trafficRouting": {"istio": {"virtualService": {"name": name, "routes": ["primary"]}}}, "steps": steps}
    guard = [c for c in conds if c["metric"] in _EVENT_METRICS]
    if guard:
        canary_spec["analysis"] = {"templates": [{"templateName": f"{name}-guard"}], "startingStep": 1,
                                   "args": [hash_arg]}
    rollout = {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
               "metadata": {"name": name, "annotations": _annotations(schedule)},
               "spec": {"workloadRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                        "strategy": {"canary": canary_spec}}}
    docs = [rollout]
    if conds:
        docs.append(template(f"{name}-gates", conds, True, None))
    if guard:
        docs.append(template(f"{name}-guard", guard, False, GUARD_INTERVAL))
    comments = ["each step: setWeight, pause for the step's minimum duration, then one measurement of every gate "
                "over that window (AnalysisTemplate <name>-gates; failureLimit 0: one failed measurement aborts)",
                f"event counts (restarts, OOM) are also watched every {GUARD_INTERVAL} in the background "
                "(<name>-guard)" if guard else "no event-count gates: no background guard",
                "TEMPLATE parts: the Prometheus address, the queries (Istio standard metrics), service names, "
                "workloadRef and trafficRouting", *left]
    return docs, comments


def _flagger(schedule: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    name = _k8s_name(schedule.get("scenario") or "model")
    steps = _live_steps(schedule, "Flagger stepWeights")
    conds, left = _exported_conditions(schedule)
    durations = [s["min_duration_s"] for s in steps if s.get("min_duration_s")]
    interval_min = max(1, math.ceil(max(durations) / 60)) if durations else 60
    interval = f"{interval_min}m"
    canary = 'destination_workload_namespace="{{ namespace }}", destination_workload="{{ target }}"'
    stable = 'destination_workload_namespace="{{ namespace }}", destination_workload="{{ target }}-primary"'
    pods = 'namespace="{{ namespace }}", pod=~"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"'
    templates, metrics = [], []
    for c in conds:
        tname = _k8s_name(f"{name}-{c['gate']}")
        templates.append({"apiVersion": "flagger.app/v1beta1", "kind": "MetricTemplate",
                          "metadata": {"name": tname,
                                       "annotations": {"harness/template": "adapt the address and query"}},
                          "spec": {"provider": {"type": "prometheus", "address": "http://prometheus.istio-system:9090"},
                                   "query": _query(c, canary, stable, pods, "{{ interval }}")}})
        bound = "max" if c["direction"] == "max" else "min"
        metrics.append({"name": _k8s_name(c["gate"]), "templateRef": {"name": tname},
                        "thresholdRange": {bound: c["live_threshold"]}, "interval": interval})
    canary_doc = {"apiVersion": "flagger.app/v1beta1", "kind": "Canary",
                  "metadata": {"name": name, "annotations": _annotations(schedule)},
                  "spec": {"provider": "istio",
                           "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                           "service": {"port": 80},
                           "analysis": {"interval": interval, "threshold": 1,
                                        "stepWeights": [int(s["traffic_percent"]) for s in steps],
                                        "metrics": metrics}}}
    comments = [f"Flagger holds every step for one analysis interval: it is set to the longest step's minimum duration "
                f"({interval}), so no step is shorter than the schedule asks (steps: "
                + ", ".join(f"{s['name']} {s.get('min_duration')}" for s in steps) + ")",
                "threshold 1: the first failed check rolls back; the MetricTemplates' queries are TEMPLATES over "
                "Istio's standard metrics", "TEMPLATE parts: service.port, targetRef, the provider address", *left]
    return [canary_doc, *templates], comments


def _istio(schedule: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    name = _k8s_name(schedule.get("scenario") or "model")
    steps = _live_steps(schedule, "Istio route")
    docs = []
    for i, s in enumerate(steps, 1):
        w = int(s["traffic_percent"])
        docs.append({"apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
                     "metadata": {"name": name, "annotations": {
                         "harness/step": f"{i} of {len(steps)}: {s['name']}",
                         "harness/min-duration": str(s.get("min_duration") or "unknown: no production rate"),
                         **_annotations(schedule)}},
                     "spec": {"hosts": [name], "http": [{"name": "primary", "route": [
                         {"destination": {"host": name, "subset": "stable"}, "weight": 100 - w},
                         {"destination": {"host": name, "subset": "canary"}, "weight": w}]}]}})
    conds = (schedule.get("rollback") or {}).get("conditions", [])
    comments = ["one VirtualService per step, all of the same name: apply them one at a time, in order, holding each "
                "for its harness/min-duration while the rollback conditions hold",
                "needs a DestinationRule with subsets 'stable' and 'canary' for host " + name,
                *[f"{c['action']} when {c['rollback_when']}" for c in conds]]
    return docs, comments
