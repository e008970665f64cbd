"""Where the send-lag tail of a paired replay comes from: each late leg against what overlapped its wait.

`harness run --speed 1` at a fixed paired rate against nginx (optionally with --background-load), in a
child process that records, with wall-clock start and end: the recorder's flushes and seals (on the send
loop; a flush waits for its inserts), the store's DuckDB inserts (in the store's writer process, which the
child starts wrapped the same way; `--variants thread`: in the recorder's thread), the resource sampler,
and every garbage collection (gc.callbacks). harness's files are not changed: the child wraps those
functions before it calls the CLI. Meanwhile this process reads the harness main thread's /proc schedstat every 10 ms (time
spent runnable but waiting for a CPU: the machine's share) and /proc/stat (steal).

For every leg whose send lag is over --late-ms, the window [intended, sent] is checked against each kind
of event; printed: how many late legs overlap each kind, the lag p99 of legs that overlap none, and the
lag p99 over 10 ms bins split by whether the main thread waited for a CPU in that bin.

    flock /tmp/heavy.lock .venv/bin/python benchmarks/lag_tail.py --rate 2000 --background-load 0.5
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

WRITER = r"""
import json, sys, time
trace_path, results = sys.argv[1], sys.argv[2]
events = []
from harness import store, store_writer
insert = store.RunStore._insert
def wrapped(*a, **k):
    t0 = time.time()
    try:
        return insert(*a, **k)
    finally:
        events.append(("insert", t0, time.time()))
store.RunStore._insert = wrapped
try:
    rc = store_writer.main(results, sys.stdin.buffer, sys.stdout.buffer)
finally:
    with open(trace_path, "w") as f:
        json.dump(events, f)
raise SystemExit(rc)
"""

CHILD = r"""
import gc, json, sys, threading, time
trace_path = sys.argv[1]
WRITER = sys.argv.pop(3)
events = []
gc_start = {}
def on_gc(phase, info):
    if phase == "start":
        gc_start["t"] = time.time()
    else:
        events.append(("gc%d" % info["generation"], gc_start.get("t", time.time()), time.time()))
gc.callbacks.append(on_gc)
def wrap(owner, name, kind):
    f = getattr(owner, name)
    def wrapped(*a, **k):
        t0 = time.time()
        try:
            return f(*a, **k)
        finally:
            events.append((kind, t0, time.time()))
    setattr(owner, name, wrapped)
from harness.replay import recorder
from harness import store, monitor
for owner, name, kind in [(recorder.Recorder, "_seal_legs", "seal"), (recorder.Recorder, "_flush", "flush"),
                          (store.RunStore, "_insert", "insert"), (monitor.ResourceMonitor, "sample", "sample")]:
    if hasattr(owner, name):
        wrap(owner, name, kind)
from harness import store_child
# the store's writer process records its own inserts, into trace_path + ".writer"
store_child.WRITER_ARGV = [sys.executable, "-c", WRITER, trace_path + ".writer"]
if sys.argv[2] == "before":  # the recorder as it was: DuckDB's own threads, the sink thread at the loop's priority
    recorder.SINK_NICE = 0
    store.RunStore.recording = lambda self, on: None
if sys.argv[2] == "seal64":  # the loop seals legs into Arrow batches 64 at a time between yields
    recorder.SEAL_CHUNK = 64
if sys.argv[2] == "per-column":  # one Arrow array per column for each seal step (run from the repository root)
    sys.path.insert(0, "benchmarks")
    from seal_cost import per_column
    recorder.seal = per_column
if sys.argv[2] in ("before", "thread"):  # DuckDB's inserts in the recorder's thread, in this process
    import contextlib
    @contextlib.contextmanager
    def in_thread(st, note):
        yield {"legs": st.write_legs, "events": st.write_events, "resources": st.write_resources}
    store_child.writing_in_child = in_thread
