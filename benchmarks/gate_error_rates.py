"""Issue 17, items 1-4 and 6: each gate's error rates at its hardest null, with more repetitions than the
unit tests (tests/test_gate_error_rates.py, tests/test_sequential.py) that use the same designs.

    flock /tmp/heavy.lock .venv/bin/python benchmarks/gate_error_rates.py [--scale 1]

Each row prints the share of repetitions with the event named. Rows that the code under test cannot run
(an older version without a function) print the exception instead, so the script also measures "before".
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import test_gate_error_rates as t  # noqa: E402

from harness.gate_config import parse_gates  # noqa: E402
from harness.gates import decide_verdict, evaluate_gates  # noqa: E402


def mean_at_limit(reps: int) -> str:
    gate = parse_gates({"mean": {"metric": "latency_ms", "aggregation": "mean", "maximum": 1.0}}, "b")
    limit = 10 * math.exp(0.125)
    gate = (gate[0].__class__(**{**{f: getattr(gate[0], f) for f in gate[0].__slots__}, "threshold": limit}),)
    rng = np.random.default_rng(11)
    fails = passes = 0
    for _ in range(reps):
        c = rng.lognormal(math.log(10), 0.5, 1000)
        r = evaluate_gates(gate, t.make(c.copy(), c), t.RES)[0]
        fails += r.status == "fail"
        passes += r.status == "pass"
    return f"FAIL {100 * fails / reps:.1f} %, PASS {100 * passes / reps:.1f} %"


def fail_fast(reps: int) -> str:
    gate = parse_gates({"latency_p95_ms": {"maximum_regression_percent": 10}}, "b")
    promoted = 0
    for seed in range(reps):
        rng = np.random.default_rng(300 + seed)
        b, c = t.lognormal_pairs(rng, 1500, slow=1.18)
        shed = c > np.quantile(c, 0.97)
        results = evaluate_gates(gate, t.make(b, np.where(shed, 1.0, c), err_c=shed), t.RES, n_resamples=400, seed=seed)
        promoted += decide_verdict(results).verdict == "PROMOTE"
    return f"PROMOTE {100 * promoted / reps:.1f} %"


def family(which: str, reps: int) -> str:
    lim = 10 * math.exp(0.5 * 1.6448536269514722)

    def rate(rng: np.random.Generator, k: int):  # type: ignore[no-untyped-def]
        n = 2000 * k
        return t.make(*t.lognormal_pairs(rng, n), err_b=rng.random(n) < 0.02, err_c=rng.random(n) < 0.025,
                      segment=np.repeat([f"s{i}" for i in range(k)], 2000))

    def latency(rng: np.random.Generator, k: int):  # type: ignore[no-untyped-def]
        c = rng.lognormal(math.log(10), 0.5, 500 * k)
        return t.make(c.copy(), c, segment=np.repeat([f"s{i}" for i in range(k)], 500))

    def dist(rng: np.random.Generator, k: int):  # type: ignore[no-untyped-def]
        n = 300 * k
        b = rng.beta(8, 2, n)
        return t.make(*t.lognormal_pairs(rng, n), segment=np.repeat([f"s{i}" for i in range(k)], 300),
                      conf=(b, b + 0.02 + rng.normal(0, 0.05, n)))
    gate, build = {"rate": ({"error_rate": {"maximum_increase": 0.005}}, rate),
                   "latency": ({"latency_p95_ms": {"maximum": lim}}, latency),
                   "distribution": ({"confidence_mean_shift": {"maximum": 0.02}}, dist)}[which]
    return f"some segment FAILs {100 * t._family_false_fail(gate, build, reps):.1f} %"


def review(n: int, reps: int) -> str:
    from dataclasses import replace

    gate = parse_gates({"human_review_score": {"minimum_delta": -0.02}}, "b")
    rng = np.random.default_rng(n)
    passes = 0
    for _ in range(reps):
        qb = (rng.random(n) < 0.85).astype(float)
        qc = np.where(rng.random(n) < 0.1, qb - 0.34, qb)
        data = replace(t.make(*t.lognormal_pairs(rng, n)), score={"baseline": qb, "candidate": qc})
        passes += evaluate_gates(gate, data, t.RES)[0].status == "pass"
    return f"PASS {100 * passes / reps:.1f} %"


def early_stop(reps: int) -> str:
    sys.path.insert(0, str(ROOT / "tests"))
    from test_sequential import _stop_rate

    return f"stopped {100 * _stop_rate(0.01, 0.015, 0.005, reps=reps):.1f} %"


def aa(shape: str, pairs: int, reps: int) -> str:
    gates = parse_gates({"latency_p95_ms": {"maximum_regression_percent": 10},
                         "latency_p50_ms": {"maximum_regression_percent": 10}, "error_rate": {"maximum": 0.01}}, "b")
    promoted = 0
    for seed in range(reps):
        rng = np.random.default_rng([seed, 15])
        b, c = t._aa_latencies(shape, rng, pairs)
        data = t.make(b, c, segment=np.array([f"t{i % 4}" for i in range(pairs)]))
        promoted += decide_verdict(evaluate_gates(gates, data, t.RES, n_resamples=1000, seed=seed)).verdict == "PROMOTE"
    return f"PROMOTE {100 * promoted / reps:.1f} %"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiplies every repetition count")
    a = ap.parse_args()

    def r(k: int) -> int:
        return max(1, int(k * a.scale))
    rows: list[tuple[str, int, Callable[[int], str]]] = [
        ("mean latency, absolute limit, true mean at the limit (n=1000)", 400, lambda k: mean_at_limit(k)),
        ("candidate +18 % shedding its slowest 3 % as quick 503s, p95 gate only", 200, lambda k: fail_fast(k)),
        ("20 segments at the allowance, error_rate maximum_increase 0.5 pt", 400, lambda k: family("rate", k)),
        ("20 segments at the limit, absolute p95 limit", 400, lambda k: family("latency", k)),
        ("20 segments at the limit, confidence_mean_shift", 400, lambda k: family("distribution", k)),
        ("review score, rare drops, true delta -0.034 vs -0.02, n=10", 400, lambda k: review(10, k)),
        ("review score, same, n=30", 400, lambda k: review(30, k)),
        ("review score, same, n=100", 400, lambda k: review(100, k)),
        ("early stop, candidate at its 0.5 pt allowance, checked every 20 pairs", 400, lambda k: early_stop(k)),
        ("A/A unimodal, 1,000 pairs, 4 tenants", 200, lambda k: aa("unimodal", 1000, k)),
        ("A/A bimodal, 1,200 pairs", 200, lambda k: aa("bimodal", 1200, k)),
        ("A/A heavy-tailed, 2,000 pairs", 200, lambda k: aa("heavy", 2000, k)),
    ]
    for name, reps, fn in rows:
        k = r(reps)
        try:
            value = fn(k)
        except Exception as exc:  # noqa: BLE001 - an older version lacks a function: say so and go on
            value = f"{type(exc).__name__}: {exc}"[:120]
        print(f"{name} ({k} runs): {value}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
