"""Buffers rows (legs, events, resource samples) and hands them to sinks in batches, at least every
flush interval.

Sinks run in gevent's native thread pool so that DuckDB's work does not stall the dispatch loop.
A sink that fails keeps its rows for the next flush and is counted: listeners inside Locust's loop
must count their own failures, since Locust swallows exceptions there.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping

import gevent
import gevent.lock
import pyarrow as pa

from .leg import EVENT_SCHEMA, LEG_SCHEMA, RESOURCE_SCHEMA

__all__ = ["Recorder", "Sinks"]

Sink = Callable[[pa.Table], None]
SCHEMAS = {"legs": LEG_SCHEMA, "events": EVENT_SCHEMA, "resources": RESOURCE_SCHEMA}
Sinks = Mapping[str, Sink]


class Recorder:
    def __init__(self, sinks: Sinks, flush_interval_s: float = 0.5, use_threadpool: bool = True) -> None:
        self._sinks = dict(sinks)
        self.flush_interval_s = flush_interval_s
        self._buffers: dict[str, list[dict[str, Any]]] = {name: [] for name in SCHEMAS}
        self._use_threadpool = use_threadpool
        self._flusher: gevent.Greenlet | None = None
        self._flushing = gevent.lock.Semaphore()  # one flush at a time, so batches land in order
        self.recorded = {name: 0 for name in SCHEMAS}
        self.sink_failures = 0
        self.last_sink_error: str | None = None
        self.leg_listeners: list[Callable[[dict[str, Any]], None]] = []
        # The first from_pylist imports pandas lazily (about a second): do it now, not mid-replay.
        for schema in SCHEMAS.values():
            pa.Table.from_pylist([], schema=schema)

    @property
    def legs_recorded(self) -> int:
        return self.recorded["legs"]

    def add_leg(self, row: dict[str, Any]) -> None:
        self._buffers["legs"].append(row)
        for listener in self.leg_listeners:
            listener(row)

    def add_resources(self, rows: list[dict[str, Any]]) -> None:
        self._buffers["resources"].extend(rows)

    def add_event(self, kind: str, detail: str) -> None:
        self._buffers["events"].append({"at": time.time(), "kind": kind, "detail": detail})

    def start(self) -> None:
        self._flusher = gevent.spawn(self._loop)

    def _loop(self) -> None:
        while True:
            gevent.sleep(self.flush_interval_s)
            self.flush()

    def flush(self) -> None:
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        for name, schema in SCHEMAS.items():
            rows, self._buffers[name] = self._buffers[name], []
            if not rows:
                continue
            if self._write(self._sinks[name], rows, schema):
                self.recorded[name] += len(rows)
            else:
                self._buffers[name][:0] = rows

    def _write(self, sink: Sink, rows: list[dict[str, Any]], schema: pa.Schema) -> bool:
        try:
            table = pa.Table.from_pylist(rows, schema=schema)
            if self._use_threadpool:
                gevent.get_hub().threadpool.apply(sink, (table,))
            else:
                sink(table)
            return True
        except Exception as exc:  # noqa: BLE001 - counted and reported; the rows are kept for the next try
            self.sink_failures += 1
            self.last_sink_error = f"{type(exc).__name__}: {exc}"[:500]
            return False

    def stop(self) -> None:
        if self._flusher is not None:
            with self._flushing:  # never kill the flusher in the middle of a write
                self._flusher.kill()
            self._flusher = None
        self.flush()
