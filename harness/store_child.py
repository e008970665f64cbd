"""The replay's side of the store's writer process (harness.store_writer): during a single-process replay
the run's DuckDB file belongs to that process, and the recorder's sinks hand it Arrow tables over a pipe.

The replay's process closes its connection while the writer holds the file and opens it again after. A sink
returns once the writer has committed its table, so rows are only ever counted as recorded once they are in
the file. If the writer dies or fails, the sink takes the file back and writes the table itself (the batch
in flight may have been committed just before the writer died, so that first write skips rows already there)
and raises WrittenByParent: the recorder counts the rows as recorded and the run carries a note saying
what happened (nothing was lost: the run stays complete). Every later table
is written by the replay's process. If the replay's process dies, the writer reads the end of its pipe,
writes what it received and exits.

The sinks run in the recorder's native thread (harness.replay.recorder): unbuffered file objects over the
pipes and os.waitid, which gevent leaves alone, block that thread only (gevent's os.close defers the close to
its loop, so the pipes are closed through their file objects).
"""
from __future__ import annotations

import contextlib
import io
import os
import select
import subprocess
import sys
import time
from typing import Callable, Iterator

import pyarrow as pa

from .frames import child_env, exit_described, frame
from .replay.spool import to_ipc
from .store import RunStore

__all__ = ["WriterProcess", "WrittenByParent", "writing_in_child", "WRITER_ARGV"]

WRITER_ARGV = [sys.executable, "-m", "harness.store_writer"]  # then the results file
READY_TIMEOUT_S = 60.0
CLOSE_TIMEOUT_S = 300.0
# A commit answered later than this is a writer that hangs (stopped, a stuck disk): it is killed and the
# replay's process writes the table itself, rather than the recorder's thread, and the run's end, waiting forever.
WRITE_TIMEOUT_S = 120.0
PIPE_BYTES = 1 << 20  # a flush's legs in one write (Linux caps it at /proc/sys/fs/pipe-max-size)

Sink = Callable[[pa.Table], None]


class WrittenByParent(Exception):
    """The writer process failed; the replay's process wrote the table itself (the recorder keeps no rows back
    and notes it)."""
    rows_written = True


class WriterFailed(Exception):
    pass


