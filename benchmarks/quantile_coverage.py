"""Issue 17, item 4: coverage of the paired p95-ratio interval, harness against the plain order-statistic
bootstrap measured in the same run. Seeded simulation: --pairs pairs, candidate 10 % slower (every value x
1.10), log latencies correlated within a pair; designs: lognormal (log-sd 0.5, pair correlation 0.36),
heavy-tailed (t(3) noise in the log), integer (the lognormal rounded: completion_tokens-like counts of
--scale on average), and highly correlated (0.96).

Each method is judged against its own estimand, computed from 4,000,000 draws: the p95 ratio of the
distributions (for the integer design: of the counts for the plain method; of the jittered counts,
count + uniform(-1/2, 1/2), for harness, which judges integer series that way). Printed per design: the
share of runs whose one-sided 95 % upper bound is >= the truth and whose lower bound is <= it (each
nominal 95 %), and the mean width of the log interval (harness / plain: below 1 is narrower, more power).

    .venv/bin/python benchmarks/quantile_coverage.py --reps 1000
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.analysis import stats  # noqa: E402

Q, RATIO, CONFIDENCE = 0.95, 1.10, 0.95
DESIGNS = ("lognormal", "heavy", "integer", "correlated")


def draw(rng: np.random.Generator, design: str, n: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    rho = 0.96 if design == "correlated" else 0.36

    def noise(size: int) -> np.ndarray:
        return rng.standard_t(3, size) / math.sqrt(3) if design == "heavy" else rng.standard_normal(size)
    shared, own_b, own_c = noise(n), noise(n), noise(n)
    mu = math.log(scale if design == "integer" else 20.0)
    b = np.exp(mu + 0.5 * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * own_b))
    c = RATIO * np.exp(mu + 0.5 * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * own_c))
    return (np.round(b), np.round(c)) if design == "integer" else (b, c)


def truth(design: str, scale: float, jittered: bool) -> float:
    rng = np.random.default_rng(20261204)
    b, c = draw(rng, design, 4_000_000, scale)
    if jittered:
        b, c = b + rng.uniform(-0.5, 0.5, len(b)), c + rng.uniform(-0.5, 0.5, len(c))
    return float(np.quantile(c, Q) / np.quantile(b, Q))


def plain(b: np.ndarray, c: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float]:
    """The peer: paired percentile bootstrap of the log ratio of numpy's (linear) sample quantiles."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(b), size=(n_resamples, len(b)))
    lr = np.log(np.quantile(c[idx], Q, axis=1)) - np.log(np.quantile(b[idx], Q, axis=1))
    est = float(np.quantile(c, Q) / np.quantile(b, Q))
    lo, hi = np.exp(np.quantile(lr, [1 - CONFIDENCE, CONFIDENCE]))
    return min(float(lo), est), max(float(hi), est)


def run(reps: int, pairs: int, n_resamples: int, scale: float) -> dict[str, dict[str, float]]:
    table = {}
    for design in DESIGNS:
        t_plain, t_harness = truth(design, scale, False), truth(design, scale, design == "integer")
        cover = {"plain": [0, 0], "harness": [0, 0]}
        width = {"plain": 0.0, "harness": 0.0}
        for r in range(reps):
            b, c = draw(np.random.default_rng([r, 4]), design, pairs, scale)
            iv = stats.paired_quantile_ratio_ci(b, c, Q, confidence=CONFIDENCE, n_resamples=n_resamples, seed=r,
                                                jitter=design == "integer")
            for name, (lo, hi), t in (("plain", plain(b, c, n_resamples, r), t_plain),
                                      ("harness", (iv.lower, iv.upper), t_harness)):
                cover[name][0] += hi >= t
                cover[name][1] += lo <= t
                width[name] += math.log(hi / lo) / reps
        row = {f"{m}_{side}": cover[m][i] / reps for m in cover for i, side in enumerate(("upper", "lower"))}
        row["width_ratio"] = width["harness"] / width["plain"]
        table[design] = row
        print(f"{design:10s} plain: upper {100 * row['plain_upper']:5.1f} % lower {100 * row['plain_lower']:5.1f} %"
              f"   harness: upper {100 * row['harness_upper']:5.1f} % lower {100 * row['harness_lower']:5.1f} %"
              f"   width harness/plain {row['width_ratio']:.3f}", flush=True)
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=1000)
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--scale", type=float, default=5.0, help="mean size of the integer design's counts")
    a = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"commit {commit}, {a.reps} repetitions of {a.pairs} pairs, {a.resamples} resamples, integer scale {a.scale:g}")
    table = run(a.reps, a.pairs, a.resamples, a.scale)
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "quantile_coverage.json").write_text(json.dumps({"commit": commit, "args": vars(a), "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
