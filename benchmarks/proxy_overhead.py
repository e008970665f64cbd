"""What the capture and shadow proxies cost the user's request, against nginx on the same upstream.

Upstream: nginx (Debian, one worker) answering every request with a 36-byte JSON body; a second port
is the mirror / candidate target. Proxies, one at a time, each in front of that upstream:

- nginx, one worker, plain reverse proxy (`proxy_pass`, upstream keep-alive);
- nginx, one worker, `mirror` module: the same, plus a copy of every request to the second port;
- `harness capture` (one process), writing every request to a .jsonl.gz capture;
- `capture-asyncio` (only when named in --only): the same on the standard library's event loop, uvloop
  kept from importing, to show what uvloop brings;
- `capture-sampled` (only when named in --only): `harness capture --sample 0.0001`, which hands every
  exchange to its writer but records almost none: what the proxy costs without the record (redaction,
  JSON, gzip), the part no recording change can remove;
- `harness shadow` (one process): answers from the upstream, copies to the second port, records legs.

Two measurements per proxy:
1. added latency at fixed open-loop rates (default 300 and 1,000 req/s, 8 s each): _open_loop.py, a
   raw-socket client in 2 processes, sends each request at its scheduled time whatever is in flight
   and measures from that time; the same client straight to the upstream is the reference; added =
   proxy percentile - direct percentile (p50, p99). The client's own send lag is printed with it;
2. rate per core: wrk -t1 -c50 for 5 s through the proxy; requests / CPU seconds the proxy's processes
   (with their children: nginx's workers, harness shadow's recorder and snapshots) used in that time
   (psutil), so that a shared machine's other load does not count, until they are idle again (a recorder
   that fell behind finishes its backlog); printed with its split between the proxy's own processes
   and their children (harness shadow: the proxy against its recorder), and the part of it spent in
   the kernel (the socket calls, which no proxy code avoids).

    .venv/bin/python benchmarks/proxy_overhead.py [--rates 300,1000] [--seconds 8] [--only nginx,capture,...]
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Iterator

import _common as c
import _open_loop

PROXIES = ("nginx", "nginx-mirror", "capture", "shadow")
# harness run with uvloop kept from importing: the capture falls back to the standard library's loop
NO_UVLOOP = [c.PY, "-c", "import sys; sys.modules['uvloop'] = None; from harness.cli import main; sys.exit(main())"]


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
    if kind in ("capture", "capture-asyncio", "capture-sampled"):
        args = ["capture", "--listen", f"127.0.0.1:{port}", "--upstream", upstream,
                "--out", str(work / "bench-%Y%m%dT%H.jsonl.gz"), *(["--sample", "0.0001"] if kind == "capture-sampled" else [])]
    else:
        scenario = work / "shadow.yaml"
        scenario.write_text(json.dumps({
            "name": "bench-shadow", "traffic": {"path": str(work / "none.jsonl")},
            "targets": {"baseline": {"url": upstream}, "candidate": {"url": mirror}},
            "replay": {"allow": ["POST /*"], "timeout_s": 2},
            "promotion_gates": {"error_rate": {"maximum": 0.01}}, "analysis": {"bootstrap_resamples": 200}}))
        args = ["shadow", str(scenario), "--listen", f"127.0.0.1:{port}", "--out", str(work / "reports")]
    harness = NO_UVLOOP if kind == "capture-asyncio" else c.HARNESS
    proc = subprocess.Popen([*harness, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=work)
    try:
        c.wait_port(port)
        yield f"http://127.0.0.1:{port}", [proc.pid]
    finally:
        c.stop_process(proc, timeout_s=120)


def pct(values: list[float], q: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of the processes and their children: the live ones, and those that ended (counted in
    their parent's children times once reaped), so that a proxy's helper processes count as its own."""
    return sum(cpu_split(pids))


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """cpu_seconds as (user, system): the kernel's part is the socket calls, which no proxy code avoids."""
    import psutil

    user = system = 0.0
    seen: set[int] = set()
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            t = proc.cpu_times()
            user, system = user + t.children_user, system + t.children_system
            for p in (proc, *proc.children(recursive=True)):
                if p.pid not in seen:
                    seen.add(p.pid)
                    with contextlib.suppress(psutil.NoSuchProcess):
                        c = p.cpu_times()
                        user, system = user + c.user, system + c.system
    return user, system


def own_cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of the processes themselves, without their children."""
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
    return total


def settled(pids: list[int], max_wait_s: float = 30.0) -> None:
    """Waits until the processes stop using CPU: work queued during the load (a shadow recorder that fell
    behind) is the load's too, and counting only what was done within it would flatter a backlog."""
    import time

    last = cpu_seconds(pids)
    deadline = time.monotonic() + max_wait_s
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = cpu_seconds(pids)
        if now - last < 0.01:  # under 5 % of a core over the interval: idle
            return
        last = now


