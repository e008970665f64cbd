"""Issue 20, item 3: streams at scale. A paired replay of a Mooncake-style trace against two OpenAI-compatible
streaming servers with an injected time to first token and inter-token gap (benchmarks/_stream_server.py,
one process per version): at each concurrency, how far the harness's per-leg TTFT and inter-token gaps are
from the injected truth, whether every leg was recorded, the send lag, and the memory per open stream.

Concurrency C (pairs of streams open at once, 2C legs) is set by the arrival rate: each stream lasts
D = TTFT + (tokens - 1) x ITL, so requests arrive at C / D pairs per second for D + --hold-s seconds.
The servers report their own lateness per token write and the most streams they had open at once, so
the servers' error is told apart from the client's and the concurrency reached is counted, not assumed.
Two errors per leg: against the injected truth (server lateness included), and against what the server
really did for that stream (joined on the completion id: the client's own error). The server's truth is the
kernel's: a request's receive stamp and each token's software send stamp (_stream_server.py), the harness's
arrival times are its kernel receive stamps; `server_sends_kernel_stamped` is the share of token times that
are the kernel's (the rest are the time right after send()).
Memory per open stream: the difference of the harness process tree's peak RSS between the highest and the
lowest concurrency, divided by the difference in open legs.

    flock /tmp/heavy.lock .venv/bin/python benchmarks/llm_streams.py                     # 100 .. 2000
    flock /tmp/heavy.lock .venv/bin/python benchmarks/llm_streams.py --concurrency 250 1000
    flock /tmp/heavy.lock .venv/bin/python benchmarks/llm_streams.py --concurrency 1000 --profile   # where the time goes

--pin 1/0 puts the servers on CPU 1 and harness on CPU 0 (taskset): it tells the servers' lateness that
comes from sharing cores with the client from their own. --server-sched fifo runs the servers with
real-time FIFO scheduling (chrt), so that a due token is sent when the server wakes, not after another
process's time slice: the servers are the measuring instrument, and this makes their schedule the truth
to within their own sending time.

--profile samples the harness process with py-spy (--nonblocking: the replay is never paused) from the
`traffic:` line to the end of the replay and prints where the Python time went (profile_replay.py's summary).

The machine's load (load average, and CPU busy and steal over 1 s from /proc/stat) is recorded before
each run: on a shared machine it says whether a figure is the code's or the neighbours'.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

SERVER = Path(__file__).resolve().parent / "_stream_server.py"
FIFO = ["chrt", "--fifo", "20"]
GOAL_MS = 1.0


def busy_since(before: list[int]) -> float:
    return c.cpu_shares(before, c.cpu_counters())["busy"]


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def stream_servers(ttft_ms: float, itl_ms: float, stats_dir: Path, cpu_s: list[float] | None = None,
                   cpus: str | None = None, fifo: bool = False, stamps: str = "kernel"
                   ) -> Iterator[tuple[list[str], list[Path]]]:
    """Two stream servers, on the CPUs `cpus` names when given (taskset's list; "A+B": the first on A, the second
    on B), with real-time FIFO scheduling when `fifo`, and their tokens' send times from `stamps` (kernel or
    clock); `cpu_s` gets each one's CPU seconds when they stop."""
    ports = [c.free_port(), c.free_port()]
    stats = [stats_dir / f"server-{p}.json" for p in ports]
    each = cpus.split("+") if cpus else [""]
    prefixes = [[*(FIFO if fifo else []), *(["taskset", "-c", cpu] if cpu else [])] for cpu in (each * 2)[:2]]
    procs = [subprocess.Popen([*pre, c.PY, str(SERVER), "--ports", str(p), "--ttft-ms", str(ttft_ms), "--itl-ms", str(itl_ms),
                               "--stats-file", str(s), "--send-stamps", stamps]) for pre, p, s in zip(prefixes, ports, stats)]
    try:
        for p in ports:
            c.wait_port(p)
        yield [f"http://127.0.0.1:{p}" for p in ports], stats
    finally:
        for proc in procs:
            if cpu_s is not None and proc.poll() is None:
                cpu_s.append(round(process_cpu_s(proc.pid), 1))
            c.stop_process(proc)


