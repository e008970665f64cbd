"""Statistics for rows clustered in requests: the rows of one batch are not independent (same caller,
same moment, often the same account), so intervals and tests resample or weigh requests, never rows.

- rates (row flips, invalid rows): Korn & Graubard's (1998) Clopper-Pearson interval with an effective
  sample size: the ratio estimator's linearised (between-request) variance gives the design effect
  deff = var_clustered / var_independent (floored at 1), n_eff = n / deff, further shrunk by
  (z / t_{J-1})^2 for J requests; exact beta bounds at (p * n_eff, n_eff). Zero events keep an upper
  bound of about 3 / n_eff.
- anything else (score change mean or p99, PSI, KS): a percentile bootstrap over requests (each
  resample draws J requests with replacement and keeps all their rows).

docs/judgement.md ("Rows of a batch") has the coverage simulation behind this choice."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import scipy.stats as sps
from numpy.typing import NDArray

__all__ = ["ClusteredRate", "clustered_rate", "naive_rate", "ClusterIndex", "cluster_bootstrap", "cluster_weights",
           "repeated_units", "copies_design_effect", "unit_rate", "unit_means"]

FloatArray = NDArray[np.float64]


@dataclass(frozen=True)
class ClusteredRate:
    estimate: float
    lower: float
    upper: float
    events: int
    n: int  # rows
    clusters: int  # requests
    design_effect: float
    n_effective: float

    def p_above(self, limit: float) -> float:
        """One-sided p-value for "the rate exceeds `limit`", dual to the lower bound."""
        k, n = self.estimate * self.n_effective, self.n_effective
        if n <= 0 or k <= 0:
            return 1.0
        return float(sps.beta.cdf(limit, k, n - k + 1))

    def p_below(self, limit: float) -> float:
        """One-sided p-value for "the rate is below `limit`", dual to the upper bound."""
        k, n = self.estimate * self.n_effective, self.n_effective
        if n <= 0 or k >= n:
            return 1.0
        return float(sps.beta.sf(limit, k + 1, n - k))


def clustered_rate(events: NDArray[np.number[Any]], rows: NDArray[np.number[Any]], confidence: float = 0.95,
                   one_sided: bool = True, copies: bool = False) -> ClusteredRate:
    """`events[j]` of `rows[j]` rows in request j (requests with no rows are ignored).

    `copies`: the rows of a cluster are replays of one captured input (repeated_units), whose answers a
    deterministic model repeats. With no event (or only events) the data cannot tell copies that would
    all fail together from independent rows, so each cluster then counts once (n_eff = J): zero schema
    failures in 200 inputs replayed 5 times is "at most about 3/200", not 3/1000."""
    k_j = np.asarray(events, dtype=np.float64)
    n_j = np.asarray(rows, dtype=np.float64)
    keep = n_j > 0
    k_j, n_j = k_j[keep], n_j[keep]
    big_j = len(n_j)
    n, k = float(n_j.sum()), float(k_j.sum())
    if n == 0:
        return ClusteredRate(math.nan, 0.0, 1.0, 0, 0, 0, 1.0, 0.0)
    p = k / n
    deff = 1.0
    if 0 < p < 1 and big_j > 1:
        v_clustered = big_j / (big_j - 1) * float(np.sum((k_j - p * n_j) ** 2)) / (n * n)
        v_independent = p * (1 - p) / n
        deff = max(1.0, v_clustered / v_independent)
    n_eff = n / deff if not (copies and p in (0.0, 1.0)) else float(big_j)
    if big_j > 1:  # few requests: the variance itself is uncertain (t with J - 1 degrees of freedom)
        tail = 1 - confidence if one_sided else (1 - confidence) / 2
        n_eff *= (sps.norm.ppf(1 - tail) / sps.t.ppf(1 - tail, big_j - 1)) ** 2
    n_eff = min(n_eff, n)
    lo, hi = _beta_bounds(p * n_eff, n_eff, confidence, one_sided)
    return ClusteredRate(p, lo, hi, int(round(k)), int(n), big_j, deff, n_eff)


def naive_rate(events: int, n: int, confidence: float = 0.95, one_sided: bool = True) -> tuple[float, float]:
    """Clopper-Pearson on rows as if independent: what the clustered interval replaces (kept for the
    coverage simulation)."""
    return _beta_bounds(float(events), float(n), confidence, one_sided)


def _beta_bounds(k: float, n: float, confidence: float, one_sided: bool) -> tuple[float, float]:
    if n <= 0:
        return 0.0, 1.0
    tail = 1 - confidence if one_sided else (1 - confidence) / 2
    lower = 0.0 if k <= 0 else float(sps.beta.ppf(tail, k, n - k + 1))
    upper = 1.0 if k >= n else float(sps.beta.ppf(1 - tail, k + 1, n - k))
    return lower, upper


class ClusterIndex:
    """Rows grouped by request, for resampling requests: `cluster` gives each row's request (any ids)."""

    def __init__(self, cluster: NDArray[np.integer]) -> None:
        cluster = np.asarray(cluster)
        self.order = np.argsort(cluster, kind="stable")
        _, self.starts, self.lengths = np.unique(cluster[self.order], return_index=True, return_counts=True)
        self.clusters = len(self.starts)

    def resample(self, rng: np.random.Generator) -> NDArray[np.intp]:
        """Row positions of one resample: J requests drawn with replacement, all rows of each."""
        picks = rng.integers(self.clusters, size=self.clusters)
        lengths = self.lengths[picks]
        total = int(lengths.sum())
        offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
        within = np.arange(total) - offsets
        return self.order[np.repeat(self.starts[picks], lengths) + within]


