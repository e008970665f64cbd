"""Analysis and gates over 1,000,000 and 10,000,000 pairs: harness.outputs.judge(run_dir) time
(goal <= 30 s for 1 M, <= 5 min for 10 M) and peak RSS (goal <= 4 GB), and where the time goes.

Input: a synthetic results.duckdb per size, built by _synth_run.py through harness.store.RunStore.create
with the demo scenario (five segments, the seed's five gates, route output schemas, 2,000 bootstrap
resamples), N pairs with planted effects. Measured in a fresh process per try: wall time of
judge(run_dir) (everything summary.json holds: analysis, gates, output comparison, overviews,
schedule; not the HTML) and its peak RSS (VmHWM, DuckDB included: it runs in-process). Then one
cProfile'd run at the first size shows where the time goes, and one instrumented run (the peak-RSS mark
reset before each step of judge) shows where the memory goes.
Peer: one DuckDB scan of the same legs table computing p50/p95/p99 and error rate per version and per
segment value (the floor any analysis of this file pays), timed in the same process before judge.

    .venv/bin/python benchmarks/analysis_scale.py                        # 1 M x3 and 10 M x1: ~25 min
    .venv/bin/python benchmarks/analysis_scale.py --sizes 1000000 --tries 1
"""
from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

GOALS_S = {1_000_000: 30.0, 10_000_000: 300.0}
GOAL_RSS_MB = 4096.0
PHASES = ["load_pairs", "evaluate_gates", "paired_quantile_ratio_ci", "_segment_masks", "_compare_outputs",
          "field_diffs", "version_overview", "segment_overview", "replay_fidelity", "accounting",
          "resource_overview", "build_schedule", "worst_segments", "load_run_info"]


def vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def peer_scan(run_dir: Path) -> float:
    import duckdb

    con = duckdb.connect(str(run_dir / "results.duckdb"), read_only=True)
    t0 = time.perf_counter()
    con.execute("""select l.version, grouping_id(r.tenant, r.geography, r.request_size, r.route) as g,
                          r.tenant, r.geography, r.request_size, r.route, count(*),
                          quantile_cont(latency_ms, [0.5, 0.95, 0.99]), avg((error_kind is not null)::int)
                   from legs l join requests r using (request_id)
                   group by grouping sets ((l.version), (l.version, r.tenant), (l.version, r.geography),
                                           (l.version, r.request_size), (l.version, r.route))""").fetchall()
    dt = time.perf_counter() - t0
    con.close()
    return dt


MEMORY_STEPS = {"harness.outputs": ["load_pairs", "evaluate_gates", "compare_outputs", "llm_overview",
                                    "version_overview", "segment_overview", "replay_fidelity", "accounting",
                                    "resource_overview"],
                "harness.schedule": ["build_schedule"]}


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _instrument_memory(peaks: dict[str, dict[str, float]]) -> None:
    """Wrap judge's steps: reset the peak-RSS mark before each (echo 5 > /proc/self/clear_refs) and read
    VmHWM after it, so each step's own peak is known."""
    import importlib

    def wrap(name: str, fn: Any) -> Any:
        def inner(*a: Any, **kw: Any) -> Any:
            before = _status_mb("VmRSS")
            Path("/proc/self/clear_refs").write_text("5")
            try:
                return fn(*a, **kw)
            finally:
                peaks[name] = {"rss_before_mb": round(before), "peak_mb": round(_status_mb("VmHWM")),
                               "rss_after_mb": round(_status_mb("VmRSS"))}
                # one line per step as it ends, so a run killed by the watchdog still tells which steps ran
                print(json.dumps({"step": name, **peaks[name]}), flush=True)
        return inner

    for mod_name, names in MEMORY_STEPS.items():
        mod = importlib.import_module(mod_name)
        for name in names:
            if hasattr(mod, name):
                setattr(mod, name, wrap(name, getattr(mod, name)))


def child(mode: str, run_dir: Path) -> None:
    from harness.outputs import judge

    out: dict[str, Any] = {}
    if mode == "memory":
        peaks: dict[str, dict[str, float]] = {}
        _instrument_memory(peaks)
        judge(run_dir)
        out["steps"] = peaks
    elif mode == "time":
        out["peer_scan_s"] = peer_scan(run_dir)
        t0 = time.perf_counter()
        summary = judge(run_dir)
        out["judge_s"] = time.perf_counter() - t0
        out["verdict"] = summary["verdict"]
        out["gate_results"] = len(summary["gates"])
    else:
        prof = cProfile.Profile()
        t0 = time.perf_counter()
        prof.enable()
        judge(run_dir)
        prof.disable()
        out["judge_s"] = time.perf_counter() - t0
        st = pstats.Stats(prof)
        phases: dict[str, float] = {}
        for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
            if func in PHASES and "harness" in file:
                phases[f"{Path(file).parent.name}/{Path(file).name}:{func}"] = max(
                    ct, phases.get(f"{Path(file).parent.name}/{Path(file).name}:{func}", 0.0))
        out["phases_s"] = dict(sorted(phases.items(), key=lambda kv: -kv[1]))
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(15)
        out["top_tottime"] = buf.getvalue()
    out["peak_rss_mb"] = vm_hwm_mb()
    print(json.dumps(out))


