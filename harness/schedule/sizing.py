"""Sizing: the candidate requests a live step needs for each gate, from this run's own data."""
from __future__ import annotations

import math
from typing import Any

import duckdb

from ..analysis import stats
from ..analysis.rows import BATCH_BUCKETS, size_row_rate
from ..error_kinds import failed_sql_of
from ..gate_config import GateSpec
from .policy import _QUANTILES, _RESOURCE_METRICS
from .profile import _one





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
    """Over the pairs view; an error as the gate counts it (error_kinds.pair_failed: a refusal or redirect of a
    request the other version answered otherwise is one)."""
    if metric == "error_rate":
        o = "candidate" if v == "baseline" else "baseline"
        return failed_sql_of(f"{v}_error_kind", f"{o}_error_kind", f"{o}_intended_at is not null")
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

