"""Issue 17, item 7: "where is it worse", with power. Seeded simulation of the gates on paired latency:
5,000 pairs, 14 segments (10 tenants of 10 % each, 4 routes), a p95 gate of +10 %; in the regressed
release one tenant's candidate is 20 % slower, in the clean one nothing changes. Designs: pair correlation
of the log latencies 0.36 and 0.96, lognormal (log-sd 0.5) and heavy-tailed (log latency with t(3) noise).

For each design and --reps repetitions: the share of regressed releases not PROMOTEd, the share where
the regressed tenant leads `worst_segments`, and the share of clean releases PROMOTEd.

    flock /tmp/heavy.lock .venv/bin/python benchmarks/segment_power.py --reps 200
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

from harness.analysis.dataset import PairData  # noqa: E402
from harness.gate_config import parse_gates  # noqa: E402
from harness.gates import ResourceSummary, decide_verdict, evaluate_gates  # noqa: E402
from harness.outputs import worst_segments  # noqa: E402

RES = ResourceSummary(peak_rss_mb={}, restarts={}, oom_events={}, peak_gpu_memory_mb={}, gpu_sampled=False,
                      samples={})
GATES = parse_gates({"latency_p95_ms": {"maximum_regression_percent": 10}}, "segment_power")
N, TENANTS, ROUTES = 5000, 10, 4


def design(rng: np.random.Generator, rho: float, tail: str, slow: float) -> PairData:
    def noise(size: int) -> np.ndarray:
        return rng.standard_normal(size) if tail == "lognormal" else rng.standard_t(3, size) / math.sqrt(3)
    shared, own_b, own_c = noise(N), noise(N), noise(N)
    sigma = 0.5
    log_b = math.log(20) + sigma * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * own_b)
    log_c = math.log(20) + sigma * (math.sqrt(rho) * shared + math.sqrt(1 - rho) * own_c)
    tenant = np.array([f"t{i % TENANTS}" for i in range(N)])
    route = np.array([f"/r{(i // TENANTS) % ROUTES}" for i in range(N)])
    c = np.exp(log_c) * np.where(tenant == "t3", slow, 1.0)
    no = np.zeros(N, bool)
    return PairData(order_idx=np.arange(N), segments={"tenant": tenant, "route": route},
                    latency={"baseline": np.exp(log_b), "candidate": c}, error={"baseline": no, "candidate": no},
                    timeout={"baseline": no, "candidate": no}, schema_judged={"baseline": ~no, "candidate": ~no},
                    schema_valid={"baseline": ~no, "candidate": ~no}, status_4xx={"baseline": no, "candidate": no},
                    score={"baseline": np.full(N, np.nan), "candidate": np.full(N, np.nan)}, n=N)


def run(reps: int, n_resamples: int) -> dict[str, dict[str, float]]:
    table = {}
    for rho in (0.36, 0.96):
        for tail in ("lognormal", "heavy"):
            caught = first = clean = 0
            for r in range(reps):
                rng = np.random.default_rng([r, int(rho * 100), tail == "heavy"])
                results = evaluate_gates(GATES, design(rng, rho, tail, 1.2), RES, n_resamples=n_resamples, seed=r)
                caught += decide_verdict(results).verdict != "PROMOTE"
                worst = worst_segments(results)
                first += bool(worst) and worst[0].get("segment") == "tenant=t3"
                results = evaluate_gates(GATES, design(rng, rho, tail, 1.0), RES, n_resamples=n_resamples, seed=r)
                clean += decide_verdict(results).verdict == "PROMOTE"
            key = f"rho {rho:.2f}, {tail}"
            table[key] = {"not_promoted": caught / reps, "attributed_first": first / reps, "clean_promoted": clean / reps}
            print(f"{key:22s} regressed not PROMOTEd {100 * caught / reps:5.1f} %  tenant first "
                  f"{100 * first / reps:5.1f} %  clean PROMOTEd {100 * clean / reps:5.1f} %", flush=True)
    return table


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--resamples", type=int, default=1000)
    a = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    print(f"commit {commit}, {a.reps} repetitions, {a.resamples} bootstrap resamples")
    table = run(a.reps, a.resamples)
    out = ROOT / "benchmarks" / "out"
    out.mkdir(parents=True, exist_ok=True)
    (out / "segment_power.json").write_text(json.dumps({"commit": commit, "reps": a.reps, "table": table}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
