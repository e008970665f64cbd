"""What one seal step costs the send loop: leg tuples into an Arrow record batch, as the recorder builds them.

The legs are shaped like a plain JSON model's (identifiers, times, status, prediction, output JSON; the
LLM, row and detector columns null). Compared in the same process, interleaved: harness's seal
(harness.replay.recorder.seal: one struct array from the tuples) against one array per column (pyarrow's
usual way to build a batch from columns). Printed per step size: the best of --repeats timings of each
(microseconds per step and per leg) and their ratio; the loop holds the GIL for the whole step.

    .venv/bin/python benchmarks/seal_cost.py
"""
from __future__ import annotations

import argparse
import time
from typing import Any, Callable, Sequence

import pyarrow as pa

from harness.replay.leg import LEG_SCHEMA
from harness.replay.recorder import seal


def per_column(legs: Sequence[Sequence[Any]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_arrays([pa.array(col, type=f.type) for col, f in zip(zip(*legs), LEG_SCHEMA)],
                                      schema=LEG_SCHEMA)


def leg(i: int) -> tuple[Any, ...]:
    row: dict[str, Any] = dict.fromkeys(LEG_SCHEMA.names)
    t = 1.7e9 + i * 5e-4
    row.update(request_id=f"r{i // 2:08d}", version=("baseline", "candidate")[i % 2], order_idx=i // 2,
               intended_at=t, sent_at=t + 5e-5, done_at=t + 2.1e-3, send_lag_ms=0.05, latency_ms=2.05,
               service_ms=1.9, status_code=200, response_bytes=96, schema_valid=True, prediction="approve",
               confidence=0.93, model_version="v2",
               output_json='{"prediction":"approve","confidence":0.93,"model_version":"v2"}')
    return tuple(row[n] for n in LEG_SCHEMA.names)


def best_us(f: Callable[[], object], n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(n):
            f()
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 256, 1024])
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    print(f"pyarrow {pa.__version__}; best of {args.repeats}, interleaved")
    print(f"{'legs/step':>9} {'harness us':>11} {'per-column us':>14} {'us/leg':>7} {'ratio':>6}")
    for size in args.sizes:
        legs = [leg(i) for i in range(size)]
        assert seal(legs).equals(per_column(legs))
        n = max(20, 20_000 // size)
        ours, theirs = float("inf"), float("inf")
        for _ in range(args.repeats):  # interleaved, so a noisy second hits both
            ours = min(ours, best_us(lambda legs=legs: seal(legs), n, 1))
            theirs = min(theirs, best_us(lambda legs=legs: per_column(legs), n, 1))
        print(f"{size:>9} {ours:>11.0f} {theirs:>14.0f} {ours / size:>7.2f} {ours / theirs:>5.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
