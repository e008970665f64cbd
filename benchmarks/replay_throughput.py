"""The highest paired rate the harness keeps on time, against raw Locust and wrk on the same target.

Target: nginx (Debian's nginx-light, one worker) answering POST with a 36-byte JSON answer on two ports
(baseline, candidate); with --tls over https (certificates from a CA made for the run, verified by the
harness with `tls.ca_file`; the peers speak https to the same ports). Peers, on the same nginx, each measured N times before and N times after the
harness in this run (best kept):
  - wrk -t1 -c50 (what the target can take),
  - raw Locust FastHttpUser, 50 users, no wait, one process and --processes 2 (Locust's own maximum).
Harness: synthetic JSONL captures (POST /score, tiny JSON body, timestamps spaced 1/rate) replayed with
`harness run SCENARIO --speed 1` (and `--processes 2`). A rate passes when, in the best of N tries (with
--all-of: in every one of them), every leg is recorded (legs = 2 x requests, nothing skipped) and the send
lag p99 from results.duckdb is <= 2 ms.
Rates are tried on a ladder (125 ... 6000 pairs/s) until the replay collapses, then bisected to --resolution.
Before every measurement the script waits (up to 90 s) for the shared machine to be <= 25 % busy for 2 s
(plus the --background-load share), and records its load average and how busy and how stolen (steal) it was.
Reported: harness legs/s at the highest rate that passed with every lower rate tried passing too / raw
FastHttpUser req/s (goal >= 0.8); for context the same ratio at lag p99 <= 5 ms (harness's own saturation bound) and at "every leg recorded";
the lag p50/p99 of every rate tried; and the pair skew (p99 of |sent_at baseline - sent_at candidate|,
goal <= 1 ms) at the worst unsaturated rate.

    .venv/bin/python benchmarks/replay_throughput.py            # about 10-15 minutes
    .venv/bin/python benchmarks/replay_throughput.py --quick    # 1 try per rate, shorter replays
    .venv/bin/python benchmarks/replay_throughput.py --tls      # the same over https
    flock /tmp/heavy.lock .venv/bin/python benchmarks/replay_throughput.py --all-of --processes 1 --rates 500 1000 1500
    ... --background-load 0.5    # the same with half a core kept busy by another process, the whole run
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

LAG_BOUND_MS = 2.0
SKEW_GOAL_MS = 1.0
RATIO_GOAL = 0.8


QUIET_BUSY = 0.25  # the machine counts as quiet below this share of all CPUs busy (plus --background-load's)
_quiet = QUIET_BUSY
_harness_nice = 0


def quiet_start() -> dict[str, float]:
    """Wait for a quiet machine (the background load aside), then record how loaded it is: load average,
    CPUs busy and stolen over 0.5 s."""
    c.wait_quiet(max_busy=_quiet)
    return c.load_now(0.5)


def trial(nginx: c.Nginx, work: Path, rate: int, duration_s: float, processes: int) -> dict[str, Any]:
    n = max(int(rate * duration_s), 100)
    d = work / f"r{rate}-p{processes}-{time.monotonic_ns()}"
    d.mkdir()
    cap = c.write_capture(d / "capture.jsonl", n, rate)
    scenario = c.write_scenario(d / "scenario.yaml", cap, nginx.urls[0], nginx.urls[1], name="throughput",
                                replay={"max_in_flight": 10000}, ca_file=nginx.ca_file)
    args = ["run", str(scenario), "--speed", "1", "--progress-every", "60"]
    if processes > 1:
        args += ["--processes", str(processes)]
    load = quiet_start()
    counters = c.cpu_counters()
    run = c.run_harness(args, out=d / "out", timeout_s=duration_s * 10 + 120, nice=_harness_nice)
    during = c.cpu_shares(counters, c.cpu_counters())
    res: dict[str, Any] = {"rate_pairs_s": rate, "requests": n, "rc": run.rc, "wall_s": round(run.wall_s, 1),
                           "machine_busy_before": load["busy"], "steal_before": load["steal"],
                           "loadavg_before": load["loadavg_1m"], "steal_during": during["steal"]}
    if run.rc not in (0, 1, 2) or run.run_dir is None or not (run.run_dir / "results.duckdb").exists():
        res.update(ok=False, why=f"harness exited {run.rc}: {run.output[-800:]}")
        return res
    (legs, lag50, lag99, lagmax, errors), = c.query(run.run_dir, """
        select count(*), quantile_cont(send_lag_ms, 0.5), quantile_cont(send_lag_ms, 0.99), max(send_lag_ms),
               count(*) filter (where error_kind is not null) from legs""")
    (skew50, skew99), = c.query(run.run_dir, """
        select quantile_cont(abs(epoch_us(b.sent_at) - epoch_us(c.sent_at)) / 1000.0, 0.5),
               quantile_cont(abs(epoch_us(b.sent_at) - epoch_us(c.sent_at)) / 1000.0, 0.99)
        from legs b join legs c using (request_id) where b.version = 'baseline' and c.version = 'candidate'""")
    (replayed,), = c.query(run.run_dir, "select count(*) from requests")
    (skipped,), = c.query(run.run_dir, "select count(*) from skipped")
    complete = legs == 2 * n and replayed == n and skipped == 0
    res.update(legs=legs, errors=errors, skipped=skipped, lag_p50_ms=round(lag50, 3), lag_p99_ms=round(lag99, 3),
               lag_max_ms=round(lagmax, 2), skew_p50_ms=round(skew50, 3), skew_p99_ms=round(skew99, 3),
               all_legs_recorded=complete, ok=bool(complete and errors == 0 and lag99 <= LAG_BOUND_MS))
    if not res["ok"]:
        res["why"] = ("legs missing" if not complete else f"{errors} errors" if errors else
                      f"lag p99 {lag99:.2f} ms > {LAG_BOUND_MS} ms")
    return res


def _try(nginx: c.Nginx, work: Path, rate: int, duration_s: float, processes: int, i: int,
         log: list[dict[str, Any]]) -> dict[str, Any]:
    r = trial(nginx, work, rate, duration_s, processes)
    r["try"] = i + 1
    r["processes"] = processes
    log.append(r)
    print(f"  processes={processes or 1} rate={rate:>6} pairs/s try {i + 1}: "
          + (f"lag p50/p99/max {r['lag_p50_ms']}/{r['lag_p99_ms']}/{r['lag_max_ms']} ms, "
             f"skew p99 {r['skew_p99_ms']} ms, legs {r['legs']}/{2 * r['requests']}"
             if "legs" in r else "") + f" [before: {r['machine_busy_before']:.0%} busy, steal {r['steal_before']:.1%}, "
             f"load {r['loadavg_before']}; steal during the run {r['steal_during']:.1%}]" + (" PASS" if r["ok"] else f" FAIL ({r.get('why', '')[:200]})"), flush=True)
    return r


def all_of(nginx: c.Nginx, work: Path, rate: int, duration_s: float, processes: int, tries: int,
           log: list[dict[str, Any]]) -> dict[str, Any]:
    """A rate passes only if every one of `tries` replays passes (the house rule for a figure: 3 of 3); the
    worst try stands for the rate, with every try's lag p99 beside it."""
    runs = []
    for i in range(tries):
        runs.append(_try(nginx, work, rate, duration_s, processes, i, log))
        if not runs[-1]["ok"]:
            break  # one failure fails the rate
    failed = [r for r in runs if not r["ok"]]
    worst = dict(failed[0] if failed else max(runs, key=lambda r: r.get("lag_p99_ms", 1e9)))
    worst["lag_p99_tries"] = [r.get("lag_p99_ms") for r in runs]
    return worst


