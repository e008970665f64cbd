"""Latency accuracy. Against a target that holds every request exactly 20 ms, the harness p50
must be within 0.5 ms of 20 ms + the p50 it measures against the same target with no delay.

Target: benchmarks/_delay_server.py (asyncio, no uvloop; one process serving the baseline and candidate
ports), a fresh server process per try so its own hold-time statistics cover exactly one replay. Harness:
a 10 s capture at 200 requests/s replayed paired at --speed 1 (400 legs/s); p50 of latency_ms (from the
intended send time) and of service_ms (from the actual send) over all legs. The two delays alternate,
--tries times each (default 3), and the medians are compared.

The target is shown not to be the bottleneck: wrk -t1 -c50 against the zero-delay and the 20 ms server
(the rate it can take, against the 400 req/s used here), and the server's own hold-time p50/p99.

    .venv/bin/python benchmarks/fixed_delay.py                  # about 2 minutes
    .venv/bin/python benchmarks/fixed_delay.py --timer asyncio  # the same with plain asyncio.sleep(0.020)
"""
from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

RATE = 200
DURATION_S = 10.0
DELAY_MS = 20.0
GOAL_MS = 0.5
SERVER = Path(__file__).resolve().parent / "_delay_server.py"


@contextlib.contextmanager
def delay_server(delay_ms: float, timer: str, stats_file: Path | None = None) -> Iterator[list[str]]:
    ports = [c.free_port(), c.free_port()]
    cmd = [c.PY, str(SERVER), "--delay-ms", str(delay_ms), "--ports", *map(str, ports), "--timer", timer]
    if stats_file:
        cmd += ["--stats-file", str(stats_file)]
    proc = subprocess.Popen(cmd, start_new_session=True)
    try:
        for p in ports:
            c.wait_port(p)
        yield [f"http://127.0.0.1:{p}" for p in ports]
    finally:
        c.stop_process(proc)


def harness_once(work: Path, delay_ms: float, timer: str, i: int) -> dict[str, Any]:
    d = work / f"d{delay_ms:g}-{i}"
    d.mkdir()
    n = int(RATE * DURATION_S)
    cap = c.write_capture(d / "capture.jsonl", n, RATE)
    stats = d / "server.json"
    with delay_server(delay_ms, timer, stats) as urls:
        scenario = c.write_scenario(d / "scenario.yaml", cap, urls[0], urls[1], name="delay")
        run = c.run_harness(["run", str(scenario), "--speed", "1", "--progress-every", "60"], out=d / "out",
                            timeout_s=120)
    if run.run_dir is None or run.rc not in (0, 1, 2):
        raise RuntimeError(f"harness run failed ({run.rc}):\n{run.output[-2000:]}")
    (legs, p50, svc50, lag50, lag99, errors), = c.query(run.run_dir, """
        select count(*), quantile_cont(latency_ms, 0.5), quantile_cont(service_ms, 0.5),
               quantile_cont(send_lag_ms, 0.5), quantile_cont(send_lag_ms, 0.99),
               count(*) filter (where error_kind is not null) from legs""")
    server = json.loads(stats.read_text())
    return {"delay_ms": delay_ms, "legs": legs, "expected_legs": 2 * n, "errors": errors,
            "latency_p50_ms": round(p50, 3), "service_p50_ms": round(svc50, 3), "lag_p50_ms": round(lag50, 3),
            "lag_p99_ms": round(lag99, 3), "server_hold_p50_ms": server["hold_p50_ms"],
            "server_hold_p99_ms": server["hold_p99_ms"], "server_requests": server["requests"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--timer", choices=["precise", "asyncio"], default="precise",
                    help="how the target waits (see _delay_server.py); default precise")
    args = ap.parse_args()
    info = c.machine_info()
    c.print_machine(info)
    c.ensure_apt({"wrk": "wrk"})
    result: dict[str, Any] = {"machine": info, "timer": args.timer, "tries": []}
    capacity = {}
    for delay in (0.0, DELAY_MS):
        with delay_server(delay, args.timer) as urls:
            capacity[f"{delay:g}ms"] = round(c.wrk_rps(urls[0] + "/score", connections=50, duration_s=4))
    result["server_capacity_wrk_rps"] = capacity
    print(f"target capacity (wrk -t1 -c50): {capacity} req/s; used here: {2 * RATE} req/s", flush=True)
    with c.scratch_dir("bench-delay-") as work:
        for i in range(args.tries):
            for delay in (0.0, DELAY_MS):
                busy = c.wait_quiet()
                r = harness_once(work, delay, args.timer, i)
                r["machine_busy_before"] = round(busy, 2)
                result["tries"].append(r)
                print(f"try {i + 1} delay {delay:g} ms: {r}", flush=True)
    p0 = c.median([r["latency_p50_ms"] for r in result["tries"] if r["delay_ms"] == 0])
    p20 = c.median([r["latency_p50_ms"] for r in result["tries"] if r["delay_ms"] == DELAY_MS])
    hold20 = c.median([r["server_hold_p50_ms"] for r in result["tries"] if r["delay_ms"] == DELAY_MS])
    err = p20 - (DELAY_MS + p0)
    result["median"] = {"p50_zero_delay_ms": p0, "p50_20ms_delay_ms": p20, "error_ms": round(err, 3),
                        "server_hold_p50_20ms": hold20, "goal_met": abs(err) <= GOAL_MS}
    print(f"\nresults (median of {args.tries}, {RATE} pairs/s, target timer {args.timer}):")
    print(f"  harness p50, zero delay: {p0:.3f} ms; 20 ms delay: {p20:.3f} ms; expected 20 + {p0:.3f} = "
          f"{DELAY_MS + p0:.3f} ms; error {err:+.3f} ms (goal within +-{GOAL_MS} ms: "
          f"{'met' if abs(err) <= GOAL_MS else 'NOT met'})")
    print(f"  the target's own hold time p50 at 20 ms: {hold20:.3f} ms (error net of the target: "
          f"{p20 - (hold20 + p0):+.3f} ms)")
    c.save_result(f"fixed_delay_{args.timer}", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
