"""Is the demo's verdict stable on a busy machine? (issue 15, item 11)

Runs `harness demo` (the planted-flaw candidate) N times, each while a CPU hog (one busy process pinned to
CPU 0) takes one core, and records per run: exit code, verdict, which planted flaws were found (FAIL in
their segment), whether the load was delivered (send lag and pair skew p99 against replay.lag_bound_ms,
requests skipped at the in-flight limit), and the machine's load average around it.

A run passes when every planted flaw is found, or when the run says its load was not delivered and
the test of the demo (tests/test_demo_e2e.py) asserts exactly that.

    flock /tmp/heavy.lock .venv/bin/python benchmarks/demo_stability.py --runs 10 [--no-hog] [--speed 4]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import PY, machine_info, print_machine, run_harness, save_result, scratch_dir  # noqa: E402

# (gate, segment) of each planted flaw of the demo candidate (harness/demo/model.py)
PLANTED = {"latency": ("latency_p95_ms", "tenant_x_size=enterprise & 32+"),
           "schema": ("schema_validation_pass_rate", "geography=ap-south"),
           "errors": ("error_rate", "route=/v1/accounts/{id}/score")}


@contextlib.contextmanager
def cpu_hog(core: int = 0) -> Iterator[subprocess.Popen[bytes]]:
    """One busy process pinned to `core` for as long as the block runs."""
    proc = subprocess.Popen([PY, "-c", f"import os; os.sched_setaffinity(0, {{{core}}})\nwhile True: pass"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def one_run(out: Path, speed: float | None, hog: bool) -> dict[str, Any]:
    load_before = os.getloadavg()
    args = ["demo", *(["--speed", str(speed)] if speed else [])]
    with cpu_hog() if hog else contextlib.nullcontext():
        run = run_harness(args, out=out, timeout_s=900)
    row: dict[str, Any] = {"rc": run.rc, "wall_s": round(run.wall_s, 1), "load_1m_before": round(load_before[0], 2),
                           "load_1m_after": round(os.getloadavg()[0], 2)}
    if run.run_dir is None or not (run.run_dir / "summary.json").exists():
        row["error"] = run.output[-2000:]
        return row
    s = json.loads((run.run_dir / "summary.json").read_text())
    failing = {(g["name"], g["segment"]) for g in s["gates"] if g["status"] == "fail"}
    rp = s["replay"]
    row.update(verdict=s["verdict"], found={k: v in failing for k, v in PLANTED.items()},
               delivered=rp.get("delivered"), lag_p99_ms=rp.get("lag_p99_ms"), skew_p99_ms=rp.get("pair_skew_p99_ms"),
               skipped_in_flight=rp.get("skipped_in_flight"), problems=rp.get("problems"))
    latency = next((g for g in s["gates"] if (g["name"], g["segment"]) == PLANTED["latency"]), None)
    row["latency_flaw"] = {k: latency.get(k) for k in ("status", "observed", "ci", "n")} if latency else None
    row["ok"] = all(row["found"].values()) or row["delivered"] is False
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--speed", type=float, help="replay speed (default: the demo scenario's)")
    ap.add_argument("--no-hog", action="store_true", help="without the CPU hog")
    args = ap.parse_args()
    info = machine_info()
    print_machine(info)
    rows = []
    with scratch_dir("demo-stability-") as out:
        for i in range(args.runs):
            row = one_run(out, args.speed, not args.no_hog)
            rows.append(row)
            found = row.get("found") or {}
            print(f"run {i + 1}/{args.runs}: rc {row['rc']} verdict {row.get('verdict')} found "
                  f"{','.join(k for k, v in found.items() if v) or '-'} delivered {row.get('delivered')} "
                  f"lag p99 {row.get('lag_p99_ms') or float('nan'):.1f} ms skew p99 {row.get('skew_p99_ms') or float('nan'):.2f} ms "
                  f"latency flaw {row.get('latency_flaw')} load1m {row['load_1m_before']}->{row['load_1m_after']} "
                  f"wall {row['wall_s']} s", flush=True)
    summary = {"runs": len(rows), "all_flaws_found": sum(all((r.get("found") or {"x": False}).values()) for r in rows),
               "not_delivered": sum(r.get("delivered") is False for r in rows), "ok": sum(bool(r.get("ok")) for r in rows)}
    print(f"summary: {summary}", flush=True)
    save_result("demo_stability" + ("_nohog" if args.no_hog else ""),
                {"machine": info, "speed": args.speed, "hog": not args.no_hog, "rows": rows, "summary": summary})
    return 0 if summary["ok"] == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
