"""Shared pieces of the benchmark scripts: prerequisites, local targets, captures, scenarios, runs, memory.

Everything here binds to 127.0.0.1 only, and every server it starts is stopped by the context manager
that started it (also on Ctrl-C). Nothing here is part of the harness package.
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

ROOT = Path(__file__).resolve().parents[1]
_VENV_PY = ROOT / ".venv" / "bin" / "python"
PY = str(_VENV_PY) if _VENV_PY.exists() else sys.executable
HARNESS = [PY, "-m", "harness"]
LOCUST = [PY, "-m", "locust"]
OUT_ROOT = ROOT / "benchmarks" / "out"  # ignored by git

TINY_BODY = '{"inputs":[1,2,3]}'
TINY_ANSWER = '{"prediction":"ok","confidence":0.9}'


# ---------------------------------------------------------------------------------------------- prerequisites
_apt_updated = False


def ensure_apt(binaries: dict[str, str]) -> None:
    """Install the Debian packages that provide the missing binaries ({binary: package}); idempotent."""
    global _apt_updated
    missing = sorted({pkg for binary, pkg in binaries.items() if shutil.which(binary) is None})
    if not missing:
        return
    if os.geteuid() != 0:
        sys.exit(f"missing {', '.join(missing)}: install them (apt-get install {' '.join(missing)}) or run as root")
    print(f"[setup] apt-get install {' '.join(missing)}", flush=True)
    if not _apt_updated:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        _apt_updated = True
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, stdout=subprocess.DEVNULL)
    # Debian's postinst may start the packaged nginx on port 80; that one is not ours to keep.
    if "nginx-light" in missing or "nginx" in missing:
        subprocess.run(["nginx", "-s", "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def ensure_py(modules: dict[str, str]) -> None:
    """pip-install missing Python modules ({module: pip name}) into the harness venv."""
    import importlib.util

    missing = [pip for mod, pip in modules.items() if importlib.util.find_spec(mod) is None]
    if missing:
        subprocess.run([PY, "-m", "pip", "install", "-q", *missing], check=True)


# ---------------------------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    model = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = subprocess.run([PY, "-c", "import locust, duckdb, gevent, geventhttpclient, numpy; "
                               "print(locust.__version__, duckdb.__version__, gevent.__version__, "
                               "geventhttpclient.__version__, numpy.__version__)"],
                              capture_output=True, text=True).stdout.split()
    return {"date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "nproc": os.cpu_count(),
            "cpu_model": model, "mem_gb": round(mem_gb, 1), "loadavg_at_start": os.getloadavg(),
            "python": platform.python_version(),
            "locust/duckdb/gevent/geventhttpclient/numpy": " ".join(versions)}


def print_machine(info: dict[str, Any]) -> None:
    print(f"machine: nproc={info['nproc']} cpu='{info['cpu_model']}' mem={info['mem_gb']} GB "
          f"load(1/5/15m)={tuple(round(x, 2) for x in info['loadavg_at_start'])} python {info['python']} "
          f"(locust/duckdb/gevent/ghc/numpy {info['locust/duckdb/gevent/geventhttpclient/numpy']}) {info['date_utc']}",
          flush=True)


def save_result(name: str, result: dict[str, Any]) -> Path:
    OUT_ROOT.mkdir(parents=True, exist_ok=True)
    path = OUT_ROOT / f"{name}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"results written to {path.relative_to(ROOT)}", flush=True)
    return path


def cpu_busy(interval_s: float = 1.0) -> float:
    """Fraction of all CPUs busy (any process) over interval_s, from /proc/stat."""
    a = cpu_counters()
    time.sleep(interval_s)
    return cpu_shares(a, cpu_counters())["busy"]


def cpu_counters() -> list[int]:
    """All CPUs' time counters (/proc/stat's first line: user, nice, system, idle, iowait, irq, softirq, steal)."""
    return [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]


def cpu_shares(a: list[int], b: list[int]) -> dict[str, float]:
    """Between two cpu_counters() readings: the share of all CPUs' time busy and stolen (by the hypervisor:
    time this guest was ready to run and did not)."""
    d = [y - x for x, y in zip(a, b)]
    total = max(sum(d[:8]), 1)
    return {"busy": round(1 - (d[3] + d[4]) / total, 3), "steal": round(d[7] / total, 4) if len(d) > 7 else 0.0}


def load_now(interval_s: float = 1.0) -> dict[str, float]:
    """The 1-minute load average, and the share of all CPUs' time busy and stolen over interval_s."""
    a = cpu_counters()
    time.sleep(interval_s)
    return {"loadavg_1m": round(os.getloadavg()[0], 2), **cpu_shares(a, cpu_counters())}