class _Profiler:
    """py-spy on the harness process for the replay's duration, started at its `traffic:` line."""

    def __init__(self, raw: Path, seconds: float, rate_hz: int = 250) -> None:
        import profile_replay
        self.exe, self.raw, self.seconds, self.rate_hz = profile_replay.pyspy(), raw, seconds, rate_hz
        self.proc: subprocess.Popen[bytes] | None = None

    def on_line(self, line: str, proc: subprocess.Popen[str]) -> None:
        if self.proc is None and line.startswith("traffic:"):
            self.raw.parent.mkdir(parents=True, exist_ok=True)
            self.proc = subprocess.Popen([self.exe, "record", "--pid", str(proc.pid), "-r", str(self.rate_hz), "--gil",
                                          "--nonblocking", "-f", "raw", "-d", str(int(self.seconds) + 1), "-o",
                                          str(self.raw)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def add_trace_and_server_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--arrivals", choices=("poisson", "uniform"), default="poisson",
                    help="the trace's arrival process (seeded). uniform: with evenly spaced arrivals every gap "
                         "is a whole number of inter-arrival times, so about --tokens streams a server are due "
                         "at the same instant, a burst the server sends one after the other")
    ap.add_argument("--server-sched", choices=("normal", "fifo"), default="normal",
                    help="fifo: the servers run SCHED_FIFO (chrt; root or CAP_SYS_NICE), so that a token's send "
                         "is never queued behind the client's or the other server's time slice")
    ap.add_argument("--server-stamps", choices=("kernel", "clock"), default="kernel",
                    help="the servers' token send times: the kernel's stamps, or the clock after send() "
                         "(about a third less server CPU a token)")


def check_server_sched(args: argparse.Namespace) -> None:
    if args.server_sched == "fifo":
        try:
            subprocess.run([*FIFO, "true"], check=True, capture_output=True)
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(f"--server-sched fifo: `{' '.join(FIFO)}` cannot run here ({e}); it needs root or CAP_SYS_NICE")


def write_trace(path: Path, n: int, rate: float, tokens: int, arrivals: str = "poisson", seed: int = 1) -> Path:
    """`n` requests at `rate` a second: evenly spaced, or Poisson arrivals (exponential gaps, seeded)."""
    rng = random.Random(seed)
    at = 0.0
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"timestamp": round(at * 1000.0, 3), "input_length": 32,
                                "output_length": tokens, "hash_ids": [i % 8]}) + "\n")
            at += rng.expovariate(rate) if arrivals == "poisson" else 1.0 / rate
    return path


def write_scenario(path: Path, trace: Path, urls: list[str], max_in_flight: int) -> Path:
    path.write_text(f"""name: llm-streams
traffic:
  path: {trace}
  format: mooncake
  trace: {{seed: 1, model: m}}
targets:
  baseline:  {{url: "{urls[0]}", protocol: openai}}
  candidate: {{url: "{urls[1]}", protocol: openai}}
replay:
  mode: paired
  timeout_s: 60
  max_in_flight: {max_in_flight}
  allow: ["POST /v1/chat/completions"]
promotion_gates:
  error_rate: {{maximum: 0.01}}
""")
    return path


