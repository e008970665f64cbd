"""How gates judge replays of one captured input (traffic.loops): the designs of
tests/test_repeated_inputs.py with more repetitions, each judged with the copies as independent pairs
(as before PairData.unit) and with the input as the unit (docs/judgement.md, "Replays of one input").

    .venv/bin/python benchmarks/repeated_inputs.py [--reps 300]

Each row prints the share of repetitions that PASS and FAIL; the last rows what the bootstrap over inputs
costs a scope, from the inputs near the quantile (window) and from every pair (the full one).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_repeated_inputs as t  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=300, help="repetitions of each hardest-null design")
    ap.add_argument("--large-only", action="store_true", help="only the 25,000-pair design and the bootstrap's cost")
    args = ap.parse_args()
    reps = args.reps
    start = time.time()
    if not args.large_only:
        small(reps)
    large(reps, start)


def small(reps: int) -> None:
    for units in (False, True):
        how = "inputs" if units else "pairs "
        print(f"schema >= 99.5 %, 300 inputs x 5, 0.5 % of inputs invalid (hardest null), by {how}: "
              f"PASS {100 * t.schema_passes(reps, 300, 5, 0.005, units, seed=2):.1f} %", flush=True)
    for spread, copies in ((0.3, 10), (0.6, 4), (0.15, 5), (0.0, 5)):
        for units in (False, True):
            how = "inputs" if units else "pairs "
            p, f = t.p95_gate(reps, units, spread, copies, seed=1)
            cp, cf = t.p95_gate(max(reps // 6, 20), units, spread, copies, seed=3, true_ratio=1.0)
            print(f"p95 +10 %, {2000 // copies} inputs x {copies}, slowdown spread {spread}, by {how}: hardest null "
                  f"PASS {100 * p:.1f} % FAIL {100 * f:.1f} %; as fast as the baseline PASS {100 * cp:.0f} %",
                  flush=True)


def large(reps: int, start: float) -> None:
    # a larger scope: the bootstrap over inputs from the inputs near the quantile (the window)
    for units in (False, True):
        how = "inputs" if units else "pairs "
        p, f = t.p95_gate(max(reps // 3, 20), units, 0.3, 5, seed=5, pairs=25_000)
        print(f"p95 +10 %, 5000 inputs x 5 (25,000 pairs), slowdown spread 0.3, by {how}: hardest null "
              f"PASS {100 * p:.1f} % FAIL {100 * f:.1f} %", flush=True)
    # what the bootstrap over inputs costs a scope (2,000 resamples, 5 copies an input, the p95)
    from harness.analysis import stats
    for pairs in (2_000, 50_000, 1_000_000):
        b, c, unit = t._input_costs(pairs // 5, 5, 0.1, seed=6)
        took = {}
        for method in ("auto", "index") if pairs <= 50_000 else ("auto",):
            t0 = time.perf_counter()
            r = stats.paired_quantile_ratio_ci(b, c, 0.95, n_resamples=2000, seed=1, units=unit, method=method)
            took[r.method.rsplit("(", 1)[-1].rstrip(")")] = time.perf_counter() - t0
        print(f"bootstrap over inputs, {pairs:,} pairs ({pairs // 5:,} inputs x 5), 2,000 resamples: "
              + ", ".join(f"{how} {sec:.2f} s" for how, sec in took.items()), flush=True)
    print(f"({time.time() - start:.0f} s)")


if __name__ == "__main__":
    main()
