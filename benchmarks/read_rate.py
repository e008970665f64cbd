"""JSONL reading + segmenting, records/s on one core, and peak memory that does not grow with the file.

Input: synthetic JSONL captures of 1,000,000 and 5,000,000 records shaped like the demo capture (ISO 8601
ts, POST to /v1/accounts/<id>/score or /v1/score?client=..., 4 headers, a body with 1-3 transactions of
8 features; about 470 bytes a line).
Measured, each in a fresh process pinned to one core (taskset -c 0):
  - harness: harness.traffic.readers.iter_records(path) + SegmentEvaluator(scenario.segments).values(req)
    for every record, with the demo scenario's five segments (route template, two headers, a JSON array
    length bucket, and their cross); goal >= 100,000 records/s;
  - peer: `json.loads(line)` for every line of the same file (and orjson.loads, the parser harness uses);
  - peak RSS (VmHWM) of each process; goal: the same for 1 M and 5 M records (within 10 %).
Rates are the best of --tries (default 3); the peak RSS is the largest seen.

    .venv/bin/python benchmarks/read_rate.py               # about 10 minutes (writes ~2.7 GB of temp files)
    .venv/bin/python benchmarks/read_rate.py --sizes 1000000 --tries 1
"""
from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as c  # noqa: E402

GOAL_RPS = 100_000

SEGMENTS = """segments:
  route: {path_template: true}
  tenant: {header: X-Tenant-Tier}
  geography: {header: X-Geo-Region}
  request_size: {json_array_length: "$.transactions", buckets: [1, 2, 3]}
  tenant_x_size: {cross: [tenant, request_size]}
"""


def write_capture(path: Path, n: int, seed: int = 1) -> None:
    rnd = random.Random(seed)
    tiers, geos = ["free", "pro", "enterprise"], ["us-east", "eu-west", "ap-south"]
    clients = ["web", "ios", "android"]
    # A pool of pre-rendered bodies keeps generation fast; records still differ in ts, path and headers.
    bodies = []
    for _ in range(500):
        tx = [{"amount": round(rnd.uniform(1, 500), 2), "merchant_category": rnd.choice([5411, 5999, 6011]),
               "hour": rnd.randrange(24), "features": [round(rnd.gauss(0, 1), 3) for _ in range(8)]}
              for _ in range(rnd.choice([1, 1, 2, 3]))]
        bodies.append(json.dumps({"transactions": tx}, separators=(",", ":")))
    with open(path, "w", buffering=1 << 22) as f:
        out = []
        for i in range(n):
            s = 1_793_000_000 + i * 0.01
            sec = int(s)
            ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{int((s - sec) * 1e6):06d}+00:00"
            p = f"/v1/accounts/{rnd.randrange(10**7, 10**8)}/score" if i % 2 else f"/v1/score?client={clients[i % 3]}"
            out.append(f'{{"ts":"{ts}","method":"POST","path":"{p}","headers":{{"Content-Type":"application/json",'
                       f'"X-Tenant-Tier":"{tiers[i % 3]}","X-Geo-Region":"{geos[(i // 3) % 3]}",'
                       f'"X-Request-Id":"{i:032x}"}},"body":{bodies[i % 500]}}}\n')
            if len(out) >= 20_000:
                f.write("".join(out))
                out.clear()
        f.write("".join(out))


def child(kind: str, path: Path, scenario: Path) -> None:
    """Runs in its own process, pinned to one core; prints one JSON line."""
    if kind == "harness":
        from harness.scenario import load_scenario
        from harness.traffic.readers import iter_records
        from harness.traffic.record import BadRecord
        from harness.traffic.segments import SegmentEvaluator

        seg = SegmentEvaluator(load_scenario(scenario).segments)
        t0 = time.perf_counter()
        n = bad = 0
        values = seg.values
        for item in iter_records(path):
            if isinstance(item, BadRecord):
                bad += 1
                continue
            values(item)
            n += 1
        dt = time.perf_counter() - t0
    else:
        if kind == "orjson":
            import orjson

            loads = orjson.loads
        else:
            loads = json.loads
        t0 = time.perf_counter()
        n = bad = 0
        with open(path, "rb") as f:
            for line in f:
                loads(line)
                n += 1
        dt = time.perf_counter() - t0
    print(json.dumps({"records": n, "bad": bad, "seconds": dt, "rps": n / dt, "peak_rss_mb": vm_hwm_mb()}))


