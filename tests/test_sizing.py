"""Sample sizes that deliver the power they promise, beyond the textbook cases (issue 17, item 5)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from harness.analysis import stats


def test_zero_events_sizing_is_exact() -> None:
    """0 events in n shows a rate below 1 % only from n = 299 (1 - 0.05^(1/n) <= 0.01); the normal
    approximation said 268, where the bound can never clear the limit (power 0)."""
    n = stats.n_one_proportion_bound(0.0, 0.01)
    assert n == 299
    assert stats.clopper_pearson_interval(0, 298)[1] > 0.01 >= stats.clopper_pearson_interval(0, 299)[1]


@pytest.mark.parametrize(("p_true", "limit"), [(0.0, 0.01), (0.002, 0.01), (0.005, 0.01), (0.0, 0.001),
                                                (0.998, 0.995)])
def test_rate_sizing_delivers_its_power(p_true: float, limit: float) -> None:
    """Exact power of the one-sided Clopper-Pearson bound at the returned n: at least 0.8."""
    n = stats.n_one_proportion_bound(p_true, limit)
    ks = np.arange(n + 1)
    # the one-sided Clopper-Pearson bounds for every k at once (1 and 0 at the ends, as in the function)
    upper = np.where(ks < n, sps.beta.ppf(0.95, ks + 1, np.maximum(n - ks, 1)), 1.0)
    lower = np.where(ks > 0, sps.beta.ppf(0.05, np.maximum(ks, 1), n - ks + 1), 0.0)
    assert upper[0] == pytest.approx(stats.clopper_pearson_interval(0, n)[1])
    clears = upper <= limit if p_true < limit else lower >= limit
    assert float(sps.binom.pmf(ks, n, p_true)[clears].sum()) >= 0.8, n


def _power(draw, n: int, rng: np.random.Generator, reps: int = 300, ratio: float = 1.1) -> float:
    """Power of the one-sided 5 % test of p95 ratio 1 between two independent arms of n, with the critical
    value taken from the simulated null."""
    def log_p95(scale: float) -> np.ndarray:
        return np.log(np.quantile(draw(rng, (reps, n)) * scale, 0.95, axis=1))
    null = log_p95(1.0) - log_p95(1.0)
    alt = log_p95(ratio) - log_p95(1.0)
    return float(np.mean(alt > np.quantile(null, 0.95)))


def test_quantile_sizing_from_the_runs_own_latencies_holds_on_a_heavy_tail() -> None:
    """Pareto latencies (shape 1.8): the lognormal sizing (sigma = the log-sd) asks for too few requests and
    delivers well under half the power; the density measured at the quantile delivers about 0.8."""
    rng = np.random.default_rng(17)

    def pareto(r: np.random.Generator, size: object) -> np.ndarray:
        return 12.0 * r.random(size) ** (-1 / 1.8)
    logs = np.log(pareto(rng, 20_000))
    n_lognormal = stats.n_quantile_ratio(float(np.std(logs, ddof=1)), 1.1, 0.95)
    n_sample = stats.n_quantile_ratio_from_sample(logs, 1.1, 0.95)
    assert n_sample is not None and n_sample > 2 * n_lognormal
    assert _power(pareto, n_lognormal, rng) < 0.5
    assert _power(pareto, n_sample, rng) >= 0.72
