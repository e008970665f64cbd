"""Intervals for rows clustered in requests (harness.analysis.clustered): seeded simulations show that
treating rows of a batch as independent under-covers, and the clustered interval does not."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.analysis.clustered import ClusterIndex, cluster_bootstrap, clustered_rate, naive_rate


def _coverage(rho: float, reps: int, requests: int = 120, p: float = 0.1, seed: int = 1) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    naive = clustered = 0
    for _ in range(reps):
        n_j = rng.choice([1, 2, 4, 8, 16, 32, 64], size=requests)
        p_j = rng.beta(p * (1 / rho - 1), (1 - p) * (1 / rho - 1), size=requests) if rho else np.full(requests, p)
        k_j = rng.binomial(n_j, p_j)
        lo, hi = naive_rate(int(k_j.sum()), int(n_j.sum()), 0.95, one_sided=False)
        naive += lo <= p <= hi
        r = clustered_rate(k_j, n_j, 0.95, one_sided=False)
        clustered += r.lower <= p <= r.upper
    return naive / reps, clustered / reps


@pytest.mark.integration  # a simulation of about a second
def test_rows_as_independent_under_cover_when_rows_of_a_request_are_correlated() -> None:
    naive, clustered = _coverage(rho=0.1, reps=400)
    # 400 replications: a coverage's standard error is about 1.1 points at 95 %
    assert naive < 0.75
    assert clustered > 0.90


@pytest.mark.integration  # a simulation of about a second
def test_clustered_interval_is_the_exact_one_for_independent_rows() -> None:
    naive, clustered = _coverage(rho=0.0, reps=400, seed=2)
    assert naive > 0.92 and clustered > 0.92
    r = clustered_rate(np.array([0, 1, 0, 2]), np.array([10, 10, 10, 10]), one_sided=False)
    assert r.estimate == pytest.approx(3 / 40) and r.clusters == 4 and r.design_effect >= 1.0
    lo, hi = naive_rate(3, 40, one_sided=False)
    assert r.lower <= lo and r.upper >= hi  # never narrower than rows-as-independent


def test_zero_events_keep_an_upper_bound() -> None:
    r = clustered_rate(np.zeros(100, int), np.full(100, 10), confidence=0.95, one_sided=True)
    assert r.lower == 0.0 and r.upper == pytest.approx(1 - 0.05 ** (1 / r.n_effective))
    assert 0.002 < r.upper < 0.004  # about 3 / n for 1000 rows
    assert r.p_below(0.01) < 0.05 < r.p_below(0.002) and r.p_above(0.0001) == 1.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=40), st.integers(0, 1000))
def test_a_resample_keeps_whole_requests(cluster: list[int], seed: int) -> None:
    ids = np.array(cluster)
    index = ClusterIndex(ids)
    rows = index.resample(np.random.default_rng(seed))
    picked, counts = np.unique(ids[rows], return_counts=True)
    sizes = dict(zip(*np.unique(ids, return_counts=True)))
    assert all(c % sizes[i] == 0 for i, c in zip(picked, counts))  # a request's rows come all together
    assert sum(c // sizes[i] for i, c in zip(picked, counts)) == index.clusters  # J requests drawn
    draws = cluster_bootstrap(lambda r: float(len(r)), index, 5, seed)
    assert draws.shape == (5,)
