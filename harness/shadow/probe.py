"""A diagnostic probe of the shadow proxy's event loop, for benchmarks only: with HARNESS_SHADOW_PROBE=FILE in
the environment, `harness shadow` measures what holds its serving loop and writes it to FILE (JSON) at the
end. Off (the default) it costs nothing: nothing is wrapped and no timer runs.

What it measures: the loop's lag (a timer every `tick_s`, how late it fires: what a request arriving then
waited), the garbage collector's pauses per generation (gc.callbacks), and the time (wall and CPU) of each
hand-over to the recorder and of each hook call (the instance's methods are wrapped, the classes are left alone).
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import time
from typing import Any, Callable

__all__ = ["Probe", "ENV"]

ENV = "HARNESS_SHADOW_PROBE"


def _summary(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    v = sorted(values)
    n = len(v)
    return {"n": n, "p50_ms": v[n // 2] * 1e3, "p99_ms": v[min(n - 1, int(n * 0.99))] * 1e3,
            "p999_ms": v[min(n - 1, int(n * 0.999))] * 1e3, "max_ms": v[-1] * 1e3,
            "over_1ms": sum(1 for x in v if x > 1e-3), "total_ms": sum(v) * 1e3}


class Probe:
    def __init__(self, path: str, tick_s: float = 0.002) -> None:
        self.path, self.tick_s = path, tick_s
        self.lag: list[float] = []
        self.timed: dict[str, list[float]] = {}
        self.gc: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self._gc_at = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None

    @classmethod
    def from_env(cls) -> "Probe | None":
        path = os.environ.get(ENV)
        return cls(path) if path else None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        gc.callbacks.append(self._on_gc)
        self._arm()

    def wrap(self, obj: Any, name: str) -> None:
        """Times every call of obj.name (an instance attribute shadows the method)."""
        fn: Callable[..., Any] = getattr(obj, name)
        out = self.timed.setdefault(f"{type(obj).__name__}.{name}", [])
        cpu = self.timed.setdefault(f"{type(obj).__name__}.{name} (CPU)", [])

        def timed(*args: Any) -> Any:
            t, c = time.perf_counter(), time.thread_time()
            try:
                return fn(*args)
            finally:
                out.append(time.perf_counter() - t)
                cpu.append(time.thread_time() - c)

        setattr(obj, name, timed)

    def _arm(self) -> None:
        assert self._loop is not None
        self._due = time.perf_counter() + self.tick_s
        self._timer = self._loop.call_later(self.tick_s, self._tick)

    def _tick(self) -> None:
        self.lag.append(max(0.0, time.perf_counter() - self._due))
        self._arm()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._gc_at = time.perf_counter()
        else:
            self.gc[info["generation"]].append(time.perf_counter() - self._gc_at)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        out = {"loop_lag": _summary(self.lag), "gc": {f"gen{g}": _summary(v) for g, v in self.gc.items()},
               "calls": {k: _summary(v) for k, v in self.timed.items()},
               "gc_threshold": gc.get_threshold(), "gc_frozen": gc.get_freeze_count()}
        with open(self.path, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
