"""Length-prefixed pickle frames: how harness's own processes talk over a pipe (the replay's process and its
gRPC process, the shadow proxy and its recorder). Both ends are this package in the same interpreter, so
pickle is safe here and is the cheapest codec for tuples of bytes, strings and numbers.

A frame is a 4-byte little-endian length, then the pickle. Standard library only: both the gevent-patched
replay and the asyncio proxies import it.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import signal
import struct
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["HEAD", "frame", "FrameReader", "read_frame", "child_env", "background_child", "exit_described"]

HEAD = struct.Struct("<I")


def frame(message: Any) -> bytes:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return HEAD.pack(len(data)) + data


class FrameReader:
    """Frames out of a byte stream read in arbitrary pieces (a non-blocking pipe)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[Any]:
        buf = self._buf
        buf += data
        out = []
        pos, end = 0, len(buf)
        size_of = HEAD.size
        while end - pos >= size_of:
            (size,) = HEAD.unpack_from(buf, pos)
            if end - pos - size_of < size:
                break
            out.append(pickle.loads(buf[pos + size_of:pos + size_of + size]))
            pos += size_of + size
        del buf[:pos]
        return out


def read_frame(f: BinaryIO) -> Any:
    """The next message from a blocking file, or None at its end (a cut frame included)."""
    head = f.read(HEAD.size)
    if len(head) < HEAD.size:
        return None
    (n,) = HEAD.unpack(head)
    data = f.read(n)
    return pickle.loads(data) if len(data) == n else None


def child_env() -> dict[str, str]:
    """The environment for `python -m harness.…` children: the folder this very harness package is in comes
    first on their import path, so a child runs the parent's code even where another copy is installed. An
    installed package (site-packages) is left to the interpreter: that folder ahead of the standard library
    would let a stale backport there shadow a standard module."""
    env = dict(os.environ)
    root = Path(__file__).resolve().parents[1]
    if root.name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH")) if p)
    return env


def background_child(nice: int = 0) -> None:
    """A recording child's start (the shadow's recorder, the store's writer): SIGINT and SIGTERM ignored (a
    terminal's Ctrl-C reaches the whole process group; the parent ends the child by closing its pipe), the
    nice value raised by `nice`, and SCHED_BATCH: a fair share of CPU, but no preemption of the parent's loop
    when the child is woken by a hand-over (Linux; elsewhere the policy is left as it is)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if nice:
        with contextlib.suppress(AttributeError, OSError):
            os.nice(nice)
    with contextlib.suppress(AttributeError, OSError):
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def exit_described(returncode: int) -> str:
    """A child's exit as Popen.returncode gives it (negative: the signal that ended it), in words."""
    if returncode >= 0:
        return f"exited with status {returncode}"
    try:
        return f"ended by {signal.Signals(-returncode).name}"
    except ValueError:
        return f"ended by signal {-returncode}"
