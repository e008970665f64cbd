"""Rotating capture files, written off the request path.

`CaptureWriter.put(item)` never blocks: it appends the item to a bounded queue (full: the item is
dropped and counted) that a writer thread drains every `poll_s` (5 ms). Polling rather than waking the
thread for each item spares the serving loop a thread wake-up (a futex call and a GIL hand-over) per
request. The thread turns items into capture records (a `to_records` callable: redaction and
serialisation cost CPU, which the serving loop should not pay), buffers their lines and appends them at
least every `flush_s` (0.5 s): one killed process loses at most the last flush interval, well under the
one second promised.

The thread never gives the GIL up on its own between items: each explicit hand-over (a `sleep(0)`)
costs both threads a wake-up, which at full load was 15-20 us of CPU a request through `harness
capture` (docs/benchmarks.md). The serving loop releases the GIL whenever it polls its sockets, and
the interpreter's switch interval (5 ms) bounds how long the thread can keep it; the short poll keeps
each batch small at steady rates (at 1,000 requests/s, about 5 items, well under a millisecond).

`inline=True` is for a process whose only job is writing (the shadow recorder, harness/shadow/recorder.py):
`put` converts the item at once in the caller's thread and appends when a flush is due, and a thread
only wakes every `flush_s` to append what an idle caller left. A writer thread there cost a GIL
hand-over and a wake-up every poll, and the records' work was no cheaper for being on another thread.

A `.gz` file is a series of complete gzip members, one per flush, each appended with one write call:
gzip readers read concatenated members as one stream. A kill can still stop a write part-way (the kernel
checks for a fatal signal between the pages it copies), leaving the file inside a member or a line: the
readers keep every whole record before it and report the rest as one bad record, and the next writer of
the pattern cuts that tail off before it starts (mend.py). A file that exists already is never appended
to: the writer picks the next free name (`-1`, `-2`, ...).

Rotation: the output pattern goes through strftime (UTC) at each flush, so `%Y%m%dT%H` starts a new
file every hour; `rotate_bytes` starts a new one when the current file has reached that size.

A write that fails (disk full, folder removed) prints one error line and stops the capture for good (a
short write is cut back to the last whole flush first, so the file still ends on a whole record);
items put after that are counted as dropped, and serving goes on.
"""
from __future__ import annotations

import errno
import gzip
import os
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, TextIO

import orjson

from .mend import EXTENSIONS, hold, mend_last_file

__all__ = ["CaptureWriter", "WriterStats"]

_STOP = object()
_DUMPS = orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE
# Level 1: on the sample capture's 3 kB records it took about 7x less CPU than level 6 for files about
# 25 % larger (2.9x against 3.6x smaller than the JSONL); the proxy's CPU is the scarcer of the two.
_GZIP_LEVEL = 1


@dataclass
class _Barrier:
    done: threading.Event
    result: list[Any]


@dataclass
class WriterStats:
    records_written: int = 0
    files: list[str] = field(default_factory=list)
    dropped: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def drop(self, reason: str, n: int = 1) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n