def best_of(nginx: c.Nginx, work: Path, rate: int, duration_s: float, processes: int, tries: int,
            log: list[dict[str, Any]]) -> dict[str, Any]:
    """A rate passes if one of `tries` replays passes (the machine is shared: noise only ever hurts)."""
    best: dict[str, Any] | None = None
    for i in range(tries):
        r = _try(nginx, work, rate, duration_s, processes, i, log)
        if r["ok"]:
            return r
        hopeless = not r.get("all_legs_recorded") or r.get("lag_p99_ms", 1e9) > 15.0  # noise does not make up that much
        if best is None or r.get("lag_p99_ms", 1e9) < best.get("lag_p99_ms", 1e9):
            best = r
        if hopeless:
            break
    assert best is not None
    return best


def search(nginx: c.Nginx, work: Path, args: argparse.Namespace, processes: int,
           log: list[dict[str, Any]]) -> dict[str, Any]:
    """A ladder of rates (best of N each) until the replay collapses; then bisection between the highest
    rate that passed the 2 ms bound and the lowest that failed it. Returns the ladder and three figures:
    the highest rate with lag p99 <= 2 ms (the goal's criterion), <= 5 ms (harness's own saturation bound,
    replay.lag_bound_ms), and the highest rate at which every leg was still recorded, each counted only
    where every lower rate tried held too."""
    ladder: list[dict[str, Any]] = []
    for rate in args.rates:
        if rate > args.max_rate:
            break
        r = args.rule(nginx, work, rate, args.duration_s, processes, args.tries, log)
        ladder.append(r)
        if not r.get("all_legs_recorded") or r.get("lag_p99_ms", 1e9) > args.collapse_ms:
            break
    passed = [r for r in ladder if r["ok"]]
    failed = [r for r in ladder if not r["ok"] and r["rate_pairs_s"] > max((p["rate_pairs_s"] for p in passed), default=0)]
    if passed and failed:
        lo, hi = max(p["rate_pairs_s"] for p in passed), min(f["rate_pairs_s"] for f in failed)
        while hi - lo > max(args.resolution, lo * 0.1):
            mid = (lo + hi) // 2
            r = args.rule(nginx, work, mid, args.duration_s, processes, args.tries, log)
            ladder.append(r)
            if r["ok"]:
                lo = mid
            else:
                hi = mid
    ladder.sort(key=lambda r: r["rate_pairs_s"])

    def highest(pred: Any) -> dict[str, Any] | None:
        """The highest rate below which every rate tried also held: a rate that passed above one that
        failed is luck, not a rate the replay keeps."""
        held = None
        for r in ladder:
            if not (r.get("all_legs_recorded") and r.get("errors") == 0 and pred(r)):
                break
            held = r
        return held

    return {"ladder": ladder,
            "lag_2ms": highest(lambda r: r["lag_p99_ms"] <= LAG_BOUND_MS),
            "lag_5ms": highest(lambda r: r["lag_p99_ms"] <= 5.0),
            "all_recorded": highest(lambda r: True)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration-s", type=float, default=6.0, help="length of each harness replay (default 6)")
    ap.add_argument("--tries", type=int, default=3, help="tries per rate and per peer, best kept (default 3)")
    ap.add_argument("--rates", type=int, nargs="+", default=[125, 250, 500, 1000, 2000, 3000, 4000, 6000],
                    help="the ladder of rates tried, pairs/s")
    ap.add_argument("--max-rate", type=int, default=20000, help="never try above this, pairs/s")
    ap.add_argument("--collapse-ms", type=float, default=100.0, help="stop the ladder once lag p99 passes this")
    ap.add_argument("--resolution", type=int, default=100, help="bisection stops within this, pairs/s")
    ap.add_argument("--peer-seconds", type=int, default=8, help="length of each peer measurement (default 8)")
    ap.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to measure")
    ap.add_argument("--quick", action="store_true", help="1 try, 4 s replays, coarser search")
    ap.add_argument("--all-of", action="store_true",
                    help="a rate passes only when all --tries pass (3 of 3), not the best of them")
    ap.add_argument("--background-load", type=float, default=0.0, metavar="SHARE",
                    help="run a process that keeps SHARE of one core busy (0.5: half a core) for the whole run, "
                         "peers and harness alike: a reproducible shared, noisy machine")
    ap.add_argument("--harness-nice", type=int, default=0, metavar="N",
                    help="run the harness under `nice -n N` (negative: ahead of other work; needs root), the peers "
                         "as they are: does the lag tail under --background-load come from waiting for a core?")
    ap.add_argument("--tls", action="store_true",
                    help="nginx serves https (a CA made for the run; the harness verifies with it as ca_file), and "
                         "the peers (wrk, raw FastHttpUser) speak https to it too")
    args = ap.parse_args()
    args.rule = all_of if args.all_of else best_of
    global _quiet, _harness_nice
    _quiet = QUIET_BUSY + args.background_load / (os.cpu_count() or 1)
    _harness_nice = args.harness_nice
    if args.quick:
        args.tries, args.duration_s, args.resolution, args.peer_seconds = 1, 4.0, 250, 5
        args.rates = [250, 1000, 3000]
    info = c.machine_info()
    c.print_machine(info)
    c.ensure_apt({"nginx": "nginx-light", "wrk": "wrk"})
    result: dict[str, Any] = {"machine": info, "args": {k: v for k, v in vars(args).items() if k != "rule"},
                              "trials": []}
    with c.background_load(args.background_load), c.Nginx(ports=2, workers=1, tls=args.tls) as nginx, \
            c.scratch_dir("bench-throughput-") as work:
        if args.background_load:
            print(f"background load: {args.background_load:g} of one core, for the whole run", flush=True)
        print(f"target: nginx 1 worker at {nginx.urls}", flush=True)
        peers: dict[str, list[float]] = {"wrk -t1 -c50": []}
        peer_loads: list[list[dict[str, float]]] = []
        for p in args.processes:
            peers[f"locust FastHttpUser x{p}"] = []

        def measure_peers(when: str) -> None:
            for i in range(args.tries):  # interleaved, so a busy minute on the machine hits every peer alike
                quiet_start()
                peers["wrk -t1 -c50"].append(c.wrk_rps(nginx.urls[0] + "/score", duration_s=args.peer_seconds))
                loads = []
                for p in args.processes:
                    loads.append(quiet_start())
                    r = c.locust_fast_rps(nginx.urls[0], duration_s=args.peer_seconds, processes=p if p > 1 else 0)
                    peers[f"locust FastHttpUser x{p}"].append(r["rps"])
                peer_loads.append(loads)
                print(f"peers {when} try {i + 1}: " + ", ".join(f"{k} {v[-1]:,.0f} req/s" for k, v in peers.items())
                      + " [before FastHttpUser: " + "; ".join(f"{x['busy']:.0%} busy, steal {x['steal']:.1%}, load "
                                                             f"{x['loadavg_1m']}" for x in loads) + "]", flush=True)

        # The peers are measured before and after the harness, and the best of all tries is the peer: a slow
        # stretch of the shared machine during one round cannot flatter the ratio.
        measure_peers("before")
        found_by_p = {}
        for p in args.processes:
            print(f"harness, processes={p}: ladder of rates, lag bound {LAG_BOUND_MS} ms", flush=True)
            found_by_p[p] = search(nginx, work, args, p, result["trials"])
        measure_peers("after")
        result["peers"] = {k: {"tries": [round(x) for x in v], "best": round(max(v))} for k, v in peers.items()}
        result["peer_load_before"] = peer_loads
        summary = []
        for p in args.processes:
            found = found_by_p[p]
            raw = max(peers[f"locust FastHttpUser x{p}"])
            row: dict[str, Any] = {"processes": p, "raw_locust_rps": round(raw),
                                   "wrk_rps": round(max(peers["wrk -t1 -c50"])),
                                   "ladder": [{k: r.get(k) for k in ("rate_pairs_s", "lag_p50_ms", "lag_p99_ms",
                                                                      "lag_max_ms", "skew_p99_ms", "all_legs_recorded",
                                                                      "errors")} for r in found["ladder"]]}
            tries = sorted(peers[f"locust FastHttpUser x{p}"])
            for key in ("lag_2ms", "lag_5ms", "all_recorded"):
                best = found[key]
                rate = best["rate_pairs_s"] if best else 0
                # against the peer's best, median and worst try: how far the peer itself moved in this run
                row[key] = {"rate_pairs_s": rate, "legs_s": 2 * rate, "ratio": round(2 * rate / raw, 3),
                            "ratio_vs_peer_median": round(2 * rate / tries[len(tries) // 2], 3),
                            "ratio_vs_peer_worst": round(2 * rate / tries[0], 3),
                            "lag_p99_ms": best and best["lag_p99_ms"], "skew_p99_ms": best and best["skew_p99_ms"],
                            "lag_p99_tries": best and best.get("lag_p99_tries")}
            row["ratio_goal_met"] = row["lag_2ms"]["ratio"] >= RATIO_GOAL
            skews = [r["skew_p99_ms"] for r in found["ladder"] if r.get("skew_p99_ms") is not None and
                     r.get("lag_p99_ms", 1e9) <= 5.0]
            row["skew_p99_ms_worst_unsaturated"] = max(skews) if skews else None
            row["skew_goal_met"] = bool(skews) and max(skews) <= SKEW_GOAL_MS
            summary.append(row)
        result["summary"] = summary
    print(f"\nresults ({'all' if args.all_of else 'best'} of {args.tries} per rate; legs/s = 2 x pairs/s; a rate counts only with every leg recorded)")
    print(f"  peers (best of {2 * args.tries}, before and after): wrk -t1 -c50 {result['peers']['wrk -t1 -c50']['best']:,} req/s; " + "; ".join(
        f"raw FastHttpUser x{p} {result['peers'][f'locust FastHttpUser x{p}']['best']:,} req/s" for p in args.processes))
    for row in summary:
        p = row["processes"]
        print(f"  processes={p}: lag p50/p99 by rate (pairs/s): " + ", ".join(
            f"{r['rate_pairs_s']}: {r['lag_p50_ms']}/{r['lag_p99_ms']} ms" + ("" if r["all_legs_recorded"] else " (legs missing)")
            for r in row["ladder"]))
        for key, label in (("lag_2ms", f"lag p99 <= {LAG_BOUND_MS:g} ms (goal)"), ("lag_5ms", "lag p99 <= 5 ms"),
                           ("all_recorded", "every leg recorded, any lag")):
            f = row[key]
            print(f"    highest rate with {label}: {f['legs_s']:,} legs/s ({f['rate_pairs_s']:,} pairs/s) -> "
                  f"{f['ratio']:.2f} x raw FastHttpUser x{p} (x{f['ratio_vs_peer_median']:.2f} its median try, "
                  f"x{f['ratio_vs_peer_worst']:.2f} its worst)"
                  + (f"; lag p99 of the tries {f['lag_p99_tries']} ms" if f.get("lag_p99_tries") else ""))
        print(f"    goal legs/s >= {RATIO_GOAL} x raw FastHttpUser: {'met' if row['ratio_goal_met'] else 'NOT met'}; "
              f"pair skew p99 (worst unsaturated rate) {row['skew_p99_ms_worst_unsaturated']} ms, goal <= "
              f"{SKEW_GOAL_MS} ms: {'met' if row['skew_goal_met'] else 'NOT met'}")
    c.save_result("replay_throughput_tls" if args.tls else "replay_throughput", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
