"""The report of a 1,000,000-pair run: `harness report RUN_DIR` time (goal <= 20 s) and
gate_report.html size (goal <= 3 MB).

Input: a synthetic 1,000,000-pair results.duckdb built by _synth_run.py (demo scenario, planted effects).
Measured: wall time of the CLI `harness report RUN_DIR` (judge + summary.json + canary_schedule.yaml +
junit.xml + gate_report.html, in a fresh process, interpreter start included), its peak RSS, the size of
gate_report.html, and that the run folder passes tests/run_folder_contract.py. Peer, same data in
the same run: harness.outputs.judge(run_dir) alone in a fresh process (the analysis the report needs
before it renders anything), so report - judge is the rendering's own cost.
Median of --tries (default 3).

    .venv/bin/python benchmarks/report_scale.py            # about 5 minutes
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

GOAL_S = 20.0
GOAL_MB = 3.0
CHECKER = c.ROOT / "tests" / "run_folder_contract.py"


def judge_only(run_dir: Path) -> float:
    code = ("import sys, time; from pathlib import Path; from harness.outputs import judge; "
            "t = time.perf_counter(); judge(Path(sys.argv[1])); print(time.perf_counter() - t)")
    r = subprocess.run([c.PY, "-c", code, str(run_dir)], capture_output=True, text=True, cwd=c.ROOT, timeout=3600)
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    return float(r.stdout.strip().splitlines()[-1])


def report_once(run_dir: Path) -> dict[str, Any]:
    for name in ("summary.json", "gate_report.html", "canary_schedule.yaml", "junit.xml"):
        (run_dir / name).unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen([*c.HARNESS, "report", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=c.ROOT)
    watch = c.TreeRSS(proc.pid, every_s=0.1)
    watch.start()
    out, _ = proc.communicate(timeout=3600)
    wall = time.perf_counter() - t0
    watch.stop()
    html = run_dir / "gate_report.html"
    return {"rc": proc.returncode, "wall_s": wall, "peak_rss_mb": round(watch.peak_mb),
            "html_bytes": html.stat().st_size if html.exists() else None, "output_tail": out[-600:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pairs", type=int, default=1_000_000)
    ap.add_argument("--tries", type=int, default=3)
    args = ap.parse_args()
    from _synth_run import build_run

    info = c.machine_info()
    c.print_machine(info)
    html_src = c.ROOT / "harness" / "report" / "html.py"
    result: dict[str, Any] = {"machine": info, "pairs": args.pairs, "tries": [],
                              "report_module_lines": len(html_src.read_text().splitlines())}
    with c.scratch_dir("bench-report-") as work:
        run_dir = work / "run"
        built = build_run(run_dir, args.pairs)
        print(f"{args.pairs:,} pairs: results.duckdb {built['db_mb']:,.0f} MB built in {built['total_s']:.0f} s", flush=True)
        for i in range(args.tries):
            busy = c.wait_quiet()
            r = report_once(run_dir)
            r["judge_only_s"] = judge_only(run_dir)
            r["machine_busy_before"] = round(busy, 2)
            result["tries"].append(r)
            print(f"  try {i + 1}: harness report {r['wall_s']:.1f} s (exit {r['rc']}), peak RSS {r['peak_rss_mb']:,} MB, "
                  f"gate_report.html {(r['html_bytes'] or 0) / 1e6:.2f} MB; judge alone {r['judge_only_s']:.1f} s "
                  f"(machine {busy:.0%} busy before)", flush=True)
            if r["rc"] not in (0, 1, 2):
                print(r["output_tail"])
        check = subprocess.run([c.PY, str(CHECKER), str(run_dir)], capture_output=True, text=True)
        result["check_run_folder"] = {"rc": check.returncode, "output": (check.stdout + check.stderr)[-1500:]}
        html = (run_dir / "gate_report.html").read_text(errors="replace") if (run_dir / "gate_report.html").exists() else ""
        result["html_has_images"] = html.count("data:image/")
        result["html_has_script"] = "<script" in html.lower()
    t = c.median([r["wall_s"] for r in result["tries"]])
    j = c.median([r["judge_only_s"] for r in result["tries"]])
    size_mb = max((r["html_bytes"] or 0) for r in result["tries"]) / 1e6
    result["median"] = {"report_s": t, "judge_only_s": j, "render_s": t - j, "html_mb": size_mb}
    print(f"\nresults ({args.pairs:,} pairs, median of {args.tries}):")
    print(f"  harness report: {t:.1f} s (goal <= {GOAL_S:g} s: {'met' if t <= GOAL_S else 'NOT met'}); "
          f"judge alone {j:.1f} s -> report / judge = {t / j:.2f}, rendering and writing {t - j:.1f} s")
    print(f"  gate_report.html: {size_mb:.2f} MB (goal <= {GOAL_MB:g} MB: {'met' if size_mb <= GOAL_MB else 'NOT met'}), "
          f"{result['html_has_images']} inline images, script tags: {result['html_has_script']}; "
          f"report module {result['report_module_lines']} lines")
    if result["check_run_folder"] is not None:
        print(f"  run_folder_contract.py: exit {result['check_run_folder']['rc']} "
              f"{result['check_run_folder']['output'].strip()[:300]}")
    c.save_result("report_scale", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