class CaptureWriter:
    def __init__(self, pattern: str, to_records: Callable[[Any], Iterable[dict[str, Any]]], *,
                 rotate_bytes: int | None = None, flush_s: float = 0.5, max_queue: int = 100_000,
                 poll_s: float = 0.005, stderr: TextIO | None = None,
                 clock: Callable[[], float] = time.time, inline: bool = False) -> None:
        self.pattern = pattern
        self.gzip = pattern.endswith(".gz")
        self.rotate_bytes = rotate_bytes
        self.flush_s = flush_s
        self.stats = WriterStats()
        self._to_records = to_records
        self._queue: deque[Any] = deque()
        self._max_queue = max_queue
        self._poll_s = min(poll_s, flush_s)
        self._stderr = stderr or sys.stderr
        self._clock = clock
        self._fd: int | None = None
        self._name: str | None = None  # the pattern's expansion the open file belongs to
        self._size = 0
        self._inline = inline
        self._lock = threading.Lock()  # inline: the caller's puts against the idle flusher
        self._lines: list[bytes] = []  # inline: converted, not appended yet
        self._next_flush = clock() + flush_s
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._mend_then, args=(self._idle_flusher if inline else self._run,),
                                        name="capture-writer", daemon=True)
        self._thread.start()

    def _mend_then(self, loop: Callable[[], None]) -> None:
        # on the writer's thread, not in the caller's start-up: mending reads the newest file whole (an hour
        # of capture without --rotate-mb), and a proxy must not wait for that to listen; puts queue meanwhile
        mended = mend_last_file(self.pattern)
        if mended is not None:
            print(f"harness capture: {mended}", file=self._stderr, flush=True)
        loop()

    def put(self, item: Any) -> None:
        if self.stats.error is not None:
            self.stats.drop("capture stopped after a write error")
            return
        if self._inline:
            with self._lock:
                self._convert(item, self._lines)
                if self._clock() >= self._next_flush:
                    self._flush_lines()
            return
        if len(self._queue) >= self._max_queue:
            self.stats.drop("writer queue full")
        else:
            self._queue.append(item)  # atomic: the writer thread pops from the other end

    def close(self, timeout_s: float = 30.0) -> WriterStats:
        """Writes what is queued, closes the file and returns the counts."""
        if self._inline:
            self._stopping.set()
            self._thread.join(timeout_s)
            with self._lock:
                self._flush_lines()
                self._close_file()
            return self.stats
        self._queue.append(_STOP)
        self._thread.join(timeout_s)
        return self.stats

    def barrier(self, timeout_s: float = 30.0) -> tuple[str | None, int]:
        """Flushes what was put before this call and returns (the current file, its size): a prefix of the
        capture that ends on a whole flush, for a consistent snapshot while writing goes on. Blocks the
        caller (not the writer) until then."""
        if self._inline:
            with self._lock:
                self._flush_lines()
                return (self.stats.files[-1] if self.stats.files else None), self._size
        done = threading.Event()
        result: list[Any] = [None, 0]
        self._queue.append(_Barrier(done, result))
        done.wait(timeout_s)
        return result[0], result[1]

    # -- inline: the caller converts, this thread appends what an idle caller left

    def _idle_flusher(self) -> None:
        while not self._stopping.wait(self.flush_s):
            with self._lock:
                if self._clock() >= self._next_flush:
                    self._flush_lines()

    def _flush_lines(self) -> None:
        """Appends the inline lines (the caller holds the lock)."""
        if self._lines and self.stats.error is None:
            self._flush(self._lines)
        self._lines = []
        self._next_flush = self._clock() + self.flush_s

    # -- the writer thread

    def _run(self) -> None:
        lines: list[bytes] = []
        next_flush = self._clock() + self.flush_s
        stopping = False
        queue = self._queue
        while not stopping:
            if not queue:
                time.sleep(self._poll_s)
            while queue and not stopping:
                item = queue.popleft()
                if item is _STOP:
                    stopping = True
                elif isinstance(item, _Barrier):
                    if lines and self.stats.error is None:
                        self._flush(lines)
                    lines = []
                    item.result[:] = [self.stats.files[-1] if self.stats.files else None, self._size]
                    item.done.set()
                elif self.stats.error is None:
                    self._convert(item, lines)
                if self._clock() >= next_flush:
                    break
            if stopping or self._clock() >= next_flush:
                if lines and self.stats.error is None:
                    self._flush(lines)
                lines = []
                next_flush = self._clock() + self.flush_s
        self._close_file()

    def _convert(self, item: Any, lines: list[bytes]) -> None:
        try:
            for rec in self._to_records(item):
                lines.append(orjson.dumps(rec, option=_DUMPS))
        except Exception as exc:  # noqa: BLE001 - one record that cannot be written must not end the capture
            self.stats.drop(f"record could not be written: {type(exc).__name__}")

    def _flush(self, lines: list[bytes]) -> None:
        data = b"".join(lines)
        if self.gzip:
            # mtime=0: the same records make the same bytes
            data = gzip.compress(data, compresslevel=_GZIP_LEVEL, mtime=0)
        try:
            fd = self._file_for(len(data))
            written = os.write(fd, data)
            if written != len(data):
                # A short write (the disk filled part-way): cut back to the last whole flush, so the file
                # never ends inside a record or a gzip member.
                os.ftruncate(fd, self._size)
                raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes): disk full?")
        except OSError as exc:
            self.stats.error = f"{self._name or self.pattern}: {exc.strerror or exc}"
            self.stats.drop("capture stopped after a write error", len(lines))
            print(f"harness capture: cannot write the capture ({self.stats.error}); capture stopped, "
                  "the proxy keeps serving", file=self._stderr, flush=True)
            self._close_file()
            return
        self._size += len(data)
        self.stats.records_written += len(lines)

    def _file_for(self, incoming: int) -> int:
        name = datetime.fromtimestamp(self._clock(), timezone.utc).strftime(self.pattern)
        full = self.rotate_bytes is not None and self._size > 0 and self._size + incoming > self.rotate_bytes
        if self._fd is None or name != self._name or full:
            self._close_file()
            path = _free_name(Path(name))
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
            hold(self._fd)  # a later writer's mend_last_file leaves a file a live writer holds alone
            self._name, self._size = name, 0
            self.stats.files.append(str(path))
        return self._fd

    def _close_file(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


def _free_name(path: Path) -> Path:
    if not path.exists():
        return path
    name = path.name
    stem, ext = name, ""
    for suffix in EXTENSIONS:
        if name.endswith(suffix):
            stem, ext = name[: -len(suffix)], suffix
            break
    i = 1
    while (candidate := path.with_name(f"{stem}-{i}{ext}")).exists():
        i += 1
    return candidate
