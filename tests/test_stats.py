"""harness.analysis.stats: properties (hypothesis), reference values from the published formulas
(docs/judgement.md, "Methods and sources"), and a seeded A/A error-rate check of the latency gate rule.
No wall-clock assertions."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from harness.analysis import stats as S

positive = st.floats(min_value=1e-3, max_value=1e6, allow_nan=False, allow_infinity=False, allow_subnormal=False)
quantiles = st.sampled_from([0.5, 0.9, 0.95, 0.99]) | st.floats(min_value=0.01, max_value=0.99)
fast = settings(max_examples=60, deadline=None)


def _lognormal_pairs(n: int, seed: int, *, shift: float = 0.0, sigma: float = 0.5,
                     noise: float = 0.3) -> tuple[np.ndarray, np.ndarray]:
    """Paired latencies: a per-request lognormal cost seen by both versions, times independent noise."""
    rng = np.random.default_rng(seed)
    base = rng.lognormal(3.0, sigma, n)
    return base * rng.lognormal(0.0, noise, n), base * rng.lognormal(shift, noise, n)


# ----------------------------------------------------------------------------- quantile ratio: properties

@fast
@given(st.lists(st.tuples(positive, positive), min_size=1, max_size=60), quantiles, st.booleans())
def test_ratio_interval_contains_estimate(pairs: list[tuple[float, float]], q: float, one_sided: bool) -> None:
    b, c = np.array(pairs).T
    r = S.paired_quantile_ratio_ci(b, c, q, n_resamples=200, one_sided=one_sided)
    assert r.lower <= r.estimate <= r.upper
    assert r.n == len(b)
    assert r.estimate == pytest.approx(S.harrell_davis_quantile(c, q) / S.harrell_davis_quantile(b, q))
    assert 0.0 <= r.p_above(1.1) <= 1.0


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(2000, 6000), quantiles)
def test_window_bootstrap_interval_contains_estimate(seed: int, n: int, q: float) -> None:
    b, c = _lognormal_pairs(n, seed)
    r = S.paired_quantile_ratio_ci(b, c, q, n_resamples=300, seed=seed)
    assert r.lower <= r.estimate <= r.upper


@fast
@given(st.lists(positive, min_size=1, max_size=80), quantiles)
def test_identical_arrays_give_exactly_one(x: list[float], q: float) -> None:
    b = np.array(x)
    r = S.paired_quantile_ratio_ci(b, b.copy(), q, n_resamples=200)
    assert (r.estimate, r.lower, r.upper) == (1.0, 1.0, 1.0)


@fast
@given(st.lists(positive, min_size=1, max_size=80), quantiles)
def test_scaling_candidate_scales_ratio(x: list[float], q: float) -> None:
    b = np.array(x)
    r = S.paired_quantile_ratio_ci(b, 1.5 * b, q, n_resamples=200)
    assert r.estimate == pytest.approx(1.5, rel=1e-9)
    assert r.lower == pytest.approx(1.5, rel=1e-9) and r.upper == pytest.approx(1.5, rel=1e-9)


def test_window_and_index_bootstraps_agree() -> None:
    # the two implementations draw the same bootstrap distribution; with 4000 resamples each the bounds
    # agree to well within their Monte Carlo error (~0.3 % here)
    b, c = _lognormal_pairs(5000, 7, shift=0.05)
    window = S.paired_quantile_ratio_ci(b, c, 0.95, n_resamples=4000, seed=1, method="window")
    index = S.paired_quantile_ratio_ci(b, c, 0.95, n_resamples=4000, seed=2, method="index")
    assert "window" in window.method and "index" in index.method
    assert window.estimate == index.estimate
    assert window.lower == pytest.approx(index.lower, rel=0.01)
    assert window.upper == pytest.approx(index.upper, rel=0.01)
    assert sps.ks_2samp(window.log_ratios, index.log_ratios, method="asymp").pvalue > 0.001


def test_large_n_uses_window_and_index_is_capped() -> None:
    b, c = _lognormal_pairs(300_000, 3, shift=0.1)
    r = S.paired_quantile_ratio_ci(b, c, 0.95, n_resamples=500)
    assert "window" in r.method
    assert r.lower <= math.exp(0.1) <= r.upper * 1.01
    with pytest.raises(ValueError, match="max_n"):
        S.paired_quantile_ratio_ci(b, c, 0.95, method="index")


def test_ratio_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        S.paired_quantile_ratio_ci(np.array([1.0, np.nan]), np.array([1.0, 2.0]), 0.95)
    with pytest.raises(ValueError, match="length"):
        S.paired_quantile_ratio_ci(np.ones(3), np.ones(4), 0.95)
    with pytest.raises(ValueError):
        S.paired_quantile_ratio_ci(np.ones(3), np.ones(3), 1.0)
    with pytest.raises(ValueError):
        S.paired_quantile_ratio_ci(np.array([]), np.array([]), 0.5)


def test_ratio_of_non_positive_quantile_is_undefined() -> None:
    r = S.paired_quantile_ratio_ci(np.zeros(50), np.ones(50), 0.95)
    assert math.isnan(r.estimate) and math.isnan(r.lower) and r.reason
    assert r.p_above(1.1) == 1.0


# ----------------------------------------------------------------------------- quantile ratio: values

def test_planted_40_percent_p95_regression_is_a_fail() -> None:
    b, c = _lognormal_pairs(400, 11, shift=math.log(1.4))
    r = S.paired_quantile_ratio_ci(b, c, 0.95)
    assert r.lower > 1.10
    assert r.p_above(1.10) <= 0.05


@pytest.mark.parametrize("seed", range(3))
def test_aa_on_2000_pairs_contains_one(seed: int) -> None:
    b, c = _lognormal_pairs(2000, seed)
    r = S.paired_quantile_ratio_ci(b, c, 0.95)
    assert r.lower <= 1.0 <= r.upper
    assert r.upper < 1.10  # and 2000 pairs are enough to show it is within +10 %


def test_aa_false_fail_rate_of_the_gate_rule() -> None:
    # 200 seeded A/A replays of 300 pairs, independent noise on a shared per-request cost; one-sided 95 %
    reps, n = 200, 300
    fail_10 = fail_0 = 0
    for i in range(reps):
        b, c = _lognormal_pairs(n, 1000 + i)
        r = S.paired_quantile_ratio_ci(b, c, 0.95, n_resamples=500, seed=i)
        fail_10 += r.lower > 1.10
        fail_0 += r.lower > 1.0
    # binomial sd of a 5 % rate over 200 reps is 1.5 points; allow ~2.5 sd of slack
    assert fail_10 / reps <= 0.05 + 0.02
    assert fail_0 / reps <= 0.05 + 0.04


def test_paired_mean_ratio_bootstrap_and_delta_method_agree() -> None:
    b, c = _lognormal_pairs(5000, 5, shift=0.05)
    boot = S.paired_mean_ratio_ci(b, c, n_resamples=2000)
    delta = S.paired_mean_ratio_ci(b, c, max_n=1000)
    assert boot.estimate == delta.estimate == pytest.approx(c.mean() / b.mean())
    assert boot.lower == pytest.approx(delta.lower, rel=0.005)
    assert boot.upper == pytest.approx(delta.upper, rel=0.005)
    assert delta.lower <= delta.estimate <= delta.upper
    assert boot.p_above(1.0) == pytest.approx(delta.p_above(1.0), abs=0.02)


# ----------------------------------------------------------------------------- single quantile

@fast
@given(st.lists(positive, min_size=1, max_size=300), quantiles, st.booleans())
def test_quantile_ci_contains_estimate(x: list[float], q: float, one_sided: bool) -> None:
    lo, hi = S.quantile_ci(np.array(x), q, one_sided=one_sided)
    assert lo <= float(np.quantile(x, q)) <= hi


def test_quantile_ci_order_statistics() -> None:
    x = np.arange(1.0, 1001.0)  # x_(i) = i
    lo, hi = S.quantile_ci(x, 0.95, confidence=0.95)
    assert (lo, hi) == (float(sps.binom.ppf(0.05, 1000, 0.95)), float(sps.binom.ppf(0.95, 1000, 0.95)) + 1)
    assert S.quantile_ci(np.arange(50.0), 0.99)[1] == math.inf  # 50 values cannot bound a p99 from above


# ----------------------------------------------------------------------------- rates

counts = st.integers(0, 10_000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n)))


@fast
@given(counts, st.sampled_from([0.8, 0.9, 0.95, 0.99]), st.booleans())
def test_rate_intervals_bounded_contain_estimate_and_monotone(kn: tuple[int, int], conf: float,
                                                              one_sided: bool) -> None:
    k, n = kn
    for f in (S.wilson_interval, S.clopper_pearson_interval):
        lo, hi = f(k, n, conf, one_sided)
        assert 0.0 <= lo <= hi <= 1.0
        if n:
            assert lo <= k / n <= hi
        if k < n:
            lo2, hi2 = f(k + 1, n, conf, one_sided)
            assert lo <= lo2 and hi <= hi2


def test_rate_interval_values() -> None:
    lo, hi = S.clopper_pearson_interval(0, 1000)
    assert lo == 0.0 and hi == pytest.approx(0.002991, abs=5e-7)
    assert hi == pytest.approx(1 - 0.05 ** (1 / 1000))
    assert S.wilson_interval(0, 0) == (0.0, 1.0) == S.clopper_pearson_interval(0, 0)
    assert S.wilson_interval(5, 100, one_sided=False) == pytest.approx((0.02154, 0.11175), abs=1e-4)
    with pytest.raises(ValueError):
        S.wilson_interval(5, 3)


def test_binomial_p_above_is_dual_to_clopper_pearson() -> None:
    for k, n, p0 in [(12, 1000, 0.005), (9, 1000, 0.005), (3, 50, 0.01), (0, 100, 0.01)]:
        lo, _ = S.clopper_pearson_interval(k, n, 0.95)
        assert (S.binomial_p_above(k, n, p0) < 0.05) == (lo > p0)
    assert S.binomial_p_above(0, 0, 0.1) == 1.0


def test_mcnemar_values() -> None:
    assert S.mcnemar_exact(0, 10) == pytest.approx(0.001953, abs=1e-6)
    assert S.mcnemar_one_sided(0, 10) == pytest.approx(0.5**10)
    assert S.mcnemar_one_sided(10, 0) == 1.0
    assert S.mcnemar_exact(0, 0) == S.mcnemar_one_sided(0, 0) == 1.0
    assert S.mcnemar_exact(5, 5) == 1.0


@fast
@given(st.integers(0, 200), st.integers(0, 200))
def test_mcnemar_one_sided_at_most_two_sided(b: int, c: int) -> None:
    one, two = S.mcnemar_one_sided(b, c), S.mcnemar_exact(b, c)
    assert 0.0 <= one <= 1.0 and 0.0 <= two <= 1.0
    if c > b:
        assert one <= two


@fast
@given(st.integers(0, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.integers(0, n), st.just(n)))
       .filter(lambda t: t[0] + t[1] <= t[2]), st.booleans())
def test_paired_rate_difference_contains_estimate(bcn: tuple[int, int, int], one_sided: bool) -> None:
    b, c, n = bcn
    lo, hi = S.paired_rate_difference_ci(b, c, n, one_sided=one_sided)
    assert -1.0 <= lo <= hi <= 1.0
    if n:
        assert lo <= (c - b) / n <= hi


def test_paired_rate_difference_values() -> None:
    assert S.paired_rate_difference_ci(0, 0, 0) == (-1.0, 1.0)
    lo, hi = S.paired_rate_difference_ci(0, 0, 1000)
    z2 = sps.norm.ppf(0.95) ** 2
    assert hi == pytest.approx(z2 / (1000 + z2))  # no discordant pairs: a Wilson-like bound, not zero
    lo, hi = S.paired_rate_difference_ci(5, 25, 1000)
    assert 0.0 < lo < 0.02 < hi < 0.04


# ----------------------------------------------------------------------------- means

@fast
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=100), st.booleans())
def test_paired_mean_difference_contains_estimate(pairs: list[tuple[float, float]], one_sided: bool) -> None:
    b, c = np.array(pairs).T
    iv = S.paired_mean_difference_ci(b, c, one_sided=one_sided)
    assert iv.lower <= iv.estimate <= iv.upper
    assert 0.0 <= iv.p_below(0.0) <= 1.0


def test_paired_mean_difference_matches_t_test() -> None:
    rng = np.random.default_rng(2)
    b = rng.normal(0.7, 0.1, 200)
    c = b + rng.normal(-0.01, 0.05, 200)
    iv = S.paired_mean_difference_ci(b, c, confidence=0.95, one_sided=False)
    ref = sps.ttest_rel(c, b).confidence_interval(0.95)
    assert (iv.lower, iv.upper) == pytest.approx((ref.low, ref.high))
    assert iv.p_below(0.0) == pytest.approx(sps.ttest_rel(c, b, alternative="less").pvalue)


# ----------------------------------------------------------------------------- multiplicity

pvals = st.lists(st.floats(0, 1), min_size=0, max_size=40)


@fast
@given(pvals, st.floats(0, 1), st.floats(0, 1))
def test_bh_rejections_grow_with_alpha(p: list[float], a1: float, a2: float) -> None:
    small, large = sorted((a1, a2))
    assert np.all(S.benjamini_hochberg(p, large) >= S.benjamini_hochberg(p, small))


@fast
@given(pvals)
def test_bh_adjusted_monotone_and_capped(p: list[float]) -> None:
    adj = S.bh_adjusted(p)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adj[order]) >= 0)
    assert np.all(adj <= 1.0) and np.all(adj >= np.asarray(p, dtype=float))


def test_bh_values() -> None:
    p = [0.01, 0.04, 0.03, 0.2]
    assert S.bh_adjusted(p) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.2])
    assert S.benjamini_hochberg(p, 0.05).tolist() == [True, False, False, False]
    assert S.benjamini_hochberg([0.001, 0.008, 0.039, 0.041, 0.042], 0.05).tolist() == [True] * 5
    with pytest.raises(ValueError):
        S.bh_adjusted([0.1, float("nan")])


# ----------------------------------------------------------------------------- sample sizes

@pytest.mark.parametrize(("p0", "p1", "expected"), [(0.01, 0.02, 1826), (0.01, 0.015, 6104), (0.001, 0.002, 18519)])
def test_n_two_proportions(p0: float, p1: float, expected: int) -> None:
    assert S.n_two_proportions(p0, p1) == pytest.approx(expected, rel=0.02)


def test_n_one_proportion_mcnemar_and_mean() -> None:
    assert S.n_one_proportion_bound(0.005, 0.01) == 1941  # exact; the normal approximation says 1990
    assert S.n_mcnemar(0.001, 0.011) == pytest.approx(740, rel=0.02)
    assert S.n_mean_difference(0.2, 0.02) == pytest.approx(618, rel=0.02)


@pytest.mark.parametrize(("sigma", "expected"), [(0.3, 547), (0.5, 1520), (1.0, 6078)])
def test_n_quantile_ratio(sigma: float, expected: int) -> None:
    assert S.n_quantile_ratio(sigma, 1.10, 0.95) == pytest.approx(expected, rel=0.05)


def test_n_quantile_ratio_five_percent_needs_about_3_8_times() -> None:
    assert S.n_quantile_ratio(0.5, 1.05) / S.n_quantile_ratio(0.5, 1.10) == pytest.approx(3.8, rel=0.02)


# ----------------------------------------------------------------------------- drift

def test_psi() -> None:
    rng = np.random.default_rng(1)
    a = rng.normal(0, 1, 20000)
    assert S.psi(a, rng.normal(0, 1, 20000)) < 0.01
    assert S.psi(a, rng.normal(1, 1, 20000)) > 0.25
    assert S.psi(np.ones(100), np.full(100, 2.0)) > 1.0  # a constant that moves is drift, not zero


def test_ks_statistic_matches_scipy() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5):
        a, b = rng.normal(0, 1, 300), np.round(rng.normal(0.2, 1, 200), 1)
        assert S.ks_statistic(a, b) == pytest.approx(sps.ks_2samp(a, b, method="asymp").statistic)


def test_cohen_kappa() -> None:
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert S.cohen_kappa(a, b) == pytest.approx(0.4)
    assert S.cohen_kappa([1, 2, 3], [1, 2, 3]) == 1.0
    assert math.isnan(S.cohen_kappa(["x", "x"], ["x", "x"]))