_BURNER = """
import os, sys, time
share, period = float(sys.argv[1]), 0.01
while True:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < share * period:
        pass
    time.sleep(max(period - (time.perf_counter() - t0), 0.0))
"""


@contextlib.contextmanager
def background_load(share: float) -> Iterator[None]:
    """A process that keeps `share` of one core busy (busy `share` of every 10 ms, asleep the rest) for the
    whole block, not pinned: the other work of a shared machine, the same for the harness and its peers.
    share 0: nothing started."""
    if share <= 0:
        yield
        return
    proc = subprocess.Popen([PY, "-c", _BURNER, str(share)], start_new_session=True)
    try:
        yield
    finally:
        stop_process(proc, timeout_s=5)


def wait_quiet(max_busy: float = 0.25, max_wait_s: float = 90.0) -> float:
    """Wait (at most max_wait_s) until the machine is at most max_busy busy for 2 s in a row, since it is
    shared; returns the last busy fraction seen, which the caller records next to its figures."""
    deadline = time.monotonic() + max_wait_s
    busy = cpu_busy()
    while time.monotonic() < deadline:
        nxt = cpu_busy()
        if busy <= max_busy and nxt <= max_busy:
            return nxt
        busy = nxt
    return busy


# ---------------------------------------------------------------------------------------------- network
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout_s} s")


