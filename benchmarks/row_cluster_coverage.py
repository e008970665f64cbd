"""Coverage of row flip-rate intervals when rows of a request are correlated (docs/judgement.md, "Rows of a
batch").

Each replication draws `--requests` requests with batch sizes from 1 to 64; request j flips each of its rows
with its own probability p_j ~ Beta, mean `p` and intra-request correlation `rho` (beta-binomial:
rho = 1 / (a + b + 1)); rho = 0 is independent rows. Three 95 % two-sided intervals on the row flip rate
are checked against the true rate p:
- naive: Clopper-Pearson on rows as if independent;
- clustered: harness's Korn-Graubard interval (harness.analysis.clustered.clustered_rate);
- bootstrap: percentile bootstrap over requests (ratio of resampled totals).

    .venv/bin/python benchmarks/row_cluster_coverage.py [--reps 2000] [--requests 200] [--seed 0]
"""
from __future__ import annotations

import argparse

import numpy as np

from harness.analysis.clustered import clustered_rate, naive_rate

SIZES = np.array([1, 2, 4, 8, 16, 32, 64])


def simulate(rho: float, p: float, requests: int, reps: int, seed: int, resamples: int = 1000) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    hits = {"naive": 0, "clustered": 0, "bootstrap": 0}
    widths = {k: 0.0 for k in hits}
    for _ in range(reps):
        n_j = rng.choice(SIZES, size=requests)
        if rho > 0:
            s = 1 / rho - 1
            p_j = rng.beta(p * s, (1 - p) * s, size=requests)
        else:
            p_j = np.full(requests, p)
        k_j = rng.binomial(n_j, p_j)
        k, n = int(k_j.sum()), int(n_j.sum())
        intervals = {"naive": naive_rate(k, n, 0.95, one_sided=False)}
        r = clustered_rate(k_j, n_j, 0.95, one_sided=False)
        intervals["clustered"] = (r.lower, r.upper)
        w = rng.multinomial(requests, np.full(requests, 1 / requests), size=resamples)
        boot = (w @ k_j) / (w @ n_j)
        intervals["bootstrap"] = (float(np.quantile(boot, 0.025)), float(np.quantile(boot, 0.975)))
        for name, (lo, hi) in intervals.items():
            hits[name] += lo <= p <= hi
            widths[name] += hi - lo
    return {**{f"{k}_coverage": hits[k] / reps for k in hits}, **{f"{k}_width": widths[k] / reps for k in widths}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--p", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(f"{a.reps} replications, {a.requests} requests of 1-64 rows, true flip rate {a.p}; 95 % two-sided intervals")
    print("| rho | naive coverage | clustered coverage | bootstrap coverage | naive width | clustered width | "
          "bootstrap width |")
    print("|---|---|---|---|---|---|---|")
    for rho in (0.0, 0.02, 0.05, 0.1, 0.3):
        r = simulate(rho, a.p, a.requests, a.reps, a.seed)
        print(f"| {rho:g} | {100 * r['naive_coverage']:.1f} % | {100 * r['clustered_coverage']:.1f} % | "
              f"{100 * r['bootstrap_coverage']:.1f} % | {100 * r['naive_width']:.2f} pp | "
              f"{100 * r['clustered_width']:.2f} pp | {100 * r['bootstrap_width']:.2f} pp |")


if __name__ == "__main__":
    main()
