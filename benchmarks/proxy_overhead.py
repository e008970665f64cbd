"""What the capture and shadow proxies cost the user's request, against nginx on the same upstream.

Upstream: nginx (Debian, one worker) answering every request with a 36-byte JSON body; a second port
is the mirror / candidate target. Proxies, one at a time, each in front of that upstream:

- nginx, one worker, plain reverse proxy (`proxy_pass`, upstream keep-alive);
- nginx, one worker, `mirror` module: the same, plus a copy of every request to the second port;
- `harness capture` (one process), writing every request to a .jsonl.gz capture;
- `harness shadow` (one process): answers from the upstream, copies to the second port, records legs.

Two measurements per proxy:
1. added latency at a fixed open-loop rate (default 1,000 req/s for 10 s): an asyncio client sends each
   request at its scheduled time whatever is in flight and measures from that time; the same client
   straight to the upstream is the reference; added = proxy percentile - direct percentile (p50, p99);
2. rate per core: wrk -t1 -c50 for 5 s through the proxy; requests / CPU seconds the proxy's processes
   used in that time (psutil), so that a shared machine's other load does not count.

    .venv/bin/python benchmarks/proxy_overhead.py [--rate 1000] [--seconds 10] [--only nginx,capture,...]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import _common as c

PROXIES = ("nginx", "nginx-mirror", "capture", "shadow")


@contextlib.contextmanager
def nginx_proxy(upstream_port: int, mirror_port: int, mirror: bool) -> Iterator[tuple[str, list[int]]]:
    port = c.free_port()
    d = Path(tempfile.mkdtemp(prefix="bench-proxy-"))
    os.chmod(d, 0o755)
    mirror_conf = "mirror /__mirror; mirror_request_body on;" if mirror else ""
    proc = c.start_nginx(d, 1, f"""
    upstream up {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    upstream copy {{ server 127.0.0.1:{mirror_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{ {mirror_conf} proxy_http_version 1.1; proxy_set_header Connection ""; proxy_pass http://up; }}
        location = /__mirror {{ internal; proxy_http_version 1.1; proxy_set_header Connection "";
                                proxy_pass http://copy$request_uri; }}
    }}""")
    try:
        c.wait_port(port)
        import psutil

        yield f"http://127.0.0.1:{port}", [proc.pid, *[ch.pid for ch in psutil.Process(proc.pid).children()]]
    finally:
        c.stop_process(proc)


@contextlib.contextmanager
def harness_proxy(kind: str, upstream: str, mirror: str, work: Path) -> Iterator[tuple[str, list[int]]]:
    port = c.free_port()
    if kind == "capture":
        args = ["capture", "--listen", f"127.0.0.1:{port}", "--upstream", upstream,
                "--out", str(work / "bench-%Y%m%dT%H.jsonl.gz")]
    else:
        scenario = work / "shadow.yaml"
        scenario.write_text(json.dumps({
            "name": "bench-shadow", "traffic": {"path": str(work / "none.jsonl")},
            "targets": {"baseline": {"url": upstream}, "candidate": {"url": mirror}},
            "replay": {"allow": ["POST /*"], "timeout_s": 2},
            "promotion_gates": {"error_rate": {"maximum": 0.01}}, "analysis": {"bootstrap_resamples": 200}}))
        args = ["shadow", str(scenario), "--listen", f"127.0.0.1:{port}", "--out", str(work / "reports")]
    proc = subprocess.Popen([*c.HARNESS, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=work)
    try:
        c.wait_port(port)
        yield f"http://127.0.0.1:{port}", [proc.pid]
    finally:
        c.stop_process(proc, timeout_s=120)


async def open_loop(url: str, rate: float, seconds: float) -> list[float]:
    import aiohttp

    n = int(rate * seconds)
    lat: list[float] = []
    body = c.TINY_BODY.encode()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as s:
        async def one(at: float) -> None:
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            async with s.post(url + "/score", data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
            lat.append((time.perf_counter() - at) * 1000.0)

        for _ in range(50):  # warm the pool
            await one(time.perf_counter())
        lat.clear()
        t0 = time.perf_counter() + 0.1
        await asyncio.gather(*(one(t0 + i / rate) for i in range(n)))
    return lat


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def cpu_seconds(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def per_core(url: str, pids: list[int], seconds: int) -> tuple[float, float]:
    before = cpu_seconds(pids)
    rps = c.wrk_rps(url + "/score", duration_s=seconds)
    used = cpu_seconds(pids) - before
    return rps, rps * seconds / used if used > 0 else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--wrk-seconds", type=int, default=5)
    ap.add_argument("--only", default=",".join(PROXIES))
    args = ap.parse_args()
    c.ensure_apt({"nginx": "nginx-light", "wrk": "wrk"})
    info = c.machine_info()
    c.print_machine(info)
    results: dict[str, Any] = {"machine": info, "rate": args.rate, "seconds": args.seconds}
    with c.Nginx(ports=2, workers=1) as up, c.scratch_dir("bench-proxy-") as work:
        upstream, mirror = up.urls
        busy = c.wait_quiet(max_wait_s=30)
        direct = asyncio.run(open_loop(upstream, args.rate, args.seconds))
        results["direct"] = {"p50_ms": pct(direct, 0.5), "p99_ms": pct(direct, 0.99), "busy_before": busy}
        print(f"direct: p50 {results['direct']['p50_ms']:.3f} ms, p99 {results['direct']['p99_ms']:.3f} ms", flush=True)
        for name in args.only.split(","):
            if name in ("nginx", "nginx-mirror"):
                ctx = nginx_proxy(up.ports[0], up.ports[1], mirror=name == "nginx-mirror")
            else:
                ctx = harness_proxy(name, upstream, mirror, work)
            with ctx as (url, pids):
                busy = c.wait_quiet(max_wait_s=30)
                lat = asyncio.run(open_loop(url, args.rate, args.seconds))
                rps, rate_per_core = per_core(url, pids, args.wrk_seconds)
            r = {"p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
                 "added_p50_ms": pct(lat, 0.5) - results["direct"]["p50_ms"],
                 "added_p99_ms": pct(lat, 0.99) - results["direct"]["p99_ms"],
                 "wrk_rps": rps, "requests_per_cpu_second": rate_per_core, "busy_before": busy}
            results[name] = r
            print(f"{name}: added p50 {r['added_p50_ms']:+.3f} ms, p99 {r['added_p99_ms']:+.3f} ms at "
                  f"{args.rate:g}/s; wrk {rps:,.0f} req/s, {rate_per_core:,.0f} req per CPU-second", flush=True)
    c.save_result(f"proxy_overhead-{args.rate:g}", results)


if __name__ == "__main__":
    main()
