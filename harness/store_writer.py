"""The recorder's DuckDB writer during a single-process replay, in a process of its own:

    python -m harness.store_writer RESULTS_DUCKDB     (started by harness.store_child; not a command for users)

Why a process: a DuckDB insert in a thread of the replay's process takes the GIL for parts of its work (the
Arrow scan, per batch) and a core beside the send loop; legs sent during an insert (13-35 ms each at 2,000
pairs/s on a 2-core machine) were late several times as often as the others (benchmarks/lag_tail.py). Here
the insert holds no lock the loop needs, at nice +10 and SCHED_BATCH (a fair share of CPU, no preemption of
the loop on wake-up), with DuckDB on one thread.

Protocol: stdin carries frames (harness.frames), each (table name, Arrow IPC stream bytes); stdout one line
per answer: `ready` once the file is open, then `ok` once a frame's rows are committed, or `error <why>`,
after which the process closes the file and exits 1. An end of stdin (the replay finished, or its process
died) closes the file and exits 0, with every complete frame received written. SIGINT and SIGTERM are
ignored (a terminal's Ctrl-C reaches the whole process group): the replay's process ends it by closing
the pipe.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import BinaryIO

from .frames import background_child, read_frame
from .replay.spool import from_ipc
from .store import RunStore

__all__ = ["main", "WRITER_NICE"]

WRITER_NICE = 10


def _reply(out: BinaryIO, line: str) -> None:
    try:
        out.write(line.encode("utf-8", "replace") + b"\n")
        out.flush()
    except (BrokenPipeError, ValueError):  # the replay's process is gone: what it sent is written all the same
        pass


def main(path: str, inp: BinaryIO, out: BinaryIO) -> int:
    background_child(WRITER_NICE)
    try:
        store = RunStore(Path(path))
        store.recording(True)
    except Exception as exc:  # noqa: BLE001 - told to the replay's process, which writes the rows itself
        _reply(out, f"error cannot open {path}: {_one_line(exc)}")
        return 1
    writers = store.sinks()
    try:
        _reply(out, "ready")
        while (message := read_frame(inp)) is not None:
            name, data = message
            try:
                writers[name](from_ipc(data))
            except Exception as exc:  # noqa: BLE001 - the rows stay with the replay's process
                _reply(out, f"error {name}: {_one_line(exc)}")
                return 1
            _reply(out, "ok")
        return 0
    finally:
        store.close()


def _one_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {text}"[:400]


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1], sys.stdin.buffer, sys.stdout.buffer))