def cluster_bootstrap(statistic: Callable[[NDArray[np.intp]], float], index: ClusterIndex, n_resamples: int,
                      seed: int) -> FloatArray:
    """`statistic(rows)` over `n_resamples` resamples of requests (NaN where it is undefined)."""
    rng = np.random.default_rng(seed)
    return np.array([statistic(index.resample(rng)) for _ in range(n_resamples)], dtype=np.float64)


def cluster_weights(n_clusters: int, n_resamples: int, seed: int, width: int | None = None,
                    cells: int = 4_000_000) -> Iterator[FloatArray]:
    """The bootstrap over requests as weights: for each resample, how many times each of the J requests was
    drawn (multinomial, J draws), in chunks of resamples sized so that a chunk times `width` (J, or the
    number of rows when the caller spreads weights to rows) stays near `cells` numbers. A statistic that
    is a function of per-request totals (sums, bin counts) then costs a matrix product per chunk instead
    of a pass over resampled rows."""
    rng = np.random.default_rng(seed)
    chunk = max(1, cells // max(width or n_clusters, 1))
    p = np.full(n_clusters, 1.0 / n_clusters)
    done = 0
    while done < n_resamples:
        size = min(chunk, n_resamples - done)
        yield rng.multinomial(n_clusters, p, size=size).astype(np.float64)
        done += size


# ------------------------------------------------------------------ replays of one captured input

def repeated_units(unit: NDArray[np.integer] | None, selected: NDArray[np.bool_]) -> NDArray[np.int64] | None:
    """The units (captured inputs, PairData.unit) of the selected pairs, where some input occurs there more
    than once; None where each selected pair is an input of its own (then the exact per-pair methods hold)."""
    if unit is None:
        return None
    u = np.asarray(unit)[selected]
    if len(u) < 2:
        return None
    _, dense, counts = np.unique(u, return_inverse=True, return_counts=True)
    return dense.astype(np.int64) if (counts > 1).any() else None


def copies_design_effect(values: NDArray[np.number[Any]], unit: NDArray[np.int64]) -> float:
    """Design effect of the mean of `values` over pairs grouped in units (replays of one input): the ratio
    estimator's between-unit variance over the variance as if every pair were independent, floored at 1.
    Where the values do not vary, nothing tells copies from independent pairs, and each unit counts once
    (the mean unit size)."""
    x = np.asarray(values, dtype=np.float64)
    n, big_j = len(x), int(unit.max()) + 1
    if big_j < 2:
        return float(n)
    mean = float(x.mean())
    v_independent = float(np.sum((x - mean) ** 2)) / (n * n)
    if v_independent <= 0:
        return n / big_j
    totals = np.bincount(unit, weights=x, minlength=big_j)
    sizes = np.bincount(unit, minlength=big_j)
    v_clustered = big_j / (big_j - 1) * float(np.sum((totals - mean * sizes) ** 2)) / (n * n)
    return max(1.0, v_clustered / v_independent)


def unit_rate(events: NDArray[np.bool_], unit: NDArray[np.int64], confidence: float,
              one_sided: bool = True) -> ClusteredRate:
    """A rate over pairs that replay some inputs more than once (`clustered_rate` with copies)."""
    big_j = int(unit.max()) + 1
    return clustered_rate(np.bincount(unit, weights=events.astype(np.float64), minlength=big_j),
                          np.bincount(unit, minlength=big_j), confidence, one_sided, copies=True)


def unit_means(values: NDArray[np.float64], unit: NDArray[np.int64]) -> FloatArray:
    """The mean of `values` for each unit: one observation per captured input."""
    big_j = int(unit.max()) + 1
    return np.bincount(unit, weights=values, minlength=big_j) / np.bincount(unit, minlength=big_j)
