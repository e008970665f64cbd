"""Resource sampling of the model servers while a replay runs.

Sources, per target: a PID, a PID file, or (by default) the process listening on the target URL's
port on this machine; a Prometheus /metrics URL (process_resident_memory_bytes, or a named gauge);
GPU memory per PID through NVML where a GPU and the nvidia-ml-py package exist (otherwise noted and
skipped). A changed PID counts as a restart; a process that vanishes with no successor is noted.
"""
from __future__ import annotations

import re
import subprocess
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

__all__ = ["ResourceMonitor", "TargetProcess", "find_listener_pid"]

_PROM_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([-+0-9.eE]+|NaN|\+Inf|-Inf)")


@dataclass
class TargetProcess:
    version: str
    url: str
    pid: int | None = None
    pid_file: Path | None = None
    metrics_url: str | None = None
    metric_name: str = "process_resident_memory_bytes"
    oom_counter: str | None = None  # a counter of the server's own OOM events (e.g. CUDA out of memory)
    # state
    current_pid: int | None = None
    exited_pid: int | None = None  # the watched process that exited, counted once (below)
    restarts: int = 0
    oom_events: int = 0
    last_scan: float = -1e9
    counter_start: float | None = None
    counter_ooms: int = 0
    children: list[psutil.Process] = field(default_factory=list)
    children_at: float = -1e9
    _proc: psutil.Process | None = field(default=None, repr=False)
    # evidence: which sources gave at least one value during the run
    prometheus_seen: bool = False
    gpu_seen: bool = False


def find_listener_pid(url: str) -> int | None:
    """The PID listening on the URL's port on a local address, if this user may see it."""
    parts = urlsplit(url)
    if parts.hostname not in ("127.0.0.1", "localhost", "::1"):
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
                return conn.pid
    except (psutil.AccessDenied, OSError):
        return None
    return None


class ResourceMonitor:
    def __init__(self, targets: list[TargetProcess]) -> None:
        self.targets = targets
        self.notes: list[str] = []
        self._nvml = _Nvml.try_load(self.notes)
        self._kernel_log: bool | None = None

    def _resolve_pid(self, t: TargetProcess) -> int | None:
        if t.pid_file is not None:
            try:
                return int(t.pid_file.read_text().strip())
            except (OSError, ValueError):
                return None
        if t.pid is not None:
            return t.pid
        return find_listener_pid(t.url)

    def _current_pid(self, t: TargetProcess) -> int | None:
        # Scanning sockets for the listener is slow: do it once, and again only when the process is gone.
        if t.pid_file is not None:
            return self._resolve_pid(t)
        if t.current_pid is not None and psutil.pid_exists(t.current_pid):
            return t.current_pid
        if t.pid is None and time.monotonic() - t.last_scan < 5.0:
            return None
        t.last_scan = time.monotonic()
        return self._resolve_pid(t)

    def find_processes(self) -> None:
        """Before the replay: each target's process, its children and the first CPU reading. Found in the
        replay's first sample instead, the socket scan (psutil.net_connections reads every process's file
        descriptors) held the send loop for up to 0.5 s on a busy 2-core machine, the replay's first
        quarter second late by as much."""
        now = time.time()
        for t in self.targets:
            pid = self._current_pid(t)
            if pid is None:
                continue
            try:
                _attach(t, pid, now)
                t.current_pid = pid
            except psutil.Error:
                t._proc = None

    def sample(self) -> list[dict[str, Any]]:
        now = time.time()
        rows: list[dict[str, Any]] = []
        for t in self.targets:
            gone = t.current_pid is not None and not psutil.pid_exists(t.current_pid)
            if gone and t.exited_pid != t.current_pid:
                # The process exited: a restart whether or not anything starts it again (a crashed candidate
                # left with no listener read "restarts: 0" and passed `restarts: {maximum: 0}`). Counted
                # once, at the exit; the PID that replaces it is not counted again.
                t.exited_pid = t.current_pid
                t.restarts += 1
                if _oom_killed(t.current_pid):  # type: ignore[arg-type]
                    t.oom_events += 1
                    self.notes.append(f"{t.version}: process {t.current_pid} was killed by the kernel's OOM killer")
            pid = self._current_pid(t)
            if pid is not None and t.current_pid is not None and pid != t.current_pid and t.exited_pid != t.current_pid:
                t.restarts += 1
            row: dict[str, Any] = {"version": t.version, "sampled_at": now, "pid": pid, "rss_mb": None,
                                   "cpu_percent": None, "gpu_memory_mb": None, "restarts": t.restarts,
                                   "oom_events": t.oom_events, "source": "psutil"}
            if pid is not None:
                try:
                    if t._proc is None or t._proc.pid != pid:
                        proc = _attach(t, pid, now)
                    else:
                        proc = t._proc
                        if now - t.children_at > 10.0:  # refreshed now and then only
                            t.children = _descendants(proc)
                            t.children_at = now
                    with proc.oneshot():
                        rss = proc.memory_info().rss
                        for child in t.children:
                            try:
                                rss += child.memory_info().rss
                            except psutil.Error:
                                pass
                        row["rss_mb"] = rss / 1e6
                        row["cpu_percent"] = proc.cpu_percent(None)
                    t.current_pid = pid
                except psutil.Error:
                    t._proc = None
            if self._nvml is not None and pid is not None:
                row["gpu_memory_mb"] = self._nvml.memory_mb(pid)
                t.gpu_seen = t.gpu_seen or row["gpu_memory_mb"] is not None
            if t.metrics_url:
                values = _scrape(t.metrics_url, (t.metric_name, t.oom_counter))
                t.prometheus_seen = t.prometheus_seen or bool(values)
                if t.oom_counter and values.get(t.oom_counter) is not None:
                    current = values[t.oom_counter]
                    t.counter_start = current if t.counter_start is None else t.counter_start
                    t.counter_ooms = int(current - t.counter_start)
                    row["oom_events"] = t.oom_events + t.counter_ooms
                if values.get(t.metric_name) is not None:
                    rows.append({**row, "rss_mb": values[t.metric_name] / 1e6, "cpu_percent": None,
                                 "source": "prometheus"})
            if row["rss_mb"] is not None or row["gpu_memory_mb"] is not None:
                rows.append(row)
        return rows

    def sources(self) -> dict[str, dict[str, Any]]:
        """Per version, the sources that gave values (None/False where none did): what the resource gates
        may judge on (harness.evidence). The kernel log counts only where this user can read it."""
        if self._kernel_log is None:
            self._kernel_log = _kernel_log_readable()
        out: dict[str, dict[str, Any]] = {}
        for t in self.targets:
            process = None
            if t.current_pid is not None:
                process = (f"PID file {t.pid_file}" if t.pid_file is not None else f"PID {t.pid}" if t.pid is not None
                           else f"the process listening on {t.url} (PID {t.current_pid})")
            out[t.version] = {"process": process, "kernel_log": bool(process and self._kernel_log),
                              "prometheus": t.metrics_url if t.prometheus_seen else None,
                              "oom_counter": t.oom_counter if t.counter_start is not None else None,
                              "nvml": t.gpu_seen}
        return out

    def attached(self) -> dict[str, int | None]:
        return {t.version: t.current_pid for t in self.targets}


