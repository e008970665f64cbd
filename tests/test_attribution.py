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


def _gold_data(uniform: float = 1.0, quirks: tuple[tuple[str, int], ...] = (("gzip", 66), ("chunked", 52),
                                                                           ("http10", 55), ("textplain", 54)),
               errors: tuple[str, ...] = (), seed: int = 0) -> PairData:
    """The new-user try-out's shape: three tenants of 400, three regions of about 400 with a third of each gold,
    a quirk segment whose value "(none)" holds most requests. The candidate is 25 % slower for tenant=gold
    (times `uniform` everywhere); latencies a fixed 10 ms plus a little jitter, so every p95 interval is narrow.
    The candidate fails every request of the quirk values in `errors`."""
    rng = np.random.default_rng(seed)
    n = 1200
    tenant = np.array(["gold", "silver", "bronze"] * 400)
    region = rng.permutation(np.repeat(["eu", "ap", "us"], [402, 399, 399]))
    sizes = [k for _, k in quirks]
    quirk = rng.permutation(np.repeat(["(none)"] + [q for q, _ in quirks], [n - sum(sizes)] + sizes))
    no = np.zeros(n, bool)
    failed = np.isin(quirk, errors)
    return PairData(order_idx=np.arange(n), segments={"tenant": tenant, "region": region, "quirk": quirk},
                    latency={"baseline": 10.0 + rng.gamma(2.0, 0.5, n),
                             "candidate": (10.0 + rng.gamma(2.0, 0.5, n)) * np.where(tenant == "gold", 1.25, 1.0)
                             * uniform},
                    error={"baseline": no, "candidate": failed}, timeout={"baseline": no, "candidate": no},
                    schema_judged={"baseline": ~no, "candidate": ~failed},
                    schema_valid={"baseline": ~no, "candidate": ~failed}, status_4xx={"baseline": no, "candidate": no},
                    score={"baseline": np.full(n, np.nan), "candidate": np.full(n, np.nan)}, n=n)


def test_tied_p_values_examine_the_strongest_effect_first() -> None:
    """Every FAIL's bootstrap p-value is 0; region=eu and quirk=(none) are larger than tenant=gold. Examined by
    size among the tied p-values they became leaders before gold could explain them, and the console said
    "region=eu, explained by no stronger segment" although without gold's requests it is within +1 %."""
    gates = parse_gates({"latency_p95_ms": {"maximum_regression_percent": 10}}, "t")
    data = _gold_data()
    results = evaluate_gates(gates, data, RES, n_resamples=200)
    fails = {r.segment: r for r in results if r.segment and r.status == "fail"}
    assert set(fails) == {"tenant=gold", "region=ap", "region=eu", "region=us", "quirk=(none)"}
    assert all(r.p_value == 0.0 for r in fails.values())
    assert fails["region=eu"].n > fails["tenant=gold"].n and fails["quirk=(none)"].n > fails["tenant=gold"].n
    results, explanations = explain_segments(gates, results, data, RES, n_resamples=200)
    assert [e.segment for e in explanations] == ["tenant=gold"]
    assert set(explanations[0].explains) == {"region=ap", "region=eu", "region=us", "quirk=(none)"}
    by = {r.segment: r.explained_by for r in results if r.segment in fails}
    assert by == {"tenant=gold": None, "region=ap": "tenant=gold", "region=eu": "tenant=gold",
                  "region=us": "tenant=gold", "quirk=(none)": "tenant=gold"}


def test_a_segment_of_one_value_is_not_every_value() -> None:
    """The candidate 30 % slower for everyone, and quirk has the single value "(none)": region and tenant fail in
    every value, but one failing value is no evidence of a failure that several share, and quirk=(none) holds the
    requests of the overall result that the line names already."""
    gates = parse_gates({"latency_p95_ms": {"maximum_regression_percent": 10}}, "t")
    data = _gold_data(uniform=1.3, quirks=())
    results = evaluate_gates(gates, data, RES, n_resamples=200)
    assert next(r for r in results if r.segment == "quirk=(none)").status == "fail"
    _, explanations = explain_segments(gates, results, data, RES, n_resamples=200)
    assert [e.text for e in explanations] == [
        "latency_p95_ms (latency): everywhere: overall and every value of region, tenant fail; no one value "
        "explains it"]


def test_segments_that_explain_only_together_are_one_line() -> None:
    """Three quirk values fail every request; taking out any one leaves the other two's errors in each tenant and
    region. Only the three together explain those, and the line says so, as the explained segments' reason does,
    not "quirk=r429 explains the excess in ..." three times over."""
    gates = parse_gates({"error_rate": {"maximum": 0.01}}, "t")
    data = _gold_data(quirks=(("r429", 30), ("nan", 26), ("r503", 22)), errors=("r429", "nan", "r503"))
    results, explanations = explain_segments(gates, evaluate_gates(gates, data, RES, n_resamples=200), data, RES,
                                             n_resamples=200)
    together = "quirk=r429 + quirk=nan + quirk=r503"
    overlapping = {"tenant=gold", "tenant=silver", "tenant=bronze", "region=ap", "region=eu", "region=us"}
    assert [e.segment for e in explanations] == [together]
    assert set(explanations[0].explains) == overlapping and explanations[0].status == "fail"
    assert explanations[0].text == (f"error_rate (error rate): {together} together explain the excess in "
                                    f"{', '.join(explanations[0].explains)}")
    by = {r.segment: r for r in results if r.segment in overlapping}
    assert all(r.status == "fail" and r.explained_by == together and f"Explained by {together} together" in r.reason
               for r in by.values())


def test_a_leader_inside_the_others_is_left_off_a_group() -> None:
    """`code=429` holds exactly the requests of quirk=r429 (another dimension: a cross, a status bucket): taking
    it out with the three quirks takes out nothing more, so the group that explains the tenants names only those."""
    from dataclasses import replace as _replace

    gates = parse_gates({"error_rate": {"maximum": 0.01}}, "t")
    data = _gold_data(quirks=(("r429", 30), ("nan", 26), ("r503", 22)), errors=("r429", "nan", "r503"))
    coded = data.segments["quirk"]
    quirk = np.array(coded.labels)[coded.codes]
    data = _replace(data, segments={**data.segments, "code": np.where(quirk == "r429", "429", np.where(
        quirk == "(none)", "ok", "5xx"))})
    results, explanations = explain_segments(gates, evaluate_gates(gates, data, RES, n_resamples=200), data, RES,
                                             n_resamples=200)
    tenants = {r.segment: r.explained_by for r in results if r.segment and r.segment.startswith("tenant=")}
    assert tenants and all(by is not None and "code=429" not in by for by in tenants.values()), tenants
    assert all(by.count(" + ") >= 1 for by in tenants.values()), tenants