class WriterProcess:
    def __init__(self, store: RunStore) -> None:
        self.store = store
        self._proc: subprocess.Popen[bytes] | None = None
        self._to: io.FileIO | None = None  # write end of the writer's stdin
        self._from: io.FileIO | None = None  # read end of its stdout
        self._buf = b""
        self._skip_written = False  # the next table the replay's process writes may be in the file already

    @property
    def alive(self) -> bool:
        return self._proc is not None

    def start(self) -> None:
        """Hands the file to a new writer process; on any failure the file is the replay's process's again
        and WriterFailed says why."""
        to_read, to_write = os.pipe()
        from_read, from_write = os.pipe()
        self.store.close()
        try:
            self._proc = subprocess.Popen([*WRITER_ARGV, str(self.store.path)], stdin=to_read, stdout=from_write,
                                          env=child_env(), start_new_session=True, close_fds=True)
        except OSError as exc:
            for fd in (to_read, to_write, from_read, from_write):
                io.FileIO(fd, "rb").close()
            self.store.reopen()
            raise WriterFailed(f"cannot start: {exc}") from None
        io.FileIO(to_read, "rb").close()
        io.FileIO(from_write, "wb").close()
        os.set_blocking(to_write, False)
        self._to, self._from = io.FileIO(to_write, "wb"), io.FileIO(from_read, "rb")
        with contextlib.suppress(AttributeError, OSError):
            import fcntl
            fcntl.fcntl(to_write, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
        answer = self._read_line(READY_TIMEOUT_S)
        if answer != "ready":
            problem = self._take_back(kill=True)
            raise WriterFailed(answer[6:] if answer and answer.startswith("error ") else problem)

    def sinks(self) -> dict[str, Sink]:
        return {name: self._sink(name) for name in ("legs", "events", "resources")}

    def _sink(self, name: str) -> Sink:
        def write(table: pa.Table) -> None:
            self.write(name, table)
        return write

    def write(self, name: str, table: pa.Table) -> None:
        if self._proc is None:
            self._write_here(name, table)
            return
        try:
            self._send(name, table)
            return
        except (OSError, WriterFailed) as exc:
            problem = str(exc) or type(exc).__name__
        status = self._take_back(kill=True)
        self._write_here(name, table)
        raise WrittenByParent(f"The store's writer process failed ({problem}; {status}); the replay's process "
                              "wrote the rows itself from then on, none lost")

    def _write_here(self, name: str, table: pa.Table) -> None:
        if self._skip_written:
            self.store.write_missing(name, table)
            self._skip_written = False
        else:
            self.store.sinks()[name](table)

    def _send(self, name: str, table: pa.Table) -> None:
        assert self._to is not None
        view = memoryview(frame((name, to_ipc(table))))
        # the pipe is non-blocking: a writer that stopped reading (stopped, stuck) with the pipe full must not
        # hold this thread past the same deadline as a missing answer
        deadline = time.monotonic() + WRITE_TIMEOUT_S
        while view:
            if not select.select([], [self._to.fileno()], [], max(0.0, deadline - time.monotonic()))[1]:
                raise WriterFailed(f"it took no data for {WRITE_TIMEOUT_S:g} s")
            view = view[self._to.write(view) or 0:]
        answer = self._read_line(WRITE_TIMEOUT_S)
        if answer is None and self._proc is not None and self._proc.poll() is None:
            raise WriterFailed(f"no answer within {WRITE_TIMEOUT_S:g} s")
        if answer != "ok":
            raise WriterFailed(answer[6:] if answer and answer.startswith("error ") else f"answered {answer!r}")

    def _read_line(self, timeout_s: float | None) -> str | None:
        """The writer's next answer; None at the end of its stdout (or after timeout_s)."""
        assert self._from is not None
        while b"\n" not in self._buf:
            if timeout_s is not None and not select.select([self._from.fileno()], [], [], timeout_s)[0]:
                return None
            data = self._from.read(4096)
            if not data:
                return None
            self._buf += data
        line, self._buf = self._buf.split(b"\n", 1)
        return line.decode("utf-8", "replace")

    def _take_back(self, kill: bool) -> str:
        """Ends the writer (its stdin closed; killed too if `kill`, as it has failed already), waits until it
        has exited (the file is unlocked then) and opens the file in this process. Returns how it ended."""
        proc, self._proc = self._proc, None
        assert proc is not None
        self._close_fd("_to")
        if kill:
            with contextlib.suppress(OSError):
                proc.kill()
        status = _wait_exited(proc.pid)
        if status == "exited" and proc.returncode is not None:  # reaped already (gevent watches children)
            status = exit_described(proc.returncode)
        self._close_fd("_from")
        self.store.reopen()
        self.store.recording(True)
        self._skip_written = True
        with contextlib.suppress(Exception):
            proc.wait(1.0)  # reaped here, or by whoever watches children
        return status

    def close(self) -> None:
        """At the end of the replay: the writer writes what it was sent and exits; the file is this process's
        again."""
        proc = self._proc
        if proc is None:
            return
        self._proc = None
        self._close_fd("_to")
        try:
            proc.wait(CLOSE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        self._close_fd("_from")
        self.store.reopen()

    def _close_fd(self, attr: str) -> None:
        f = getattr(self, attr)
        setattr(self, attr, None)
        if f is not None:
            with contextlib.suppress(OSError):
                f.close()


def _wait_exited(pid: int) -> str:
    """Blocks until the process has exited, without reaping it (os.waitid, WNOWAIT: its Popen still can)."""
    try:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    except ChildProcessError:  # reaped already
        return "exited"
    if info is None:
        return "exited"
    return exit_described(info.si_status if info.si_code == os.CLD_EXITED else -info.si_status)


@contextlib.contextmanager
def writing_in_child(store: RunStore, note: Callable[[str], None]) -> Iterator[dict[str, Sink]]:
    """The recorder's sinks for a replay: a writer process's, or, where one cannot start, the store's own
    (`note` says why)."""
    writer = WriterProcess(store)
    try:
        writer.start()
    except WriterFailed as exc:
        note(f"the store's writer process did not start ({exc}); the replay's process writes the results")
        yield store.sinks()
        return
    try:
        yield writer.sinks()
    finally:
        writer.close()
