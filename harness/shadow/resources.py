"""The model servers' resources during a live shadow, sampled as a replay samples them (harness.monitor:
memory, CPU, GPU memory, restarts, OOM kills and counters, from the process listening on each target's
port, its PID or PID file, its metrics URL). Without them every resource gate of a shadow run was
inconclusive, so a scenario with one (`gpu_oom_events`, `memory_growth_mb`) could only HOLD.

Every `every_s` one sample, taken in a worker thread (psutil's reads and the metrics endpoint's answer must
not hold the serving loop), is appended as JSON lines to a spool, one write a sample; the run folder's
`resources` table is made from the spool's whole lines, at the end and for each snapshot.
"""
from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa

from ..monitor import ResourceMonitor
from ..replay.leg import RESOURCE_SCHEMA
from .results import spool_table

__all__ = ["ResourceSpool", "read_resources"]


class ResourceSpool:
    def __init__(self, monitor: ResourceMonitor, path: Path, every_s: float = 0.5) -> None:
        self.monitor, self.path, self.every_s = monitor, path, every_s
        # one sample at a time: a cancelled run() leaves its worker thread sampling while the last one starts
        self._lock = threading.Lock()

    async def run(self) -> None:
        """Samples until cancelled."""
        while True:
            await asyncio.to_thread(self.sample)
            await asyncio.sleep(self.every_s)

    def sample(self) -> None:
        """One sample appended; one that fails (a metrics endpoint restarting mid-answer) is a note of the run,
        and sampling goes on."""
        with self._lock:
            try:
                self._append(self.monitor.sample())
            except Exception as exc:  # noqa: BLE001 - a sample lost must not end the sampling or the run
                if len(self.monitor.notes) < 20:
                    self.monitor.notes.append(f"a resource sample failed: {type(exc).__name__}: {exc}"[:300])

    def _append(self, rows: list[dict[str, Any]]) -> None:
        if rows:
            data = b"".join(orjson.dumps(r, option=orjson.OPT_APPEND_NEWLINE) for r in rows)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)

    def events(self) -> list[tuple[str, str]]:
        """The events a replay records beside its samples: the monitor's notes, and which sources gave values
        (what the resource gates may judge on, harness.evidence)."""
        with self._lock:
            return [*(("note", n) for n in self.monitor.notes),
                    ("resource_sources", json.dumps(self.monitor.sources()))]


def read_resources(path: Path) -> pa.Table:
    """The spool's whole lines as a `resources` table (none yet: an empty one)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        data = b""
    return spool_table(data[: data.rfind(b"\n") + 1], RESOURCE_SCHEMA)  # a sample being appended: the next read's
