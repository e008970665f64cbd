"""A 1 s stall of the target at 200 req/s: harness (open loop, timed from the intended send time)
against plain Locust (closed loop, constant_throughput users), which hides the stall (coordinated omission).

Target: nginx (one worker) answering POST with a small JSON body. The stall is SIGSTOP of the nginx worker,
then SIGCONT 1.0 s later, about 4 s into a 10 s run; the kernel still accepts connections meanwhile, so
requests queue rather than fail.
- harness: a 10 s capture at 200 requests/s replayed paired (both versions on the stalled nginx, so each
  version sees 200 req/s) at --speed 1; p50/p99/max of latency_ms (from the intended send time) over all legs.
- plain Locust: FastHttpUser with wait_time = constant_throughput(200 / U), U users spawned at once
  (200 req/s in all), 10 s; its own reported p50/p99/max (from its JSON stats, computed the way Locust
  computes its percentiles) and how many requests it sent. Two user counts: U = 10 (a usual choice:
  enough users for the rate when the target is healthy) and U = 200 (one request per user per second).
  With U users, at most U requests can be waiting during the stall, and constant_throughput then
  catches up by skipping its waits, so how much of the stall Locust shows depends on U.
Each side runs --tries times (default 3), alternating; the median of each figure is reported.

    .venv/bin/python benchmarks/stall.py       # about 2 minutes
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

RATE = 200
DURATION_S = 10.0
STALL_AT_S = 4.0
STALL_S = 1.0

LOCUSTFILE = """
from locust import FastHttpUser, constant_throughput, task

BODY = %r


class PlainUser(FastHttpUser):
    wait_time = constant_throughput(%r)

    @task
    def post(self):
        self.client.post("/score", data=BODY, headers={"Content-Type": "application/json"})
