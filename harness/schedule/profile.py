"""What the run says about production: its rate and burstiness, how heavy the candidate is, and the
scenario's risk flags."""
from __future__ import annotations

import json
import math
from typing import Any

import duckdb

from .policy import (BURSTY_DISPERSION, DAILY_CYCLE_S, LOW_SHARE_PERCENT, MAX_BURST_FACTOR, RESOURCE_HEAVY_RATIO,
                     RESOURCE_SOAK_S)


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
    # The requests the sample left out, counted where they were captured: a stratified sample keeps every
    # stratum's first min_per_stratum requests too, so dividing by the fraction overstated the rate (900
    # replayed of 3,000 at fraction 0.2 gave 229.5 rps for a capture of 153 rps) and shortened every step.
    not_sampled = int(_one(con, """select count(*) from skipped where reason = 'not sampled'
                                   and captured_at between ? and ?""", [first, last])[0]) if sample and n >= 2 else 0
    out["not_sampled"] = not_sampled
    captured_rps = (n + not_sampled) / span_s if n >= 2 and span_s and span_s > 0 else None
    out["captured_rps"] = captured_rps
    if scenario.canary.production_rps is not None:
        out["production_rps"] = float(scenario.canary.production_rps)
        out["basis"] = (f"canary.production_rps = {float(scenario.canary.production_rps):g} from the scenario"
                        + (f" (the capture's rate was {captured_rps:.3g} rps)" if captured_rps else ""))
    else:
        out["production_rps"] = captured_rps
        if captured_rps:
            counted = f"({n} replayed + {not_sampled} not sampled) requests" if sample else f"{n} replayed requests"
            out["basis"] = f"{counted} / {span_s:.1f} s of captured_at = {captured_rps:.4g} rps"
        else:  # no requests yet (a live shadow's first snapshot), or all at one instant
            out["basis"] = "unknown: the capture has no time span; set canary.production_rps"
    out["burstiness"] = _burstiness(con, n, span_s)
    return out


def _burstiness(con: duckdb.DuckDBPyConnection, n: int, span_s: float | None) -> dict[str, Any]:
    if not span_s or span_s < 10 or n < 20:
        return {"bursty": False, "factor_at_low_shares": 1.0,
                "basis": "capture shorter than 10 s or under 20 requests: burstiness not judged"}
    # Whole seconds from the first request, and only those the span covers fully: a capture starts and ends
    # mid-second, and a calendar second it covers a third of reads as a lull (Poisson arrivals at 100 rps
    # over 29.5 s were "bursty" in 6 of 20 seeded captures that way).
    full_s = int(math.floor(span_s))
    seconds, mean, var, peak = _one(con, f"""
        with t as (select epoch(captured_at) - min(epoch(captured_at)) over () as off
                   from requests where loop = 0),
             s as (select floor(off)::bigint as sec, count(*) as c from t where off < {full_s} group by 1),
             g as (select range as sec from range(0, {full_s}))
        select count(*), avg(coalesce(c, 0)), var_pop(coalesce(c, 0)), max(coalesce(c, 0))
        from g left join s using (sec)""")
    mean, var = float(mean), float(var)
    cv = math.sqrt(var) / mean
    dispersion = var / mean
    # the variability of the arrival rate itself: the count CV less the Poisson part (1/mean)
    rate_cv = math.sqrt(max(cv**2 - 1.0 / mean, 0.0))
    bursty = dispersion >= BURSTY_DISPERSION
    factor = min(1.0 + rate_cv, MAX_BURST_FACTOR) if bursty else 1.0
    basis = (f"per-second counts over the {seconds} whole seconds of captured_at: mean {mean:.3g}, CV {cv:.2f} "
             f"(random arrivals at this rate: {1 / math.sqrt(mean):.2f}), variance/mean {dispersion:.2f}, peak/mean {peak / mean:.2f}; ")
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