def _attach(t: TargetProcess, pid: int, now: float) -> psutil.Process:
    """The target's process (a new one after a restart), its first CPU reading and its children."""
    proc = t._proc = psutil.Process(pid)
    proc.cpu_percent(None)
    t.children = _descendants(proc)
    t.children_at = now
    return proc


def _descendants(proc: psutil.Process) -> list[psutil.Process]:
    """The process's descendants. Linux lists each thread's children in /proc/PID/task/TID/children: a few
    small reads, where psutil's children() reads the parent of every process on the machine (2 ms with 100
    processes, on the replay's loop). Elsewhere, or where those files are missing: psutil."""
    try:
        found: list[psutil.Process] = []
        todo = [proc.pid]
        while todo:
            pid = todo.pop()
            for task in Path(f"/proc/{pid}/task").iterdir():
                for child in (task / "children").read_text().split():
                    todo.append(int(child))
                    found.append(psutil.Process(int(child)))
        return found
    except (OSError, ValueError, psutil.Error):
        try:
            return proc.children(recursive=True)
        except psutil.Error:
            return []


def _scrape(url: str, names: tuple[str | None, ...]) -> dict[str, float]:
    """Values of the named metrics (summed over their label sets) from a Prometheus text endpoint."""
    wanted = {n for n in names if n}
    try:
        with urllib.request.urlopen(url, timeout=1.0) as resp:  # noqa: S310 - the scenario's own metrics URL
            text = resp.read(2_000_000).decode("utf-8", "replace")
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = _PROM_LINE.match(line)
        if m and m.group(1) in wanted:
            try:
                out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
            except ValueError:
                continue
    return out


def _kernel_log_readable() -> bool:
    """Whether `dmesg` works for this user: without it an OOM kill cannot be seen."""
    try:
        return subprocess.run(["dmesg"], capture_output=True, timeout=2).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _oom_killed(pid: int) -> bool:
    """Whether the kernel log (where this user may read it) says the OOM killer killed this PID."""
    try:
        out = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=2)
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(re.search(rf"(Killed process|oom-kill:.*pid=){pid}\b", out.stdout))


class _Nvml:
    """GPU memory per process through NVML (package nvidia-ml-py), when present."""

    def __init__(self, pynvml: Any) -> None:
        self.nv = pynvml
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]

    @classmethod
    def try_load(cls, notes: list[str]) -> "_Nvml | None":
        try:
            import pynvml  # type: ignore[import-not-found]
        except ImportError:
            notes.append("GPU memory not sampled: nvidia-ml-py is not installed (pip install 'harness[gpu]')")
            return None
        try:
            pynvml.nvmlInit()
            return cls(pynvml)
        except Exception as exc:  # noqa: BLE001 - no GPU, no driver or no package: GPU sampling is skipped
            notes.append(f"GPU memory not sampled: {type(exc).__name__}: {str(exc)[:120] or 'NVML unavailable'}")
            return None

    def memory_mb(self, pid: int) -> float | None:
        pids = {pid}
        try:
            pids |= {c.pid for c in psutil.Process(pid).children(recursive=True)}
        except psutil.Error:
            pass
        total = 0
        found = False
        for h in self.handles:
            for fn in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                try:
                    procs = getattr(self.nv, fn)(h)
                except Exception:  # noqa: BLE001 - older drivers lack one of the calls
                    continue
                for p in procs:
                    if p.pid in pids and p.usedGpuMemory is not None:
                        total += p.usedGpuMemory
                        found = True
        return total / 1e6 if found else None
