"""Buffers rows (legs, events, resource samples) and hands them to sinks in batches, at least every
flush interval.

Sinks run in a native thread of the recorder's own, so that their work does not stall the dispatch loop, at a
lower scheduling priority (nice +SINK_NICE, Linux). In a single-process replay the sinks hand each table to
the store's writer process (harness.store_child), and the thread only waits for its answer: legs sent during
a DuckDB insert in this process (13-35 ms each at 2,000 pairs/s on a busy 2-core machine) were late several
times as often as the others (benchmarks/lag_tail.py), as the insert took the GIL and a core beside the loop.
With --processes and master/worker runs, the sinks are the store's own and insert in this thread.
The Arrow tables are built on the loop (building one from Python objects holds the GIL wherever it runs, and a
worker thread holding the GIL stalls the loop for up to the 5 ms switch interval), in small steps: legs
arrive as tuples in LEG_SCHEMA's order and are sealed into a record batch every seal interval (0.1 s), in
steps of SEAL_CHUNK legs with the send schedule served between them; a flush hands
the sealed batches to the sink as one table. Each DuckDB insert costs the loop a GIL stall of a few ms
whatever its size, so flushes stay at 0.5 s.
A sink that fails keeps its rows for the next flush and is counted: listeners inside Locust's loop
must count their own failures, since Locust swallows exceptions there. A sink's exception with
`rows_written` true (harness.store_child.WrittenByParent: the writer process failed and the rows were
written another way) loses nothing: its rows are recorded, and it is a note of the run, not a failure.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any, Callable, Mapping, Sequence

import gevent
import gevent.lock
import gevent.threadpool
import pyarrow as pa

from .leg import EVENT_SCHEMA, LEG_SCHEMA, RESOURCE_SCHEMA

__all__ = ["Recorder", "Sinks"]

Sink = Callable[[pa.Table], None]
SCHEMAS = {"legs": LEG_SCHEMA, "events": EVENT_SCHEMA, "resources": RESOURCE_SCHEMA}
Sinks = Mapping[str, Sink]
LEG_NAMES = tuple(LEG_SCHEMA.names)
# Tuples converted as one struct array, row by row: a step of 128 legs costs about half of one array per
# column, whose fixed cost (some 7 us each, 38 columns) dominates a step that small (benchmarks/seal_cost.py).
LEG_STRUCT = pa.struct(list(LEG_SCHEMA))
SEAL_INTERVAL_S = 0.1
SEAL_CHUNK = 128  # legs sealed in one step; between steps `pace` lets the send schedule go first
SINK_NICE = 10


class Recorder:
    def __init__(self, sinks: Sinks, flush_interval_s: float = 0.5, use_threadpool: bool = True) -> None:
        self._sinks = dict(sinks)
        self.flush_interval_s = flush_interval_s
        # legs: tuples in LEG_SCHEMA order; events and resources: dicts
        self._buffers: dict[str, list[Any]] = {name: [] for name in SCHEMAS}
        self._sealed: list[pa.RecordBatch] = []  # legs already in Arrow form, waiting for the next flush
        self._pool = gevent.threadpool.ThreadPool(1) if use_threadpool else None  # one thread: batches land in order
        self._flusher: gevent.Greenlet | None = None
        self._flushing = gevent.lock.Semaphore()  # one flush at a time, so batches land in order
        self.recorded = {name: 0 for name in SCHEMAS}
        self.sink_failures = 0
        self.last_sink_error: str | None = None
        self.notes: list[str] = []  # what happened to the recording without losing a row
        self.leg_listeners: list[Callable[[dict[str, Any]], None]] = []
        self.pace: Callable[[], None] | None = None  # the dispatcher's make_way, called between seal steps
        # The first from_pylist imports pandas lazily (about a second): do it now, not mid-replay.
        for schema in SCHEMAS.values():
            pa.Table.from_pylist([], schema=schema)

    @property
    def legs_recorded(self) -> int:
        return self.recorded["legs"]

    def add_leg(self, row: Mapping[str, Any]) -> None:
        """One leg as a mapping of LEG_SCHEMA's columns (missing ones are null)."""
        self.add_leg_values(tuple(row.get(name) for name in LEG_NAMES))

    def add_leg_values(self, values: Sequence[Any]) -> None:
        """One leg as a tuple in LEG_SCHEMA's order (the dispatcher's fast path)."""
        self._buffers["legs"].append(values)
        if self.leg_listeners:
            row = dict(zip(LEG_NAMES, values))
            for listener in self.leg_listeners:
                listener(row)

    def add_leg_table(self, table: pa.Table) -> None:
        """Legs already in Arrow form (LEG_SCHEMA), as workers ship them to the master (leg listeners are not
        called: the master watches workers' counts, not their legs)."""
        try:
            batches = table.cast(LEG_SCHEMA).to_batches()
        except Exception as exc:  # noqa: BLE001 - counted like a sink failure, never raised into Locust's loop
            self.sink_failures += 1
            self.last_sink_error = f"legs from a worker do not fit the schema: {type(exc).__name__}: {exc}"[:500]
            return
        self._sealed.extend(batches)

    def add_events(self, rows: list[dict[str, Any]]) -> None:
        self._buffers["events"].extend(rows)

    def add_resources(self, rows: list[dict[str, Any]]) -> None:
        self._buffers["resources"].extend(rows)

    def add_event(self, kind: str, detail: str) -> None:
        self._buffers["events"].append({"occurred_at": time.time(), "kind": kind, "detail": detail})

    def start(self, offset_s: float = 0.0) -> None:
        """Flushes from `offset_s` on (workers of one replay flush in turn, not all at once)."""
        self._flusher = gevent.spawn_later(offset_s, self._loop)

    def _loop(self) -> None:
        ticks = max(1, round(self.flush_interval_s / SEAL_INTERVAL_S))
        step = self.flush_interval_s / ticks
        while True:
            for _ in range(ticks - 1):
                gevent.sleep(step)
                self._seal_legs()
            gevent.sleep(step)
            self.flush()

    def _seal_legs(self) -> None:
        """Legs buffered so far into record batches, SEAL_CHUNK at a time (legs added meanwhile wait for the
        next seal, so the order of legs is kept)."""
        rows, self._buffers["legs"] = self._buffers["legs"], []
        for start in range(0, len(rows), SEAL_CHUNK):
            if start and self.pace is not None:
                self.pace()
            chunk = rows[start:start + SEAL_CHUNK]
            try:
                self._sealed.append(seal(chunk))
            except Exception as exc:  # noqa: BLE001 - a leg that does not fit the schema: counted, like a sink failure
                self.sink_failures += 1
                self.last_sink_error = f"{type(exc).__name__}: {exc}"[:500]
                self._buffers["legs"][:0] = rows[start:]
                return

    def flush(self) -> None:
        with self._flushing:
            self._flush()

    def _flush(self) -> None:
        self._seal_legs()
        for name, schema in SCHEMAS.items():
            if name == "legs":
                batches, self._sealed = self._sealed, []
                if not batches:
                    continue
                n = sum(b.num_rows for b in batches)
                if self._write(self._sinks[name], pa.Table.from_batches(batches, schema=schema)):
                    self.recorded[name] += n
                else:  # kept, in order, for the next flush
                    self._sealed[:0] = batches
                continue
            rows, self._buffers[name] = self._buffers[name], []
            if not rows:
                continue
            try:
                table = pa.Table.from_pylist(rows, schema=schema)
            except Exception as exc:  # noqa: BLE001
                self.sink_failures += 1
                self.last_sink_error = f"{type(exc).__name__}: {exc}"[:500]
                ok = False
            else:
                ok = self._write(self._sinks[name], table)
            if ok:
                self.recorded[name] += len(rows)
            else:
                self._buffers[name][:0] = rows

    def _write(self, sink: Sink, table: pa.Table) -> bool:
        try:
            if self._pool is not None:
                error = self._pool.apply(_lowered, (sink, table))
                if error is not None:
                    raise error
            else:
                sink(table)
            return True
        except Exception as exc:  # noqa: BLE001 - counted and reported; the rows are kept for the next try
            if getattr(exc, "rows_written", False):  # a sink that failed but wrote its rows another way
                self.notes.append(f"{exc}"[:500])
                return True
            self.sink_failures += 1
            self.last_sink_error = f"{type(exc).__name__}: {exc}"[:500]
            return False

    def stop(self) -> None:
        if self._flusher is not None:
            with self._flushing:  # never kill the flusher in the middle of a write
                self._flusher.kill()
            self._flusher = None
        self.flush()
        if self._pool is not None:
            self._pool.kill()
            self._pool = None


_lowered_threads: set[int] = set()


def seal(legs: Sequence[Sequence[Any]]) -> pa.RecordBatch:
    """Leg tuples (LEG_SCHEMA's order) as one record batch."""
    return pa.RecordBatch.from_struct_array(pa.array(legs, type=LEG_STRUCT))


def _lowered(sink: Sink, table: pa.Table) -> Exception | None:
    """The sink, on a thread whose nice value is raised by SINK_NICE the first time (Linux: the nice value is a
    thread's own; elsewhere it would be the whole process's, so it is left alone). Its error is returned, not
    raised: gevent's pool would print the traceback of a failure the recorder counts and reports."""
    tid = threading.get_native_id()
    if tid not in _lowered_threads and sys.platform == "linux":
        _lowered_threads.add(tid)
        try:
            os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + SINK_NICE))
        except OSError:
            pass
    try:
        sink(table)
    except Exception as exc:  # noqa: BLE001 - raised again in the recorder's greenlet
        return exc
    return None
