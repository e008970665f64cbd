"""Gates on paired data with planted effects of known size, and with none (A/A)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom

from harness.analysis.dataset import PairData
from harness.gate_config import parse_gates
from harness.gates import ResourceSummary, decide_verdict, evaluate_gates

SEED_GATES = parse_gates({
    "latency_p95_ms": {"maximum_regression_percent": 10},
    "error_rate": {"maximum": 0.01},
    "schema_validation_pass_rate": {"minimum": 0.995},
    "human_review_score": {"minimum_delta": -0.02},
    "gpu_oom_events": {"maximum": 0},
}, "test")


def pairs(n: int, *, slow: float = 1.0, err_b: float = 0.0, err_c: float = 0.0, schema_fail_c: float = 0.0,
          score_delta: float = 0.0, seed: int = 1, segment: np.ndarray | None = None,
          slow_mask: np.ndarray | None = None) -> PairData:
    """Lognormal latencies with a per-request effect shared by both legs (as in a real paired replay)."""
    rng = np.random.default_rng(seed)
    request = rng.lognormal(np.log(10), 0.5, n)
    b = request * rng.lognormal(0, 0.1, n)
    c = request * rng.lognormal(0, 0.1, n)
    factor = np.where(slow_mask if slow_mask is not None else np.ones(n, bool), slow, 1.0)
    c = c * factor
    eb = rng.random(n) < err_b
    ec = rng.random(n) < err_c
    sb = ~eb
    sc = ~ec & (rng.random(n) >= schema_fail_c)
    qb = (rng.random(n) < 0.85).astype(float)
    qc = np.where(rng.random(n) < abs(score_delta) * 3, qb + np.sign(score_delta) * 0.34, qb)
    seg = {"tenant": segment if segment is not None else np.array(["a", "b"] * (n // 2) + ["a"] * (n % 2))}
    return PairData(order_idx=np.arange(n), segments=seg,
                    latency={"baseline": b, "candidate": c}, error={"baseline": eb, "candidate": ec},
                    timeout={"baseline": np.zeros(n, bool), "candidate": np.zeros(n, bool)},
                    schema_judged={"baseline": ~eb, "candidate": ~ec}, schema_valid={"baseline": sb, "candidate": sc},
                    status_4xx={"baseline": np.zeros(n, bool), "candidate": np.zeros(n, bool)},
                    score={"baseline": qb, "candidate": qc}, n=n)


RES = ResourceSummary(peak_rss_mb={"baseline": 40.0, "candidate": 42.0}, restarts={"baseline": 0, "candidate": 0},
                      oom_events={"baseline": 0, "candidate": 0}, peak_gpu_memory_mb={"baseline": None, "candidate": None},
                      gpu_sampled=False, samples={"baseline": 10, "candidate": 10})


def overall(results, name):
    return next(r for r in results if r.name == name and r.segment is None)


def test_no_effect_promotes() -> None:
    results = evaluate_gates(SEED_GATES, pairs(4000), RES, n_resamples=1000)
    assert {r.name: r.status for r in results if r.segment is None} == {
        "latency_p95_ms": "pass", "error_rate": "pass", "schema_validation_pass_rate": "pass",
        "human_review_score": "pass", "gpu_oom_events": "pass"}
    assert decide_verdict(results).verdict == "PROMOTE"


def test_planted_latency_regression_fails_with_its_numbers() -> None:
    r = overall(evaluate_gates(SEED_GATES[:1], pairs(2000, slow=1.4), RES, n_resamples=1000), "latency_p95_ms")
    assert r.status == "fail"
    assert 1.3 < r.observed < 1.5 and r.ci[0] > 1.10
    assert "+10 %" in r.reason and "p95" in r.reason


def test_regression_confined_to_a_segment_is_found_there() -> None:
    n = 4000
    seg = np.array(["big"] * 600 + ["small"] * (n - 600))
    results = evaluate_gates(SEED_GATES[:1], pairs(n, slow=1.5, segment=seg, slow_mask=seg == "big"), RES,
                             n_resamples=1000)
    by = {r.segment: r.status for r in results}
    assert by["tenant=big"] == "fail"
    assert by["tenant=small"] == "pass"


def test_too_few_pairs_is_never_pass() -> None:
    r = overall(evaluate_gates(SEED_GATES[:1], pairs(150), RES, n_resamples=500), "latency_p95_ms")
    assert r.status == "inconclusive" and "needed" in r.reason


def test_rates_against_absolute_limits() -> None:
    gates = SEED_GATES[1:3]
    assert overall(evaluate_gates(gates, pairs(3000, err_c=0.03), RES), "error_rate").status == "fail"
    assert overall(evaluate_gates(gates, pairs(3000, err_c=0.001, seed=3), RES), "error_rate").status == "pass"
    assert overall(evaluate_gates(gates, pairs(3000, schema_fail_c=0.03), RES),
                   "schema_validation_pass_rate").status == "fail"


def test_zero_events_bound_is_about_three_over_n() -> None:
    small = overall(evaluate_gates(SEED_GATES[1:2], pairs(100), RES), "error_rate")
    assert small.status == "inconclusive"  # 0/100: the upper bound ~3 % is above 1 %
    assert small.ci[1] == pytest.approx(1 - 0.05 ** (1 / 100), rel=1e-6)
    big = overall(evaluate_gates(SEED_GATES[1:2], pairs(1000), RES), "error_rate")
    assert big.status == "pass" and big.ci[1] < 0.0031


def test_review_score_delta() -> None:
    fail = overall(evaluate_gates(SEED_GATES[3:4], pairs(3000, score_delta=-0.08), RES), "human_review_score")
    assert fail.status == "fail" and fail.observed < -0.02
    ok = overall(evaluate_gates(SEED_GATES[3:4], pairs(3000), RES), "human_review_score")
    assert ok.status == "pass"


def test_resource_gates() -> None:
    gates = parse_gates({"peak_rss_mb": {"maximum_regression_percent": 20}, "restarts": {"maximum": 0},
                         "gpu_oom_events": {"maximum": 0}}, "t")
    heavy = ResourceSummary(peak_rss_mb={"baseline": 40.0, "candidate": 200.0}, restarts={"baseline": 0, "candidate": 1},
                            oom_events={"baseline": 0, "candidate": 0}, peak_gpu_memory_mb={}, gpu_sampled=False,
                            samples={"baseline": 5, "candidate": 5})
    res = {r.name: r for r in evaluate_gates(gates, pairs(500), heavy)}
    assert res["peak_rss_mb"].status == "fail" and res["peak_rss_mb"].observed == pytest.approx(4.0)
    assert res["restarts"].status == "fail"
    assert res["gpu_oom_events"].status == "pass" and "No GPU was sampled" in res["gpu_oom_events"].reason


def test_segment_fail_must_survive_benjamini_hochberg() -> None:
    """With many small segments, a marginal failure in one of them is not enough; the same failure in
    one of two segments is."""
    n = 4000

    def judged(segment: np.ndarray) -> object:
        data = pairs(n, seed=5, segment=segment)
        planted = np.flatnonzero(segment == "s0")[:5]  # 5 errors in 100 requests against a 1 % limit
        data.error["candidate"][planted] = True
        data.schema_judged["candidate"][planted] = False
        return next(r for r in evaluate_gates(SEED_GATES[1:2], data, RES) if r.segment == "tenant=s0")

    forty = judged(np.array([f"s{i % 40}" for i in range(n)]))
    assert forty.p_value < 0.01 and forty.status == "inconclusive", forty.reason
    assert "Benjamini-Hochberg" in forty.reason
    two = judged(np.array([f"s{i % 40}" if i % 40 == 0 else "rest" for i in range(n)]))
    assert two.p_value < 0.01 and two.status == "fail", two.reason


def test_warning_gates_do_not_block_and_hold_comes_from_blocking_overall() -> None:
    gates = parse_gates({"p99": {"metric": "latency_ms", "aggregation": "p99", "maximum_regression_percent": 5,
                                 "severity": "warning"}}, "t")
    results = evaluate_gates(gates, pairs(3000, slow=1.5), RES, n_resamples=500)
    assert overall(results, "p99").status == "fail"
    # a warning alone decides nothing: no blocking gate, no PROMOTE
    alone = decide_verdict(results)
    assert alone.verdict == "HOLD" and alone.reasons == [
        "No blocking gate: warnings inform, they decide no promotion; give the scenario at least one gate with "
        "severity blocking. 1 warning gate(s) fail: p99."]
    errors = parse_gates({"error_rate": {"maximum": 0.05}}, "t")
    with_blocking = decide_verdict(evaluate_gates(gates + errors, pairs(3000, slow=1.5), RES, n_resamples=500))
    assert with_blocking.verdict == "PROMOTE" and with_blocking.reasons == [
        "All 1 blocking gates pass in their scope; no segment fails. Warning gates that fail (they do not block): p99."]
    held = evaluate_gates(SEED_GATES[:1], pairs(150), RES, n_resamples=500)
    assert decide_verdict(held).verdict == "HOLD"


@pytest.mark.parametrize("mode", ["aa", "baseline-only"])
def test_a_run_that_sent_the_candidate_nothing_of_its_own_never_promotes(mode: str) -> None:
    """replay.mode aa or baseline-only: gates that all pass are no evidence about the candidate; exit 0 would
    release it. A FAIL still blocks."""
    passing = evaluate_gates(SEED_GATES[:1], pairs(3000), RES, n_resamples=300)
    assert decide_verdict(passing).verdict == "PROMOTE"
    v = decide_verdict(passing, mode=mode)
    assert v.verdict == "HOLD" and v.reasons[0].startswith(f"No candidate judged: replay.mode is {mode}, "), v.reasons
    failing = evaluate_gates(SEED_GATES[:1], pairs(3000, slow=1.5), RES, n_resamples=300)
    assert decide_verdict(failing, mode=mode).verdict == "BLOCK"


def test_a_paired_run_against_one_server_twice_never_promotes() -> None:
    """targets.baseline and targets.candidate naming one server (Scenario.self_comparison): the run compared
    the baseline with itself, as an A/A run does."""
    same = "targets.baseline and targets.candidate are the same target (http://127.0.0.1:8001): ..."
    passing = evaluate_gates(SEED_GATES[:1], pairs(3000), RES, n_resamples=300)
    v = decide_verdict(passing, same_target=same)
    assert v.verdict == "HOLD" and v.reasons[0].startswith("No candidate judged: targets.baseline and "), v.reasons
    failing = evaluate_gates(SEED_GATES[:1], pairs(3000, slow=1.5), RES, n_resamples=300)
    assert decide_verdict(failing, same_target=same).verdict == "BLOCK"


def test_aa_false_fail_rate_stays_at_or_below_alpha() -> None:
    """Repeated A/A comparisons with each threshold at the A/A truth (no regression allowed, the
    hardest case): no gate fails significantly more often than alpha, overall or per segment (exact
    binomial test at 1 %). Review scores are left out: pairs() gives both legs the same score."""
    gates = parse_gates({"latency_p95_ms": {"maximum_regression_percent": 0},
                         "error_rate": {"maximum_increase": 0}}, "test")
    reps, alpha = 100, 0.05
    fails = {(g.name, scope): 0 for g in gates for scope in ("overall", "segment")}
    for seed in range(reps):
        data = pairs(600, err_b=0.02, err_c=0.02, seed=100 + seed)
        for r in evaluate_gates(gates, data, RES, n_resamples=300, seed=seed):
            fails[(r.name, "overall" if r.segment is None else "segment")] += r.status == "fail"
    # a true false-FAIL rate of alpha exceeds this count with probability below 1 %
    most = int(binom.isf(0.01, reps, alpha))
    assert most == 11
    assert all(k <= most for k in fails.values()), fails


def test_aa_noise_floor_downgrades_failures_within_it() -> None:
    data = pairs(3000, err_c=0.03)
    gate = parse_gates({"error_rate": {"maximum_increase": 0.005}}, "t")
    r = overall(evaluate_gates(gate, data, RES), "error_rate")
    noisy = overall(evaluate_gates(gate, data, RES, aa_noise={("error_rate", None): (0.029, None)}), "error_rate")
    quiet = overall(evaluate_gates(gate, data, RES, aa_noise={("error_rate", None): (0.001, None)}), "error_rate")
    assert r.status == "fail" and noisy.status == "inconclusive" and quiet.status == "fail"
    assert "A/A noise" in noisy.reason


def test_aa_noise_of_a_gate_that_measured_something_else_excuses_nothing() -> None:
    """An A/A run whose latency_p95_ms gate was `maximum_increase: 5` (a difference in ms, noise +3.8) and a
    paired run whose latency_p95_ms is `maximum_regression_percent: 10` (ratio - 1): matched by name alone,
    3.8 ms of noise excused a candidate 48 % slower."""
    gate = parse_gates({"latency_p95_ms": {"maximum_regression_percent": 10}}, "t")
    data = pairs(3000, slow=1.48)
    r = overall(evaluate_gates(gate, data, RES, n_resamples=300), "latency_p95_ms")
    assert r.status == "fail"
    other = overall(evaluate_gates(gate, data, RES, n_resamples=300,
                                   aa_noise={("latency_p95_ms", None): (3.8, "latency_ms p95 difference")}),
                    "latency_p95_ms")
    assert other.status == "fail" and "measured latency_ms p95 difference, not latency_ms p95 ratio" in other.reason
    same = overall(evaluate_gates(gate, data, RES, n_resamples=300,
                                  aa_noise={("latency_p95_ms", None): (0.6, "latency_ms p95 ratio")}),
                   "latency_p95_ms")
    assert same.status == "inconclusive" and "within it" in same.reason


def test_aa_noise_floor_never_excuses_an_absolute_limit() -> None:
    """Both versions at about 3 % errors against a 1 % limit: the candidate is beyond the limit whatever
    the noise between the versions, so the FAIL stands."""
    data = pairs(3000, err_b=0.03, err_c=0.03)
    r = overall(evaluate_gates(SEED_GATES[1:2], data, RES, aa_noise={("error_rate", None): (0.029, None)}),
                         "error_rate")
    assert r.status == "fail" and "A/A noise" not in r.reason


def test_paired_increase_gates_use_discordant_pairs() -> None:
    gates = parse_gates({"error_rate": {"maximum_increase": 0.005},
                         "schema_validation_pass_rate": {"minimum_delta": -0.005}}, "t")
    worse = {r.name: r for r in evaluate_gates(gates, pairs(4000, err_c=0.03, schema_fail_c=0.03), RES)
             if r.segment is None}
    assert worse["error_rate"].status == "fail" and worse["error_rate"].p_value < 0.001
    assert worse["schema_validation_pass_rate"].status == "fail" and worse["schema_validation_pass_rate"].p_value < 0.001
    same = {r.name: r for r in evaluate_gates(gates, pairs(4000, err_b=0.01, err_c=0.01, seed=9), RES)
            if r.segment is None}
    assert same["error_rate"].status != "fail" and same["schema_validation_pass_rate"].status != "fail"


def test_a_candidate_that_drops_the_label_disagrees_and_its_errors_are_left_to_the_error_gates() -> None:
    """The candidate answers without a label on 30 % of the pairs and agrees on the rest: agreement is 70 %,
    not 100 % of the labelled pairs. Its errors (5 %) are not counted as disagreements (the error gates judge
    them); pairs the baseline gave no label are not judged."""
    from harness.analysis.dataset import Coded

    n = 2000
    data = pairs(n, err_c=0.05, seed=3)
    rng = np.random.default_rng(4)
    base = np.where(rng.random(n) < 0.5, "fraud", "ok").astype(object)
    base[:100] = None
    cand = base.copy()
    dropped = rng.random(n) < 0.30
    cand[dropped | data.error["candidate"]] = None
    data.prediction = Coded.joint({"baseline": base, "candidate": cand})
    gates = parse_gates({"label_agreement": {"minimum": 0.95}, "label_flip_rate": {"maximum": 0.05}}, "t")
    results = evaluate_gates(gates, data, RES, n_resamples=200)
    agree, flips = overall(results, "label_agreement"), overall(results, "label_flip_rate")
    judged = (np.arange(n) >= 100) & ~data.error["candidate"]
    assert agree.n == flips.n == int(judged.sum())
    assert agree.candidate == pytest.approx(1 - (dropped & judged).sum() / judged.sum())
    assert agree.status == "fail" and flips.status == "fail"
    data.prediction = Coded.joint({"baseline": base, "candidate": np.where(data.error["candidate"], None, base)})
    assert overall(evaluate_gates(gates, data, RES, n_resamples=200), "label_agreement").status == "pass"