from harness.cli import main
try:
    rc = main(sys.argv[3:])
finally:
    with open(trace_path, "w") as f:
        json.dump(events, f)
raise SystemExit(rc)
"""


class SchedWatch(threading.Thread):
    """The main thread's run-queue wait (ns, /proc/PID/schedstat field 2) and the machine's steal, every 10 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.rows: list[tuple[float, int, int, int]] = []  # time, run ns, wait ns, steal ticks
        self.stop = threading.Event()

    def run(self) -> None:
        path = f"/proc/{self.pid}/schedstat"
        while not self.stop.is_set():
            try:
                with open(path) as f:
                    run_ns, wait_ns, _ = (int(x) for x in f.read().split())
                with open("/proc/stat") as f:
                    steal = int(f.readline().split()[8])
            except (OSError, ValueError):
                return
            self.rows.append((time.time(), run_ns, wait_ns, steal))
            time.sleep(0.01)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=2000, help="pairs/s")
    ap.add_argument("--duration-s", type=float, default=5.0)
    ap.add_argument("--background-load", type=float, default=0.0)
    ap.add_argument("--late-ms", type=float, default=1.0, help="a leg later than this counts as late")
    ap.add_argument("--tries", type=int, default=1)
    ap.add_argument("--variants", nargs="+", default=["as-is"], choices=["as-is", "seal64", "per-column", "thread", "before"],
                    help="as-is: DuckDB's inserts in the store's writer process; thread: in the recorder's "
                         "thread of the replay's process (nice +10, DuckDB on one thread); before: that thread at "
                         "the loop's priority and DuckDB with a thread per core; seal64: legs sealed 64 at a time "
                         "between the loop's yields; per-column: a seal step converts each column on its own; "
                         "variants alternate within each try")
    args = ap.parse_args()
    results = []
    with c.scratch_dir("lagtail") as work, c.Nginx() as nginx, c.background_load(args.background_load):
        for i in range(args.tries):
            for variant in args.variants:
                results.append({"variant": variant, "try": i + 1,
                                **one(nginx, work / f"t{i}-{variant}", args, variant)})
    c.save_result("lag_tail", {"args": vars(args), "tries": results, "machine": c.machine_info()})
    return 0


