"""Peak RSS of the harness process tree while replaying a 1,000,000-request capture
(goal <= 500 MB: the capture is streamed, not loaded whole).

Capture: 1,000,000 JSONL lines (POST /score, tiny JSON body, 1,000 requests/s captured). The whole file
goes through prepare (read, redact, segment, stage in DuckDB, sort, schedule.parquet); the replay is
bounded with --max-requests (default 150,000 pairs) at --speed chosen for --rate pairs/s (default 800/s,
a rate this machine keeps), so the run takes a few minutes; --full replays all 1,000,000.
Target: nginx (one worker). Measured: the summed RSS of `harness run` and all its children, polled every
0.2 s (psutil), with its peak in each phase: prepare (until the "traffic:" line), replay (until "done:"),
outputs (judge + report, until exit). Accounting is checked (legs = 2 x replayed, none skipped).
Peer: the peak RSS of a plain Locust run (FastHttpUser, 50 users, no wait, 30 s) on the same target.

    .venv/bin/python benchmarks/replay_memory.py            # about 5 minutes
    .venv/bin/python benchmarks/replay_memory.py --full     # all 1,000,000 pairs (about 25 minutes)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

GOAL_MB = 500.0
CAPTURE_LINES = 1_000_000
CAPTURED_RATE = 1000.0


def locust_peak_rss(url: str, seconds: int) -> float:
    with tempfile.TemporaryDirectory(prefix="bench-mem-locust-") as d:
        lf = Path(d) / "locustfile.py"
        lf.write_text(c.LOCUSTFILE % c.TINY_BODY)
        proc = subprocess.Popen([*c.LOCUST, "-f", str(lf), "--headless", "-u", "50", "-r", "5000", "-t",
                                 f"{seconds}s", "--host", url, "--only-summary", "--loglevel", "ERROR"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d)
        watch = c.TreeRSS(proc.pid, every_s=0.2)
        watch.start()
        try:
            proc.wait(timeout=seconds + 60)
        finally:
            c.stop_process(proc)
            watch.stop()
    return watch.peak_mb


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=float, default=800.0, help="replay rate, pairs/s (default 800)")
    ap.add_argument("--max-requests", type=int, default=150_000, help="pairs replayed (default 150,000)")
    ap.add_argument("--full", action="store_true", help="replay all 1,000,000 pairs")
    ap.add_argument("--processes", type=int, default=0, help="harness run --processes N (default: one process)")
    args = ap.parse_args()
    info = c.machine_info()
    c.print_machine(info)
    c.ensure_apt({"nginx": "nginx-light"})
    speed = args.rate / CAPTURED_RATE
    result: dict[str, Any] = {"machine": info, "args": vars(args), "speed": speed}
    with c.Nginx(ports=2, workers=1) as nginx, c.scratch_dir("bench-mem-") as work:
        cap = work / "capture-1m.jsonl"
        c.write_capture(cap, CAPTURE_LINES, CAPTURED_RATE)
        result["capture_mb"] = round(cap.stat().st_size / 2**20)
        print(f"capture: {CAPTURE_LINES:,} lines, {result['capture_mb']} MB", flush=True)
        scenario = c.write_scenario(work / "scenario.yaml", cap, nginx.urls[0], nginx.urls[1], name="memory",
                                    replay={"max_in_flight": 2000})
        marks: dict[str, float] = {}  # time.monotonic() when each phase ended

        def on_line(line: str, proc: Any) -> None:
            if line.startswith("traffic:"):
                marks["prepared"] = time.monotonic()
            elif line.startswith("done:"):
                marks["replayed"] = time.monotonic()
            if line.startswith(("traffic:", "done:", "progress:")):
                print("  harness> " + line.rstrip(), flush=True)

        cmd = ["run", str(scenario), "--speed", f"{speed:g}", "--progress-every", "30"]
        if not args.full:
            cmd += ["--max-requests", str(args.max_requests)]
        if args.processes:
            cmd += ["--processes", str(args.processes)]
        n_expected = CAPTURE_LINES if args.full else min(args.max_requests, CAPTURE_LINES)
        busy = c.wait_quiet()
        run = c.run_harness(cmd, out=work / "out", timeout_s=n_expected / args.rate * 3 + 600, measure_rss=True,
                            on_line=on_line)
        if run.run_dir is None or run.rc not in (0, 1, 2):
            print(run.output[-3000:])
            raise SystemExit(f"harness run failed ({run.rc})")
        samples = run.rss_samples
        marks = {k: v - run.rss_t0 for k, v in marks.items()}
        end = samples[-1][0] if samples else 0.0
        bounds = {"prepare": (0.0, marks.get("prepared", end)),
                  "replay": (marks.get("prepared", end), marks.get("replayed", end)),
                  "outputs": (marks.get("replayed", end), end + 1)}
        phases = {k: {"seconds": round(hi - lo, 1), "peak_rss_mb": round(max((mb for t, mb in samples if lo <= t < hi),
                                                                             default=0.0))}
                  for k, (lo, hi) in bounds.items()}
        (replayed,), = c.query(run.run_dir, "select count(*) from requests")
        (legs,), = c.query(run.run_dir, "select count(*) from legs")
        (skipped_total,), = c.query(run.run_dir, "select count(*) from skipped")
        skipped = dict(c.query(run.run_dir, "select reason, count(*) from skipped group by 1"))
        (lag99,), = c.query(run.run_dir, "select quantile_cont(send_lag_ms, 0.99) from legs")
        peer = locust_peak_rss(nginx.urls[0], 30)
        result.update({
            "machine_busy_before": round(busy, 2), "wall_s": round(run.wall_s), "peak_rss_mb": round(run.peak_rss_mb or 0),
            "phases": phases, "replayed": replayed, "legs": legs, "skipped": skipped,
            "accounting_ok": legs == 2 * replayed and replayed + skipped_total == CAPTURE_LINES,
            "lag_p99_ms": round(lag99, 2), "locust_peak_rss_mb": round(peer),
            "ratio_vs_locust": (run.peak_rss_mb or 0) / peer, "rss_timeline": samples[::10]})
    r = result
    print(f"\nresults ({CAPTURE_LINES:,}-line capture, {r['replayed']:,} pairs replayed at {args.rate:g} pairs/s, "
          f"{r['wall_s']} s in all, machine {r['machine_busy_before']:.0%} busy before):")
    for k, v in r["phases"].items():
        print(f"  {k:>8}: {v['seconds']:>6} s, peak RSS of the process tree {v['peak_rss_mb']:,} MB")
    print(f"  peak RSS {r['peak_rss_mb']:,} MB (goal <= {GOAL_MB:g} MB: {'met' if r['peak_rss_mb'] <= GOAL_MB else 'NOT met'}); "
          f"plain Locust FastHttpUser run: {r['locust_peak_rss_mb']} MB -> ratio {r['ratio_vs_locust']:.1f}")
    print(f"  accounting: {r['legs']:,} legs for {r['replayed']:,} replayed; skipped {r['skipped']} "
          f"({'ok' if r['accounting_ok'] else 'MISMATCH'}); send lag p99 {r['lag_p99_ms']} ms")
    c.save_result("replay_memory" + ("_full" if args.full else ""), result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