def per_core(url: str, pids: list[int], seconds: int) -> tuple[float, float, float, float]:
    """(wrk's rate, requests per CPU-second, the share of that CPU the processes used themselves rather than
    their children (for harness shadow, the proxy's against its recorder's and snapshots'), the share
    that was kernel time)."""
    (user0, sys0), own_before = cpu_split(pids), own_cpu_seconds(pids)
    rps = c.wrk_rps(url + "/score", duration_s=seconds)
    settled(pids)
    (user1, sys1), own = cpu_split(pids), own_cpu_seconds(pids) - own_before
    used = (user1 - user0) + (sys1 - sys0)
    if used <= 0:
        return rps, float("nan"), float("nan"), float("nan")
    return rps, rps * seconds / used, own / used, (sys1 - sys0) / used


def latency(url: str, rate: float, seconds: float) -> dict[str, float]:
    lat, lag, failed = _open_loop.run(url + "/score", rate=rate, seconds=seconds, body=c.TINY_BODY.encode())
    return {"p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99), "send_lag_p99_ms": pct(lag, 0.99),
            "answered": len(lat), "failed": failed}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="300,1000")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--wrk-seconds", type=int, default=5, help="0: no rate-per-core measurement (latency only)")
    ap.add_argument("--only", default=",".join(PROXIES))
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    c.ensure_apt({"nginx": "nginx-light", "wrk": "wrk"})
    info = c.machine_info()
    c.print_machine(info)
    results: dict[str, Any] = {"machine": info, "rates": rates, "seconds": args.seconds}
    with c.Nginx(ports=2, workers=1) as up, c.scratch_dir("bench-proxy-") as work:
        upstream, mirror = up.urls
        results["direct"] = {"load_before": os.getloadavg()[0], "busy_before": c.wait_quiet(max_wait_s=5)}
        for rate in rates:
            d = results["direct"][f"{rate:g}"] = latency(upstream, rate, args.seconds)
            print(f"direct at {rate:g}/s: p50 {d['p50_ms']:.3f} ms, p99 {d['p99_ms']:.3f} ms "
                  f"(client send lag p99 {d['send_lag_p99_ms']:.3f} ms, {d['failed']} failed)", flush=True)
        for name in args.only.split(","):
            if name in ("nginx", "nginx-mirror"):
                ctx = nginx_proxy(up.ports[0], up.ports[1], mirror=name == "nginx-mirror")
            else:
                ctx = harness_proxy(name, upstream, mirror, work)
            r: dict[str, Any] = {}
            with ctx as (url, pids):
                r["load_before"] = os.getloadavg()[0]
                r["busy_before"] = c.wait_quiet(max_wait_s=5)
                for rate in rates:
                    m = latency(url, rate, args.seconds)
                    direct = results["direct"][f"{rate:g}"]
                    m["added_p50_ms"] = m["p50_ms"] - direct["p50_ms"]
                    m["added_p99_ms"] = m["p99_ms"] - direct["p99_ms"]
                    r[f"{rate:g}"] = m
                    print(f"{name} at {rate:g}/s: added p50 {m['added_p50_ms']:+.3f} ms, p99 {m['added_p99_ms']:+.3f} ms "
                          f"(p99 {m['p99_ms']:.3f} ms; client send lag p99 {m['send_lag_p99_ms']:.3f} ms, "
                          f"{m['failed']} failed)", flush=True)
                if args.wrk_seconds > 0:
                    (r["wrk_rps"], r["requests_per_cpu_second"], r["own_cpu_share"],
                     r["kernel_cpu_share"]) = per_core(url, pids, args.wrk_seconds)
            results[name] = r
            if args.wrk_seconds > 0:
                us = 1e6 / r["requests_per_cpu_second"]
                print(f"{name}: wrk {r['wrk_rps']:,.0f} req/s, {r['requests_per_cpu_second']:,.0f} req per CPU-second "
                      f"({us:.0f} us a request: {us * r['own_cpu_share']:.0f} the proxy's processes, "
                      f"{us * (1 - r['own_cpu_share']):.0f} its children; {us * r['kernel_cpu_share']:.0f} in the kernel) "
                      f"(load average before {r['load_before']:.2f})", flush=True)
    for name in args.only.split(","):
        if name.startswith("nginx"):
            continue
        peer = "nginx-mirror" if name == "shadow" and "nginx-mirror" in results else "nginx"
        if peer in results and args.wrk_seconds > 0:
            ratio = results[name]["requests_per_cpu_second"] / results[peer]["requests_per_cpu_second"]
            results[name]["per_core_vs_" + peer] = ratio
            print(f"{name} / {peer} per core: {ratio:.3f}x", flush=True)
    c.save_result("proxy_overhead", results)


if __name__ == "__main__":
    main()