"""


def stall(nginx: c.Nginx, after_s: float, log: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        time.sleep(after_s)
        pids = nginx.worker_pids()
        log["stopped_at"] = time.time()
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(STALL_S)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
        log["continued_at"] = time.time()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def harness_once(nginx: c.Nginx, work: Path, i: int) -> dict[str, Any]:
    d = work / f"harness-{i}"
    d.mkdir()
    n = int(RATE * DURATION_S)
    cap = c.write_capture(d / "capture.jsonl", n, RATE)
    scenario = c.write_scenario(d / "scenario.yaml", cap, nginx.urls[0], nginx.urls[1], name="stall",
                                replay={"timeout_s": 5})
    st: dict[str, Any] = {}
    threads: list[threading.Thread] = []

    def on_line(line: str, proc: Any) -> None:
        # "traffic: ..." is printed once the capture is prepared; the replay starts about 0.3 s later.
        if line.startswith("traffic:") and not threads:
            threads.append(stall(nginx, STALL_AT_S + 0.3, st))

    run = c.run_harness(["run", str(scenario), "--speed", "1", "--progress-every", "60"], out=d / "out",
                        timeout_s=120, on_line=on_line)
    for t in threads:
        t.join()
    if run.run_dir is None or run.rc not in (0, 1, 2):
        raise RuntimeError(f"harness run failed ({run.rc}):\n{run.output[-2000:]}")
    (legs, p50, p99, mx, svc99, errors), = c.query(run.run_dir, """
        select count(*), quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.99), max(latency_ms),
               quantile_cont(service_ms, 0.99), count(*) filter (where error_kind is not null) from legs""")
    (in_window, t0, t1), = c.query(run.run_dir, f"""
        select count(*) filter (where epoch(intended_at) between {st['stopped_at']} and {st['continued_at']}),
               min(epoch(intended_at)), max(epoch(intended_at)) from legs""")
    return {"legs": legs, "expected_legs": 2 * n, "errors": errors, "p50_ms": round(p50, 2), "p99_ms": round(p99, 1),
            "max_ms": round(mx, 1), "service_p99_ms": round(svc99, 1), "legs_intended_during_stall": in_window,
            "stall_inside_replay": bool(t0 < st["stopped_at"] < t1)}


def locust_once(nginx: c.Nginx, users: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-stall-locust-") as d:
        lf = Path(d) / "locustfile.py"
        lf.write_text(LOCUSTFILE % (c.TINY_BODY, RATE / users))
        cmd = [*c.LOCUST, "-f", str(lf), "--headless", "-u", str(users), "-r", str(users * 10), "-t",
               f"{int(DURATION_S)}s", "--host", nginx.urls[0], "--json-file", str(Path(d) / "stats"),
               "--only-summary", "--loglevel", "INFO", "--stop-timeout", "5"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=d,
                                start_new_session=True)
        st: dict[str, Any] = {}
        started = None
        assert proc.stderr is not None
        try:
            for line in proc.stderr:
                # Locust's run clock starts with the spawn; the stall comes STALL_AT_S after it.
                if started is None and ("Ramping to" in line or "All users spawned" in line):
                    started = stall(nginx, STALL_AT_S, st)
            proc.wait(timeout=DURATION_S + 60)
        finally:
            c.stop_process(proc)
        if started is not None:
            started.join()
        stats = json.loads((Path(d) / "stats.json").read_text())
    hist: dict[int, int] = {}
    n = fails = 0
    for s in stats:
        n += s["num_requests"]
        fails += s["num_failures"]
        for k, v in s["response_times"].items():
            hist[int(float(k))] = hist.get(int(float(k)), 0) + v
    return {"users": users, "requests": n, "expected_requests": int(RATE * DURATION_S), "failures": fails,
            "p50_ms": _pct(hist, 0.5), "p99_ms": _pct(hist, 0.99), "max_ms": max(hist) if hist else None,
            "stalled": "stopped_at" in st}


def _pct(hist: dict[int, int], q: float) -> int | None:
    """Locust's own way: the bucketed response time at which the cumulative count reaches q."""
    total = sum(hist.values())
    if not total:
        return None
    need, run = total * q, 0
    for k in sorted(hist):
        run += hist[k]
        if run >= need:
            return k
    return max(hist)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tries", type=int, default=3)
    ap.add_argument("--users", type=int, nargs="+", default=[10, 200], help="Locust user counts (default 10 200)")
    args = ap.parse_args()
    info = c.machine_info()
    c.print_machine(info)
    c.ensure_apt({"nginx": "nginx-light"})
    sides = ["harness", *[f"locust_u{u}" for u in args.users]]
    result: dict[str, Any] = {"machine": info, **{s: [] for s in sides}}
    with c.Nginx(ports=2, workers=1) as nginx, c.scratch_dir("bench-stall-") as work:
        for i in range(args.tries):
            c.wait_quiet()
            h = harness_once(nginx, work, i)
            result["harness"].append(h)
            print(f"try {i + 1} harness: {h}", flush=True)
            for u in args.users:
                c.wait_quiet()
                lo = locust_once(nginx, u)
                result[f"locust_u{u}"].append(lo)
                print(f"try {i + 1} locust {u} users: {lo}", flush=True)
    med: dict[str, dict[str, float]] = {}
    for side in sides:
        med[side] = {k: c.median([r[k] for r in result[side]]) for k in ("p50_ms", "p99_ms", "max_ms")}
        if side != "harness":
            med[side]["requests"] = c.median([r["requests"] for r in result[side]])
    result["median"] = med
    h = med["harness"]
    print(f"\nresults (median of {args.tries}; {STALL_S} s SIGSTOP of nginx at {RATE} req/s for {DURATION_S:g} s):")
    print(f"  harness, from intended send time:  p50 {h['p50_ms']} ms, p99 {h['p99_ms']} ms, max {h['max_ms']} ms")
    for u in args.users:
        lo = med[f"locust_u{u}"]
        print(f"  plain Locust, {u:>3} users x constant_throughput({RATE / u:g}): p50 {lo['p50_ms']} ms, "
              f"p99 {lo['p99_ms']} ms, max {lo['max_ms']} ms, {lo['requests']:.0f} of {int(RATE * DURATION_S)} "
              f"requests sent; harness p99 / Locust p99 = {h['p99_ms'] / max(lo['p99_ms'], 1):.1f}")
    c.save_result("stall", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
