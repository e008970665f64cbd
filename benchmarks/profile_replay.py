"""Where the replay's CPU goes: `harness run` at a fixed paired rate against nginx, sampled by py-spy.

py-spy (from PyPI, installed into a scratch venv under benchmarks/out/ if missing) samples the harness
process with --gil (only samples where a thread holds the GIL: Python work) and --threads. Samples from
prepare, imports and outputs are dropped, so the figures cover the replay loop. Printed: GIL-busy share
of the replay wall time, CPU time per leg, the functions by own and by inclusive share, and the shares of
a few groups (HTTP client, dispatch bookkeeping, output reading, Locust stats, recorder flush, gevent hub).

    .venv/bin/python benchmarks/profile_replay.py --rate 800 --seconds 10
"""
from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

SPY_VENV = c.OUT_ROOT / "pyspy-venv"
NOT_REPLAY = ("build_outputs", "prepare_traffic", "_find_and_load", "RunStore.create", "_WorkerGreenlet",
              "_finish_requests", "RunStore.finish", "check_targets", "load_scenario", "freeze_gc")
GROUPS = {
    "HTTP transport (geventhttpclient parser + harness http_transport, wire)": ("geventhttpclient/", "http_transport.py", "wire.py"),
    "output reading, schema, excerpt (protocols, compat, redaction)": ("protocols/", "compat.py", "_excerpt",
                                                                        "redaction.py"),
    "Locust request event + stats": ("locust/stats.py", "locust/event.py", "on_leg", "locust/runners.py"),
    "finisher queue (yielding to the schedule)": ("_finish_loop", "idle (gevent"),
    "recorder flush (pyarrow from_pylist, DuckDB insert)": ("recorder.py",),
    "dispatch loop + spawning (dispatcher run/_spawn_pair, send timer, gevent pool)": (
        "Dispatcher.run", "_spawn_pair", "gevent/pool.py"),
    "resource sampling (psutil)": ("monitor.py", "psutil/"),
    "leg bookkeeping (Dispatcher._leg/_finish_leg own time: the leg tuple, stats)": ("_finish_leg", "Dispatcher._leg"),
}


def pyspy() -> str:
    exe = SPY_VENV / "bin" / "py-spy"
    if not exe.exists():
        subprocess.run([sys.executable, "-m", "venv", str(SPY_VENV)], check=True)
        subprocess.run([str(SPY_VENV / "bin" / "pip"), "install", "-q", "py-spy"], check=True)
    return str(exe)


def summarize(raw: Path, wall_replay_s: float, rate_hz: int, legs: int, top: int) -> None:
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    groups: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n_s = line.rpartition(" ")
        if not stack or any(x in stack for x in NOT_REPLAY):
            continue
        n = int(n_s)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")[1:]]  # [0] is the thread
        total += n
        self_c[frames[-1] if frames else "(native, no Python frame: gevent hub / libev)"] += n
        for f in set(frames):
            incl[f] += n
        for g, keys in GROUPS.items():
            if any(k in stack for k in keys):
                groups[g] += n
                break
        else:
            groups["other (hub, greenlet switching, timers)"] += n
    busy_s = total / rate_hz
    print(f"GIL held {busy_s:.1f} s of {wall_replay_s:.1f} s of replay ({100 * busy_s / wall_replay_s:.0f} %); "
          f"{legs:,} legs -> {1e6 * busy_s / max(legs, 1):.0f} us of Python per leg")
    print("groups (first match wins, in this order):")
    for g, n in groups.most_common():
        print(f"  {100 * n / total:5.1f} %  {g}")
    print("own time:")
    for f, n in self_c.most_common(top):
        print(f"  {100 * n / total:5.1f} %  {f}")
    print("inclusive:")
    for f, n in incl.most_common(top):
        print(f"  {100 * n / total:5.1f} %  {f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=800, help="pairs/s (default 800)")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--sample-hz", type=int, default=250)
    ap.add_argument("--top", type=int, default=30)
    args = ap.parse_args()
    c.print_machine(c.machine_info())
    spy = pyspy()
    with c.Nginx(ports=2, workers=1) as nginx, c.scratch_dir("bench-profile-") as d:
        n = int(args.rate * args.seconds)
        cap = c.write_capture(d / "capture.jsonl", n, args.rate)
        scenario = c.write_scenario(d / "scenario.yaml", cap, nginx.urls[0], nginx.urls[1], name="profile")
        raw = c.OUT_ROOT / f"profile_replay_{args.rate}.txt"
        c.OUT_ROOT.mkdir(parents=True, exist_ok=True)
        c.wait_quiet()
        marks: dict[str, float] = {}
        proc = subprocess.Popen([spy, "record", "-r", str(args.sample_hz), "--gil", "--threads", "-f", "raw",
                                 "-o", str(raw), "--", *c.HARNESS, "run", str(scenario), "--speed", "1",
                                 "--progress-every", "60", "--out", str(d / "out")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=c.ROOT)
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("traffic:"):
                marks["start"] = time.monotonic()
            elif line.startswith("done:"):
                marks["end"] = time.monotonic()
                print(line.rstrip())
        proc.wait()
        runs = sorted((d / "out").iterdir())
        (legs, lag99), = c.query(runs[-1], "select count(*), quantile_cont(send_lag_ms, 0.99) from legs")
        print(f"{legs:,} legs at {args.rate} pairs/s under py-spy: send lag p99 {lag99:.1f} ms (py-spy slows the process)")
        summarize(raw, marks.get("end", 0) - marks.get("start", 0), args.sample_hz, legs, args.top)
        print(f"raw samples (flamegraph.pl input): {raw.relative_to(c.ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
