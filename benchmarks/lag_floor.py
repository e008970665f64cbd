"""Where the send-lag floor comes from, and what a sleep-then-yield dispatcher would give (proposal B1 in
docs/benchmarks.md). An experiment: harness's files are not changed; the patched variant replaces the
`gevent` name inside harness.replay.dispatcher, in the child process only, with a shim whose sleep(s)
sleeps s - 1.5 ms and then yields (gevent.sleep(0)) until the deadline.

1. A bare gevent loop: 2,500 sleeps to absolute times 4 ms apart; lateness p50/p90/p99/max, for
   `gevent.sleep(wait)` (what the dispatcher does) and for sleep-then-yield.
2. `harness run --speed 1` against nginx at --rates pairs/s (6 s each, best of --tries by lag p99),
   as is and patched: send lag p50/p99 from results.duckdb.

    .venv/bin/python benchmarks/lag_floor.py                     # about 4 minutes
"""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

SPIN_S = 0.0015

BARE = r"""
import gevent, time, json
out = {}
for mode in ("gevent.sleep", "sleep-then-yield"):
    late = []
    t0 = time.time() + 0.1
    for i in range(2500):
        intended = t0 + i * 0.004
        w = intended - time.time()
        if mode == "gevent.sleep":
            if w > 0:
                gevent.sleep(w)
        else:
            if w > %(spin)r:
                gevent.sleep(w - %(spin)r)
            while time.time() < intended:
                gevent.sleep(0)
        late.append((time.time() - intended) * 1000)
    late.sort()
    n = len(late)
    out[mode] = {"p50": late[n // 2], "p90": late[int(n * .9)], "p99": late[int(n * .99)], "max": late[-1]}
print(json.dumps(out))
""" % {"spin": SPIN_S}

PATCHED = r"""
import sys, time, gevent
import harness.replay.dispatcher as d


class _Shim:
    def __getattr__(self, name):
        return getattr(gevent, name)

    @staticmethod
    def sleep(s=0):
        if s <= 0:
            return gevent.sleep(0)
        end = time.perf_counter() + s
        if s > %(spin)r:
            gevent.sleep(s - %(spin)r)
        while time.perf_counter() < end:
            gevent.sleep(0)


d.gevent = _Shim()
sys.argv[0] = "harness"
from harness.cli import main
sys.exit(main())
""" % {"spin": SPIN_S}


def replay(nginx: c.Nginx, work: Path, rate: int, variant: str, i: int) -> dict[str, Any]:
    d = work / f"{variant}-{rate}-{i}"
    d.mkdir()
    cap = c.write_capture(d / "capture.jsonl", rate * 6, rate)
    scenario = c.write_scenario(d / "scenario.yaml", cap, nginx.urls[0], nginx.urls[1], name="lag",
                                replay={"max_in_flight": 10000})
    saved = list(c.HARNESS)
    if variant == "patched":
        c.HARNESS[:] = [c.PY, "-c", PATCHED]
    try:
        busy = c.wait_quiet()
        run = c.run_harness(["run", str(scenario), "--speed", "1", "--progress-every", "60"], out=d / "out",
                            timeout_s=200)
    finally:
        c.HARNESS[:] = saved
    if run.run_dir is None or run.rc not in (0, 1, 2):
        raise RuntimeError(run.output[-2000:])
    (legs, p50, p99, errors), = c.query(run.run_dir, """select count(*), quantile_cont(send_lag_ms, 0.5),
        quantile_cont(send_lag_ms, 0.99), count(*) filter (where error_kind is not null) from legs""")
    return {"rate": rate, "variant": variant, "legs": legs, "expected_legs": 2 * rate * 6, "errors": errors,
            "lag_p50_ms": round(p50, 3), "lag_p99_ms": round(p99, 3), "machine_busy_before": round(busy, 2)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", type=int, nargs="+", default=[250, 500, 1000])
    ap.add_argument("--tries", type=int, default=2)
    args = ap.parse_args()
    info = c.machine_info()
    c.print_machine(info)
    result: dict[str, Any] = {"machine": info}
    import json

    c.wait_quiet()
    bare = json.loads(subprocess.run([c.PY, "-c", BARE], capture_output=True, text=True, check=True).stdout)
    result["bare_loop_lateness_ms"] = bare
    for mode, v in bare.items():
        print(f"bare gevent loop, {mode:>16}: lateness p50 {v['p50']:.3f} ms, p90 {v['p90']:.3f}, "
              f"p99 {v['p99']:.3f}, max {v['max']:.3f}", flush=True)
    rows = []
    with c.Nginx(ports=2, workers=1) as nginx, c.scratch_dir("bench-lag-") as work:
        for rate in args.rates:
            for variant in ("as-is", "patched"):
                tries = [replay(nginx, work, rate, variant, i) for i in range(args.tries)]
                best = min(tries, key=lambda r: r["lag_p99_ms"])
                rows.append(best)
                print(f"harness {variant:>7} at {rate:>5} pairs/s: lag p50 {best['lag_p50_ms']} ms, p99 "
                      f"{best['lag_p99_ms']} ms, legs {best['legs']}/{best['expected_legs']}, errors {best['errors']} "
                      f"(best of {args.tries})", flush=True)
    result["harness"] = rows
    c.save_result("lag_floor", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