def start_nginx(d: Path, workers: int, http: str) -> subprocess.Popen[bytes]:
    """nginx in the foreground with everything it writes under `d`, keep-alive without limits, no access log;
    `http` is the rest of its http block (upstreams, servers)."""
    conf = f"""
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
    keepalive_requests 100000000; keepalive_timeout 120s;
    {http}
}}
"""
    (d / "nginx.conf").write_text(conf)
    return subprocess.Popen(["nginx", "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off;"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                            preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the benchmark dies, even by SIGKILL (a `flock -w` or CI timeout),
    so that no nginx is left serving on a shared machine (Linux's PR_SET_PDEATHSIG; elsewhere nothing)."""
    try:
        import ctypes  # noqa: PLC0415 - only in the child, between fork and exec

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


class Nginx:
    """nginx from Debian, one worker, answering every method on every path with a small JSON body
    (a `return 200` location: POST to a static file would be 405). One server block per port."""

    def __init__(self, ports: int = 2, workers: int = 1, tls: bool = False) -> None:
        self.ports = [free_port() for _ in range(ports)]
        self.workers = workers
        self.tls = tls  # https on every port, with a certificate for 127.0.0.1 from a CA made here (`ca_file`)
        self.dir = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
        self.ca_file: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def urls(self) -> list[str]:
        return [f"{'https' if self.tls else 'http'}://127.0.0.1:{p}" for p in self.ports]

    def __enter__(self) -> "Nginx":
        ensure_apt({"nginx": "nginx-light"})
        os.chmod(self.dir, 0o755)
        ssl_conf = ""
        if self.tls:
            sys.path.insert(0, str(ROOT / "tests"))
            from stacks import make_pki  # the tests' CA and certificates (needs the [test] extra)

            (self.dir / "pki").mkdir()
            pki = make_pki(self.dir / "pki")
            self.ca_file = pki["ca"]
            ssl_conf = (f"ssl_certificate {pki['server']}; ssl_certificate_key {pki['server_key']}; "
                        "ssl_session_cache shared:SSL:1m;")
        servers = "\n".join(f"""
    server {{
        listen 127.0.0.1:{p} backlog=4096{' ssl' if self.tls else ''};
        {ssl_conf}
        location / {{ default_type application/json; return 200 '{TINY_ANSWER}'; }}
    }}""" for p in self.ports)
        self.proc = start_nginx(self.dir, self.workers, servers)
        for p in self.ports:
            wait_port(p)
        return self

    def worker_pids(self) -> list[int]:
        import psutil

        assert self.proc is not None
        return [c.pid for c in psutil.Process(self.proc.pid).children()]

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            for pid in self.worker_pids() if self.proc.poll() is None else []:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)  # a stopped worker cannot exit
            stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def stop_process(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------- wrk and locust
def wrk_rps(url: str, *, threads: int = 1, connections: int = 50, duration_s: int = 5, post: bool = True) -> float:
    ensure_apt({"wrk": "wrk"})
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        if post:
            f.write(f'wrk.method = "POST"\nwrk.body = \'{TINY_BODY}\'\n'
                    'wrk.headers["Content-Type"] = "application/json"\n')
        script = f.name
    try:
        out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration_s}s", "-s", script, url],
                             capture_output=True, text=True, timeout=duration_s + 30).stdout
    finally:
        os.unlink(script)
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError(f"wrk printed no rate:\n{out}")
    return float(m.group(1))


LOCUSTFILE = """
from locust import FastHttpUser, constant, task

BODY = %r


class RawPost(FastHttpUser):
    wait_time = constant(0)

    @task
    def post(self):
        self.client.post("/score", data=BODY, headers={"Content-Type": "application/json"})
"""


def locust_fast_rps(url: str, *, users: int = 50, duration_s: int = 8, processes: int = 0) -> dict[str, float]:
    """Raw Locust FastHttpUser, closed loop with no wait (Locust's own maximum), POSTing the same tiny
    JSON body as the harness. Rate = requests / (last request - first request) from Locust's JSON stats."""
    with tempfile.TemporaryDirectory(prefix="bench-locust-") as d:
        lf = Path(d) / "locustfile.py"
        lf.write_text(LOCUSTFILE % TINY_BODY)
        cmd = [*LOCUST, "-f", str(lf), "--headless", "-u", str(users), "-r", str(users * 100), "-t", f"{duration_s}s",
               "--host", url, "--json-file", str(Path(d) / "stats"), "--only-summary", "--loglevel", "ERROR",
               "--stop-timeout", "2"]
        if processes:
            cmd += ["--processes", str(processes)]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, cwd=d)
        try:
            stats = json.loads((Path(d) / "stats.json").read_text())
        except (OSError, ValueError):
            raise RuntimeError(f"locust wrote no JSON stats (rc {res.returncode}):\n{res.stdout[-2000:]}\n"
                               f"{res.stderr[-2000:]}") from None
    n = sum(s["num_requests"] for s in stats)
    fails = sum(s["num_failures"] for s in stats)
    t0 = min(s["start_time"] for s in stats)
    t1 = max(s["last_request_timestamp"] for s in stats)
    return {"requests": n, "failures": fails, "rps": n / max(t1 - t0, 1e-9)}


# ---------------------------------------------------------------------------------------------- captures, scenarios
def write_capture(path: Path, n: int, rate_per_s: float, *, method: str = "POST", url_path: str = "/score",
                  body: str = TINY_BODY, t0: float = 1_800_000_000.0, tenants: int = 0) -> Path:
    """n JSONL capture records, evenly spaced at 1/rate, each a POST with a tiny JSON body."""
    gap = 1.0 / rate_per_s
    head = f'","method":"{method}","path":"{url_path}","headers":{{"Content-Type":"application/json"'
    with open(path, "w", buffering=1 << 20) as f:
        chunk: list[str] = []
        for i in range(n):
            tenant = f',"X-Tenant":"t{i % tenants}"' if tenants else ""
            chunk.append(f'{{"ts":{t0 + i * gap:.6f}{head[1:]}{tenant}}},"body":{body}}}\n')
            if len(chunk) >= 10_000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))
    return path