def run_child(mode: str, run_dir: Path, kill_above_mb: float, timeout_s: float = 3600) -> dict[str, Any]:
    """The child runs under a watchdog: the machine is shared, so a child whose RSS passes kill_above_mb
    (default 2 x the 4 GB goal) or that runs past timeout_s is killed, and that is the result."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([c.PY, __file__, "--child", mode, str(run_dir)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=c.ROOT)
    watch = c.TreeRSS(proc.pid, every_s=0.2)
    watch.start()
    killed = None
    try:
        while proc.poll() is None:
            time.sleep(0.2)
            if watch.peak_mb > kill_above_mb:
                killed = f"killed: RSS passed {kill_above_mb:,.0f} MB after {time.perf_counter() - t0:.0f} s"
            elif time.perf_counter() - t0 > timeout_s:
                killed = f"killed: still running after {timeout_s:.0f} s"
            if killed:
                proc.kill()
                break
        out, err = proc.communicate()
    finally:
        watch.stop()
    steps = {}
    for line in out.splitlines():
        if line.startswith('{"step"'):
            d = json.loads(line)
            steps[d.pop("step")] = d
    if killed:
        return {"killed": killed, "steps": steps, "judge_s": time.perf_counter() - t0, "peak_rss_mb": watch.peak_mb,
                "peer_scan_s": float("nan"), "gate_results": 0, "verdict": None}
    if proc.returncode != 0:
        raise RuntimeError(err[-4000:])
    res = json.loads(out.strip().splitlines()[-1])
    res["polled_peak_rss_mb"] = round(watch.peak_mb)
    return res


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--tries", type=int, nargs="+", default=[3, 1], help="tries per size (default 3 1)")
    ap.add_argument("--no-profile", action="store_true")
    ap.add_argument("--kill-above-mb", type=float, default=2 * GOAL_RSS_MB,
                    help="kill a judging process above this RSS (shared machine); default 8192")
    ap.add_argument("--memory-all", action="store_true", help="per-step memory at every size, not only the first")
    args = ap.parse_args()
    sys.path.insert(0, str(c.ROOT))
    from _synth_run import build_run

    info = c.machine_info()
    c.print_machine(info)
    result: dict[str, Any] = {"machine": info, "sizes": {}}
    with c.scratch_dir("bench-analysis-") as work:
        for k, n in enumerate(args.sizes):
            tries = args.tries[min(k, len(args.tries) - 1)]
            run_dir = work / f"run-{n}"
            built = build_run(run_dir, n)
            print(f"{n:,} pairs: results.duckdb {built['db_mb']:,.0f} MB built in {built['total_s']:.0f} s", flush=True)
            runs = []
            for i in range(tries):
                busy = c.wait_quiet()
                r = run_child("time", run_dir, args.kill_above_mb)
                r["machine_busy_before"] = round(busy, 2)
                runs.append(r)
                if "killed" in r:
                    print(f"  try {i + 1}: {r['killed']} (goal not met)", flush=True)
                    break
                print(f"  try {i + 1}: judge {r['judge_s']:.1f} s, peak RSS {r['peak_rss_mb']:,.0f} MB, "
                      f"peer DuckDB scan {r['peer_scan_s']:.2f} s, {r['gate_results']} gate results, "
                      f"verdict {r['verdict']} (machine {busy:.0%} busy before)", flush=True)
            entry: dict[str, Any] = {"db_mb": round(built["db_mb"]), "build_s": round(built["total_s"], 1),
                                     "runs": runs,
                                     "killed": runs[-1].get("killed"),
                                     "judge_s_median": c.median([r["judge_s"] for r in runs]),
                                     "peer_scan_s_median": c.median([r["peer_scan_s"] for r in runs]),
                                     "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}
            entry["ratio_vs_peer_scan"] = entry["judge_s_median"] / entry["peer_scan_s_median"]
            if k == 0 and not args.no_profile and "killed" not in runs[-1]:
                p = run_child("profile", run_dir, args.kill_above_mb)
                entry["profile"] = p
                print(f"  profiled run (cProfile; {p['judge_s']:.1f} s) - cumulative time of the main steps:")
                for name, s in p["phases_s"].items():
                    print(f"    {s:7.2f} s  {100 * s / p['judge_s']:5.1f} %  {name}")
                print("  top functions by own time:\n" + "\n".join(
                    "    " + ln for ln in p["top_tottime"].splitlines()[-18:] if ln.strip()))
            if k == 0 or args.memory_all:
                m = run_child("memory", run_dir, args.kill_above_mb)
                entry["memory_steps"] = m.get("steps", {})
                print("  peak RSS per step (each step's own peak, in order; RSS before -> peak -> after, MB):")
                for name, v in m["steps"].items():
                    print(f"    {name:>18}: {v['rss_before_mb']:>6,} -> {v['peak_mb']:>6,} -> {v['rss_after_mb']:>6,}")
            result["sizes"][n] = entry
            shutil.rmtree(run_dir, ignore_errors=True)
    print("\nresults (median judge time; peak RSS = max VmHWM of the judging process):")
    for n, e in result["sizes"].items():
        goal = GOALS_S.get(n)
        t = e["judge_s_median"]
        if e.get("killed"):
            print(f"  {n:>10,} pairs: {e['killed']}: goals NOT met")
            continue
        print(f"  {n:>10,} pairs: judge {t:.1f} s (goal {goal:g} s: {'met' if goal and t <= goal else 'NOT met'}), "
              f"peak RSS {e['peak_rss_mb']:,.0f} MB (goal <= {GOAL_RSS_MB:,.0f}: "
              f"{'met' if e['peak_rss_mb'] <= GOAL_RSS_MB else 'NOT met'}); one DuckDB scan of the same data "
              f"{e['peer_scan_s_median']:.2f} s -> judge = {e['ratio_vs_peer_scan']:.0f}x the scan")
    c.save_result("analysis_scale", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
