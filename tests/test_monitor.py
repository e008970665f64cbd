"""Resource sampling of real processes: psutil by the listening port, restarts, Prometheus gauges and a
configured OOM counter."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psutil
import pytest

from harness.demo.launcher import start_server
from harness.monitor import ResourceMonitor, TargetProcess, find_listener_pid

pytestmark = pytest.mark.integration


class Metrics:
    def __init__(self) -> None:
        self.ooms = 0
        metrics = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (f"# TYPE process_resident_memory_bytes gauge\nprocess_resident_memory_bytes 123456789\n"
                        f'cuda_oom_total{{device="0"}} {metrics.ooms}\ncuda_oom_total{{device="1"}} 0\n').encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_listener_pid_rss_and_restart() -> None:
    server = start_server("baseline")
    try:
        assert find_listener_pid(server.url) == server.proc.pid
        mon = ResourceMonitor([TargetProcess("baseline", server.url)])
        (row,) = mon.sample()
        assert row["pid"] == server.proc.pid
        assert abs(row["rss_mb"] - psutil.Process(server.proc.pid).memory_info().rss / 1e6) < 20
        port = server.port
        server.stop()
        server = start_server("baseline", port=port)
        mon.targets[0].last_scan = -1e9
        rows = mon.sample()
        assert rows[0]["pid"] == server.proc.pid and rows[0]["restarts"] == 1
    finally:
        server.stop()


def test_a_process_that_exits_and_stays_gone_is_a_restart_counted_once() -> None:
    """A crashed candidate that nothing starts again: its PID vanished, no new listener appeared, and the
    monitor said "restarts: 0", so `restarts: {maximum: 0}` passed a server that died mid-run (66 % of its
    requests failed to connect, PROMOTE). Its exit is counted once, however many samples follow, and the
    process is still the evidence named."""
    server = start_server("baseline")
    try:
        mon = ResourceMonitor([TargetProcess("baseline", server.url)])
        (row,) = mon.sample()
        assert row["restarts"] == 0
    finally:
        server.stop()
    for _ in range(3):
        mon.targets[0].last_scan = -1e9
        mon.sample()
    assert mon.targets[0].restarts == 1
    assert mon.sources()["baseline"]["process"]


def test_processes_are_found_before_the_first_sample() -> None:
    server = start_server("baseline")
    try:
        mon = ResourceMonitor([TargetProcess("baseline", server.url)])
        mon.find_processes()
        t = mon.targets[0]
        assert t.current_pid == server.proc.pid and t._proc is not None and t._proc.pid == server.proc.pid
        scanned_at = t.last_scan
        (row,) = mon.sample()
        assert t.last_scan == scanned_at  # the first sample scans no sockets
        assert row["pid"] == server.proc.pid and row["restarts"] == 0 and row["cpu_percent"] is not None
    finally:
        server.stop()


def test_prometheus_gauge_and_oom_counter() -> None:
    m = Metrics()
    try:
        t = TargetProcess("candidate", "http://127.0.0.1:1", metrics_url=m.url, oom_counter="cuda_oom_total")
        mon = ResourceMonitor([t])
        first = [r for r in mon.sample() if r["source"] == "prometheus"]
        assert first[0]["rss_mb"] == 123.456789 and first[0]["oom_events"] == 0
        m.ooms = 2
        later = [r for r in mon.sample() if r["source"] == "prometheus"]
        assert later[0]["oom_events"] == 2  # counted from the first scrape, summed over devices
    finally:
        m.server.shutdown()
        m.server.server_close()


def test_descendants_are_the_whole_process_tree() -> None:
    import subprocess
    import sys
    import time

    from harness.monitor import _descendants

    tree = ("import subprocess, sys, time; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)']); time.sleep(30)")
    kids = [subprocess.Popen([sys.executable, "-c", tree]) for _ in range(2)]
    try:
        me = psutil.Process()
        deadline = time.monotonic() + 20
        while len(me.children(recursive=True)) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        expected = sorted(c.pid for c in me.children(recursive=True))
        assert len(expected) == 4  # two children, each with one of its own
        assert sorted(c.pid for c in _descendants(me)) == expected
    finally:
        for k in kids:
            for c in psutil.Process(k.pid).children(recursive=True):
                c.kill()
            k.kill()
            k.wait()
