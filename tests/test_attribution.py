"""Which segment explains a regression that shows up in overlapping segments (issue 17, item 8)."""
from __future__ import annotations

import numpy as np

from harness.analysis.dataset import PairData
from harness.attribution import explain_segments
from harness.gate_config import parse_gates
from harness.gates import ResourceSummary, evaluate_gates
from harness.outputs import worst_segments

RES = ResourceSummary(peak_rss_mb={}, restarts={}, oom_events={}, peak_gpu_memory_mb={}, gpu_sampled=False, samples={})


def _data(n: int = 6000, seed: int = 4) -> PairData:
    """Errors planted on one route only; tenants are spread over the routes unevenly, so two tenants
    fail too, through that route alone."""
    rng = np.random.default_rng(seed)
    route = rng.choice(["/bad", "/a", "/b"], n, p=[0.3, 0.35, 0.35])
    tenant = np.where(route == "/bad", rng.choice(["pro", "free"], n, p=[0.7, 0.3]),
                      rng.choice(["pro", "free", "ent"], n))
    lat = rng.lognormal(3, 0.4, n)
    no = np.zeros(n, bool)
    ec = (route == "/bad") & (rng.random(n) < 0.06)
    return PairData(order_idx=np.arange(n), segments={"route": route, "tenant": tenant},
                    latency={"baseline": lat, "candidate": lat * rng.lognormal(0, 0.05, n)},
                    error={"baseline": no, "candidate": ec}, timeout={"baseline": no, "candidate": no},
                    schema_judged={"baseline": ~no, "candidate": ~ec}, schema_valid={"baseline": ~no, "candidate": ~ec},
                    status_4xx={"baseline": no, "candidate": no},
                    score={"baseline": np.full(n, np.nan), "candidate": np.full(n, np.nan)}, n=n)


def test_the_route_explains_the_tenants_and_leads() -> None:
    gates = parse_gates({"error_rate": {"maximum": 0.01}}, "t")
    data = _data()
    results = evaluate_gates(gates, data, RES, n_resamples=200)
    failing = {r.segment for r in results if r.segment and r.status == "fail"}
    assert {"route=/bad", "tenant=pro", "tenant=free"} <= failing
    results, explanations = explain_segments(gates, results, data, RES, n_resamples=200)
    assert explanations[0].segment == "route=/bad"
    assert set(explanations[0].explains) == {"tenant=pro", "tenant=free"}
    assert "route=/bad explains the excess in" in explanations[0].text
    by = {r.segment: r.explained_by for r in results if r.segment}
    assert by["tenant=pro"] == by["tenant=free"] == "route=/bad" and by["route=/bad"] is None
    worst = worst_segments(results)
    assert worst[0]["segment"] == "route=/bad" and all(w["explained_by"] for w in worst[1:3])


def test_a_segment_with_its_own_flaw_is_not_explained_away() -> None:
    """A second flaw of its own in tenant=ent (outside the bad route): it stays a leader."""
    gates = parse_gates({"error_rate": {"maximum": 0.01}}, "t")
    data = _data()
    rng = np.random.default_rng(9)
    ent = data.segments["tenant"].equals("ent")
    data.error["candidate"] = data.error["candidate"] | (ent & (rng.random(data.n) < 0.05))
    results, explanations = explain_segments(gates, evaluate_gates(gates, data, RES, n_resamples=200), data, RES,
                                             n_resamples=200)
    leaders = {e.segment for e in explanations}
    assert {"route=/bad", "tenant=ent"} <= leaders


def test_too_little_left_to_judge_is_not_an_explanation() -> None:
    """tenant=ent lies almost wholly inside the slow route: without the route's requests, 5 pairs are left,
    too few to judge a p95. That is no evidence that the tenant's excess vanishes, so it is not explained."""
    rng = np.random.default_rng(5)
    n = 6000
    route = rng.choice(["/slow", "/a"], n, p=[0.3, 0.7])
    tenant = np.full(n, "free", dtype=object)
    tenant[np.flatnonzero(route == "/slow")[:400]] = "ent"
    tenant[np.flatnonzero(route == "/a")[:5]] = "ent"
    lat = rng.lognormal(3, 0.4, n)
    no = np.zeros(n, bool)
    data = PairData(order_idx=np.arange(n), segments={"route": route, "tenant": tenant.astype(str)},
                    latency={"baseline": lat, "candidate": lat * np.where(route == "/slow", 1.5, 1.0)},
                    error={"baseline": no, "candidate": no}, timeout={"baseline": no, "candidate": no},
                    schema_judged={"baseline": ~no, "candidate": ~no}, schema_valid={"baseline": ~no, "candidate": ~no},
                    status_4xx={"baseline": no, "candidate": no},
                    score={"baseline": np.full(n, np.nan), "candidate": np.full(n, np.nan)}, n=n)
    gates = parse_gates({"latency_p95_ms": {"maximum_regression_percent": 10}}, "t")
    results = evaluate_gates(gates, data, RES, n_resamples=200)
    assert {"route=/slow", "tenant=ent"} <= {r.segment for r in results if r.segment and r.status == "fail"}
    results, _ = explain_segments(gates, results, data, RES, n_resamples=200)
    ent = next(r for r in results if r.segment == "tenant=ent")
    assert ent.explained_by is None, ent.reason


def test_a_gate_without_the_latency_screen_is_not_ranked_below_screened_failures() -> None:
    """worse_here comes from the latency screen only: an error-rate FAIL (no screen, no p_worse) ranks by its
    severity among the latency FAILs the screen confirmed, never below all of them for want of a screen."""
    from dataclasses import replace

    gates = parse_gates({"error_rate": {"maximum": 0.01}, "latency_p95_ms": {"maximum_regression_percent": 10}},
                        "t")
    results = evaluate_gates(gates, _data(), RES, n_resamples=200)
    rate_fail = next(r for r in results if r.name == "error_rate" and r.segment == "route=/bad")
    assert rate_fail.status == "fail" and rate_fail.p_worse is None and not rate_fail.worse_here
    template = next(r for r in results if r.name == "latency_p95_ms" and r.segment)
    # many latency FAILs confirmed by the screen, each milder than the error-rate FAIL
    latency_fails = [replace(template, segment=f"tenant_x_geo=t{i}", status="fail", observed=1.15, threshold=0.10,
                             worse_here=True, p_worse=1e-6, explained_by=None)
                     for i in range(10)]
    worst = worst_segments(latency_fails + [rate_fail])
    assert worst[0]["gate"] == "error_rate" and worst[0]["severity"] > worst[1]["severity"]


def test_a_failure_everywhere_is_one_line_not_one_per_value() -> None:
    """Errors on 6 % of every request: overall and every tenant and route fail. That is one finding
    ("everywhere"), not "tenant=pro, explained by no stronger segment" for each value in turn."""
    gates = parse_gates({"error_rate": {"maximum": 0.01}}, "t")
    data = _data()
    data.error["candidate"] = np.random.default_rng(3).random(data.n) < 0.06
    results, explanations = explain_segments(gates, evaluate_gates(gates, data, RES, n_resamples=200), data, RES,
                                             n_resamples=200)
    assert [e.text for e in explanations] == [
        "error_rate (error rate): everywhere: overall and every value of route, tenant fail; no one value explains it"]