def one(nginx: c.Nginx, d: Path, args: argparse.Namespace, variant: str) -> dict[str, Any]:
    d.mkdir(parents=True)
    n = int(args.rate * args.duration_s)
    cap = c.write_capture(d / "capture.jsonl", n, args.rate)
    scenario = c.write_scenario(d / "scenario.yaml", cap, nginx.urls[0], nginx.urls[1], name="lagtail",
                                replay={"max_in_flight": 10000})
    c.wait_quiet(max_busy=0.25 + args.background_load / 2)
    load = c.load_now(0.5)
    trace = d / "trace.json"
    out = d / "out"
    proc = subprocess.Popen([c.PY, "-c", CHILD, str(trace), variant, WRITER, "run", str(scenario), "--speed", "1",
                             "--progress-every", "60", "--out", str(out)], cwd=c.ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch = SchedWatch(proc.pid)
    watch.start()
    output, _ = proc.communicate(timeout=args.duration_s * 10 + 120)
    watch.stop.set()
    run_dir = next((p for p in out.iterdir() if (p / "results.duckdb").exists()), None)
    if run_dir is None:
        print(output[-2000:])
        raise SystemExit("no run folder")
    legs = c.query(run_dir, "select epoch_us(intended_at) / 1e6, epoch_us(sent_at) / 1e6, send_lag_ms from legs "
                            "order by intended_at")
    events = json.loads(trace.read_text())
    writer_trace = trace.with_name(trace.name + ".writer")
    if writer_trace.exists():  # the inserts of the store's writer process
        events += json.loads(writer_trace.read_text())
    return analyse(legs, events, watch.rows, args.late_ms, args.rate, load)


def _p(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return round(xs[min(len(xs) - 1, int(q * len(xs)))], 3)


def analyse(legs: list[tuple[Any, ...]], events: list[list[Any]], sched: list[tuple[float, int, int, int]],
            late_ms: float, rate: int, load: dict[str, float]) -> dict[str, Any]:
    t_first, t_last = legs[0][0], legs[-1][0]
    kinds = sorted({e[0] for e in events})
    spans = {k: sorted((e[1], e[2]) for e in events if e[0] == k and e[2] >= t_first - 1 and e[1] <= t_last + 1)
             for k in kinds}
    # run-queue wait per 10 ms step of the main thread, as intervals with the wait in them
    sched = [row for row in sched if t_first <= row[0] <= t_last]  # the replay's span only
    waits = [(a[0], b[0], (b[2] - a[2]) / 1e6) for a, b in zip(sched, sched[1:])]
    steal = (sched[-1][3] - sched[0][3]) if sched else 0
    ran_ms = (sched[-1][1] - sched[0][1]) / 1e6 if sched else 0.0

    def overlaps(span_list: list[tuple[float, float]], lo: float, hi: float) -> bool:
        import bisect
        i = bisect.bisect_left(span_list, (lo - 1.0, 0.0))
        for s, e in span_list[i:]:
            if s > hi:
                break
            if e >= lo:
                return True
        return False

    late = [leg for leg in legs if leg[2] > late_ms]
    counts = {k: sum(1 for leg in late if overlaps(spans[k], leg[0], leg[1])) for k in kinds}
    wait_spans = [(a, b) for a, b, w in waits if w > 0.5]
    counts["runqueue_wait>0.5ms"] = sum(1 for leg in late if overlaps(wait_spans, leg[0], leg[1]))
    # how much likelier a leg is late when its wait overlaps the kind: (late share there) / (late share overall)
    enrichment = {}
    for k, sl in [*((k, spans[k]) for k in kinds), ("runqueue_wait>0.5ms", wait_spans)]:
        inside = [leg for leg in legs if overlaps(sl, leg[0], leg[1])]
        if inside and late:
            enrichment[k] = {"legs_overlapping": len(inside),
                             "late_share_when_overlapping": round(sum(leg[2] > late_ms for leg in inside) / len(inside), 3),
                             "late_share_otherwise": round((len(late) - counts[k]) / max(1, len(legs) - len(inside)), 3)}
    loop_kinds = [k for k in kinds if k not in ("flush",)]  # a flush waits for its insert; the insert is the cost
    none = [leg for leg in late if not any(overlaps(spans[k], leg[0], leg[1]) for k in loop_kinds)
            and not overlaps(wait_spans, leg[0], leg[1])]
    durations = {k: {"n": len(v), "p50_ms": _p([(e - s) * 1e3 for s, e in v], 0.5),
                     "max_ms": _p([(e - s) * 1e3 for s, e in v], 1.0)} for k, v in spans.items()}
    lags = [leg[2] for leg in legs]
    res = {"rate": rate, "legs": len(legs), "lag_p50_ms": _p(lags, 0.5), "lag_p99_ms": _p(lags, 0.99),
           "lag_max_ms": _p(lags, 1.0), "late_ms": late_ms, "late_legs": len(late),
           "late_legs_overlapping": counts, "late_share_by_overlap": enrichment, "late_legs_overlapping_nothing": len(none),
           "lag_p99_of_those_ms": _p([leg[2] for leg in none], 0.99), "events": durations,
           "replay_s": round(t_last - t_first, 2), "main_thread_cpu_ms": round(ran_ms, 1),
           "main_thread_runqueue_wait_ms": round(sum(w for _, _, w in waits), 1),
           "steal_ticks": steal, "load_before": load}
    print(json.dumps({k: v for k, v in res.items() if k != "events"}))
    return res


if __name__ == "__main__":
    raise SystemExit(main())