def vm_hwm_mb() -> float:
    """Peak RSS of this process image. (ru_maxrss would not do: Linux carries the forking parent's peak
    across exec, so a child of a big parent would report the parent's peak.)"""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_child(kind: str, path: Path, scenario: Path) -> dict[str, Any]:
    out = subprocess.run(["taskset", "-c", "0", c.PY, __file__, "--child", kind, str(path), str(scenario)],
                         capture_output=True, text=True, cwd=c.ROOT, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 5_000_000])
    ap.add_argument("--tries", type=int, default=3)
    args = ap.parse_args()
    info = c.machine_info()
    c.print_machine(info)
    result: dict[str, Any] = {"machine": info, "sizes": {}}
    with c.scratch_dir("bench-read-") as work:
        for n in args.sizes:
            cap = work / f"capture-{n}.jsonl"
            t0 = time.perf_counter()
            write_capture(cap, n)
            scenario = work / f"scenario-{n}.yaml"
            scenario.write_text(f"name: read\ntraffic: {{path: {cap}}}\n{SEGMENTS}targets:\n"
                                "  baseline: {url: 'http://127.0.0.1:9'}\n  candidate: {url: 'http://127.0.0.1:9'}\n")
            size_mb = cap.stat().st_size / 2**20
            print(f"{n:,} records: wrote {size_mb:,.0f} MB in {time.perf_counter() - t0:.0f} s", flush=True)
            runs: dict[str, list[dict[str, Any]]] = {"harness": [], "json.loads": [], "orjson.loads": []}
            for i in range(args.tries):
                for kind, key in (("harness", "harness"), ("json", "json.loads"), ("orjson", "orjson.loads")):
                    busy = c.wait_quiet()
                    r = run_child(kind, cap, scenario)
                    r["machine_busy_before"] = round(busy, 2)
                    runs[key].append(r)
                    print(f"  try {i + 1} {key:>12}: {r['rps']:>10,.0f} records/s, {r['seconds']:.1f} s, "
                          f"peak RSS {r['peak_rss_mb']:.0f} MB (machine {busy:.0%} busy before)", flush=True)
            best = {k: max(x["rps"] for x in v) for k, v in runs.items()}
            peak = {k: max(x["peak_rss_mb"] for x in v) for k, v in runs.items()}
            result["sizes"][n] = {"file_mb": round(size_mb), "runs": runs, "best_rps": best, "peak_rss_mb": peak,
                                  "ratio_vs_json_loads": best["harness"] / best["json.loads"],
                                  "ratio_vs_orjson_loads": best["harness"] / best["orjson.loads"]}
            cap.unlink()
    print(f"\nresults (taskset -c 0, best of {args.tries}; peak RSS = max VmHWM):")
    for n, s in result["sizes"].items():
        b = s["best_rps"]
        print(f"  {n:>9,} records ({s['file_mb']:,} MB): harness read+segment {b['harness']:,.0f} rec/s "
              f"(goal {GOAL_RPS:,}: {'met' if b['harness'] >= GOAL_RPS else 'NOT met'}); json.loads alone "
              f"{b['json.loads']:,.0f}/s -> ratio {s['ratio_vs_json_loads']:.2f}; orjson.loads alone "
              f"{b['orjson.loads']:,.0f}/s -> ratio {s['ratio_vs_orjson_loads']:.2f}; peak RSS harness "
              f"{s['peak_rss_mb']['harness']:.0f} MB, json.loads {s['peak_rss_mb']['json.loads']:.0f} MB")
    sizes = sorted(result["sizes"])
    if len(sizes) > 1:
        lo, hi = result["sizes"][sizes[0]]["peak_rss_mb"]["harness"], result["sizes"][sizes[-1]]["peak_rss_mb"]["harness"]
        grows = hi > lo * 1.10
        result["memory_flat"] = not grows
        print(f"  peak RSS {sizes[0]:,} -> {sizes[-1]:,} records: {lo:.0f} -> {hi:.0f} MB "
              f"({'GROWS with file size' if grows else 'flat: goal met'})")
    c.save_result("read_rate", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