def write_scenario(path: Path, capture: Path, baseline_url: str, candidate_url: str, *, name: str = "bench",
                   speed: float = 1.0, replay: dict[str, Any] | None = None, segments: str = "",
                   gates: str = "  error_rate: {maximum: 0.01}\n", ca_file: Path | None = None) -> Path:
    rep = {"mode": "paired", "timeout_s": 2, "allow": ["POST /*"], **(replay or {})}
    tls = f", tls: {{ca_file: {json.dumps(str(ca_file))}}}" if ca_file else ""
    rep_lines = "".join(f"  {k}: {json.dumps(v)}\n" for k, v in rep.items())
    path.write_text(f"""name: {name}
traffic:
  path: {capture}
  speed: {speed}
  on_bad_record: skip
{segments}targets:
  baseline:  {{url: "{baseline_url}", protocol: json{tls}}}
  candidate: {{url: "{candidate_url}", protocol: json{tls}}}
replay:
{rep_lines}promotion_gates:
{gates}""")
    return path


@dataclass
class HarnessRun:
    rc: int
    run_dir: Path | None
    wall_s: float
    output: str
    peak_rss_mb: float | None = None
    rss_samples: list[tuple[float, float]] = field(default_factory=list)  # (s since rss_t0, MB)
    rss_t0: float = 0.0  # time.monotonic() of the first RSS sample


def run_harness(args: Sequence[str], *, out: Path, timeout_s: float, measure_rss: bool = False,
                on_line: Any = None, taskset: str | None = None, nice: int = 0) -> HarnessRun:
    """`harness <args> --out OUT`, output captured; the run folder is the one it created under OUT."""
    before = set(out.iterdir()) if out.exists() else set()
    cmd = [*HARNESS, *args, "--out", str(out)]
    if taskset:
        cmd = ["taskset", "-c", taskset, *cmd]
    if nice:
        cmd = ["nice", "-n", str(nice), *cmd]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                            start_new_session=True)
    sampler = TreeRSS(proc.pid) if measure_rss else None
    if sampler:
        sampler.start()
    lines: list[str] = []
    killer = threading.Timer(timeout_s, lambda: os.killpg(proc.pid, signal.SIGTERM))
    killer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line, proc)
        rc = proc.wait()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait()
        raise
    finally:
        killer.cancel()
        if sampler:
            sampler.stop()
    wall = time.perf_counter() - t0
    new = sorted(set(out.iterdir()) - before) if out.exists() else []
    return HarnessRun(rc=rc, run_dir=new[-1] if new else None, wall_s=wall, output="".join(lines),
                      peak_rss_mb=sampler.peak_mb if sampler else None,
                      rss_samples=sampler.samples if sampler else [], rss_t0=sampler.t0 if sampler else 0.0)


class TreeRSS(threading.Thread):
    """Polls the summed RSS of a process and all its descendants; keeps the peak."""

    def __init__(self, pid: int, every_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.peak_mb = 0.0
        self.samples: list[tuple[float, float]] = []
        self.t0 = time.monotonic()
        self._stop_evt = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        t0 = self.t0
        while not self._stop_evt.is_set():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                    total += p.memory_info().rss
            mb = total / 2**20
            self.peak_mb = max(self.peak_mb, mb)
            self.samples.append((round(time.monotonic() - t0, 2), round(mb, 1)))
            self._stop_evt.wait(self.every_s)

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(5)


def query(run_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    import duckdb

    con = duckdb.connect(str(run_dir / "results.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