def one(conc: int, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    stream_s = (args.ttft_ms + (args.tokens - 1) * args.itl_ms) / 1000.0
    rate = conc / stream_s
    n = int(rate * (stream_s + args.hold_s))
    d = work / f"c{conc}"
    d.mkdir()
    trace = write_trace(d / "trace.jsonl", n, rate, args.tokens, args.arrivals)
    load = c.load_now()
    server_cpu: list[float] = []
    server_cpus, harness_cpus = args.pin.split("/") if args.pin else (None, None)
    harness_cpus = harness_cpus or None
    with stream_servers(args.ttft_ms, args.itl_ms, d, server_cpu, server_cpus, args.server_sched == "fifo",
                        args.server_stamps) as (urls, stats):
        scen = write_scenario(d / "s.yaml", trace, urls, max_in_flight=2 * conc + 100)
        extra = ["--processes", str(args.processes)] if args.processes > 1 else []
        spy = _Profiler(c.OUT_ROOT / f"llm_streams_profile_c{conc}.txt", stream_s + args.hold_s) if args.profile else None
        ticks = c.cpu_counters()
        run = c.run_harness(["run", str(scen), *extra], out=d / "out", timeout_s=stream_s + args.hold_s + 240,
                            measure_rss=True, on_line=spy.on_line if spy else None, taskset=harness_cpus)
        busy = busy_since(ticks)
    if args.keep:
        (d / "harness-output.txt").write_text(run.output)
    server = [json.loads(s.read_text()) if s.exists() else {} for s in stats]
    res: dict[str, Any] = {"concurrency_pairs": conc, "open_legs_planned": 2 * conc, "pairs": n,
                           "rate_pairs_per_s": round(rate, 1), "load_before": load, "cpu_busy_during": busy,
                           "server_cpu_s": server_cpu, "rc": run.rc,
                           "wall_s": round(run.wall_s, 1), "peak_rss_mb": run.peak_rss_mb,
                           "server_max_open": [s.get("max_open_streams") for s in server],
                           "server_writes_per_s": [round(s.get("writes_per_s") or 0) for s in server],
                           "server_sends_kernel_stamped": [round((s.get("token_sends_kernel_stamped") or 0)
                                                                 / max(s.get("token_writes") or 1, 1), 4) for s in server],
                           "server_late_p99_ms": [s.get("late_p99_ms") for s in server],
                           "server_late_max_ms": [s.get("late_max_ms") for s in server]}
    if run.run_dir is None or not (run.run_dir / "results.duckdb").exists():
        res["error"] = run.output[-2000:]
        return res
    res["processes"] = args.processes
    if spy is not None and spy.proc is not None:
        import profile_replay
        spy.proc.wait(timeout=spy.seconds + 30)
        (legs,), = c.query(run.run_dir, "select count(*) from legs")
        profile_replay.summarize(spy.raw, spy.seconds, spy.rate_hz, legs, 25)
    ttft, itl = args.ttft_ms, args.itl_ms
    [row] = c.query(run.run_dir, f"""
        select count(*), count(*) filter (where error_kind is not null),
               count(*) filter (where completion_tokens = {args.tokens} and token_chunks = {args.tokens}),
               quantile_cont(time_to_first_token_ms - {ttft}, 0.5), quantile_cont(time_to_first_token_ms - {ttft}, 0.99),
               max(time_to_first_token_ms - {ttft}), min(time_to_first_token_ms - {ttft}),
               quantile_cont(abs(inter_token_ms_mean - {itl}), 0.99), quantile_cont(inter_token_ms_p95 - {itl}, 0.99),
               quantile_cont(send_lag_ms, 0.99), max(send_lag_ms)
        from legs""")
    keys = ["legs", "errors", "legs_with_all_tokens", "ttft_err_p50_ms", "ttft_err_p99_ms", "ttft_err_max_ms",
            "ttft_err_min_ms", "itl_mean_abs_err_p99_ms", "itl_p95_err_p99_ms", "send_lag_p99_ms", "send_lag_max_ms"]
    res.update({k: (round(v, 3) if isinstance(v, float) else v) for k, v in zip(keys, row)})
    res["error_kinds"] = dict(c.query(run.run_dir, "select error_kind, count(*) from legs where error_kind is not null "
                                                   "group by 1 order by 2 desc"))
    # against what each server really did for that very stream (joined on the completion id)
    truth = " union all ".join(f"select '{v}' as version, * from read_json_auto('{t}.truth.jsonl')"
                               for v, t in zip(("baseline", "candidate"), stats) if Path(f"{t}.truth.jsonl").exists())
    if truth:
        [row] = c.query(run.run_dir, f"""
            with t as ({truth}),
            j as (select l.time_to_first_token_ms - t.ttft_ms as ttft_err, l.inter_token_ms_mean - t.itl_mean_ms as mean_err,
                         l.inter_token_ms_p95 - t.itl_p95_ms as p95_err, t.ttft_ms - {ttft} as server_ttft_err
                  from legs l join t on t.version = l.version and t.id = json_extract_string(l.output_json, '$.id'))
            select count(*), quantile_cont(ttft_err, 0.5), quantile_cont(ttft_err, 0.99), max(ttft_err), min(ttft_err),
                   quantile_cont(abs(ttft_err), 0.99), quantile_cont(abs(mean_err), 0.99), quantile_cont(abs(p95_err), 0.99),
                   quantile_cont(server_ttft_err, 0.5), quantile_cont(server_ttft_err, 0.99) from j""")
        keys = ["legs_matched_to_server_truth", "ttft_err_vs_served_p50_ms", "ttft_err_vs_served_p99_ms",
                "ttft_err_vs_served_max_ms", "ttft_err_vs_served_min_ms", "ttft_abs_err_vs_served_p99_ms",
                "itl_mean_abs_err_vs_served_p99_ms", "itl_p95_abs_err_vs_served_p99_ms", "server_ttft_late_p50_ms",
                "server_ttft_late_p99_ms"]
        res.update({k: (round(v, 3) if isinstance(v, float) else v) for k, v in zip(keys, row)})
    res["accurate_vs_injected"] = bool(res["legs"] == 2 * n and res["errors"] == 0 and res["ttft_err_p99_ms"] is not None
                                       and abs(res["ttft_err_p99_ms"]) <= GOAL_MS and res["itl_p95_err_p99_ms"] <= GOAL_MS)
    served = [res.get(k) for k in ("ttft_abs_err_vs_served_p99_ms", "itl_p95_abs_err_vs_served_p99_ms")]
    res["accurate_vs_served"] = bool(res["legs"] == 2 * n and res["errors"] == 0 and None not in served
                                     and all(abs(x) <= GOAL_MS for x in served))  # type: ignore[arg-type]
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[100, 250, 500, 1000, 2000])
    ap.add_argument("--ttft-ms", type=float, default=200.0)
    ap.add_argument("--itl-ms", type=float, default=200.0)
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--hold-s", type=float, default=8.0, help="seconds at full concurrency")
    ap.add_argument("--processes", type=int, default=1, help="harness run --processes N (1: one process)")
    ap.add_argument("--profile", action="store_true", help="sample the replay with py-spy and print where time goes")
    ap.add_argument("--pin", help="SERVERS/HARNESS: taskset CPU lists, e.g. 1/0: the servers on CPU 1, harness on "
                                  "CPU 0, so that neither waits for the other's core; 0+1/: the baseline's server "
                                  "on CPU 0, the candidate's on CPU 1, harness anywhere")
    ap.add_argument("--keep", type=Path, help="keep the traces and run folders in this (new) folder")
    add_trace_and_server_options(ap)
    args = ap.parse_args()
    check_server_sched(args)
    info = c.machine_info()
    c.print_machine(info)
    results = []
    if args.keep:
        args.keep.mkdir(parents=True)
    with (contextlib.nullcontext(args.keep) if args.keep else c.scratch_dir("llm-streams-")) as work:
        for conc in args.concurrency:
            r = one(conc, args, work)
            results.append(r)
            print(json.dumps(r), flush=True)
    lo, hi = results[0], results[-1]
    per_stream_kb = None
    if lo.get("peak_rss_mb") and hi.get("peak_rss_mb") and hi["concurrency_pairs"] > lo["concurrency_pairs"]:
        per_stream_kb = round((hi["peak_rss_mb"] - lo["peak_rss_mb"]) * 1024
                              / (2 * (hi["concurrency_pairs"] - lo["concurrency_pairs"])), 1)
    print(f"memory per open stream (leg): {per_stream_kb} KiB")
    c.save_result("llm_streams", {"machine": info, "args": vars(args), "runs": results,
                                  "memory_per_open_leg_kib": per_stream_kb})


if __name__ == "__main__":
    main()
