"""A capture file that a killed writer left cut, cut back to its last whole flush when the next writer starts.

The writer appends each flush with one write call, but the kernel stops a write part-way when the process
is killed (SIGKILL between two pages of the copy), so the file being written can end inside a gzip member
or a line. The next writer of the same pattern never appends to it (writer._free_name); before it writes,
it looks at the newest file its pattern names and, where no live writer holds that file (each writer keeps
an exclusive flock on the file it writes; the kernel drops it with the process), cuts a tail that is an
unfinished gzip member or an unfinished line. What is cut is the one flush the kill interrupted (the last
half second or so of records). A file that is corrupt anywhere else is left as it is: the readers report it.
"""
from __future__ import annotations

import fcntl
import glob
import os
import re
import zlib
from pathlib import Path

__all__ = ["mend_last_file", "hold", "EXTENSIONS"]

EXTENSIONS = (".jsonl.gz", ".ndjson.gz", ".jsonl", ".ndjson", ".gz")  # a taken name's -1, -2 ... go before these
_CHUNK = 1 << 20


def hold(fd: int) -> None:
    """Marks `fd`'s file as being written (an exclusive flock, released when the process ends however)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        pass


def mend_last_file(pattern: str) -> str | None:
    """Cuts the newest file `pattern` names back to its last whole flush where a killed writer left it cut;
    returns what it did (for the one line the writer prints), or None where nothing needed mending."""
    files = [p for p in glob.glob(_glob_of(pattern)) if os.path.isfile(p)]
    if not files:
        return None
    path = Path(max(files, key=os.path.getmtime))
    try:
        with path.open("r+b") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return None  # a live writer holds it: its tail is a flush in progress, not a cut one
            size = os.fstat(f.fileno()).st_size
            whole = _whole_gzip_length(f) if path.name.endswith(".gz") else _whole_lines_length(f, size)
            if whole is None or whole >= size:
                return None
            f.truncate(whole)
    except OSError as exc:
        return f"{path}: could not check whether a killed capture left it cut ({exc.strerror or exc})"
    return (f"{path} ended inside a flush (a capture killed while writing it): cut back to its last whole "
            f"flush, {size - whole} bytes left out")


def _glob_of(pattern: str) -> str:
    """The files a pattern's expansions name, with the -1, -2 ... of names already taken."""
    ext = next((e for e in EXTENSIONS if pattern.endswith(e)), "")
    stem = pattern[: len(pattern) - len(ext)]
    parts = re.split(r"(%.)", stem)
    out = "".join("%" if p == "%%" else "*" if p.startswith("%") and len(p) == 2 else glob.escape(p)
                  for p in parts)
    return out + "*" + glob.escape(ext)


def _whole_gzip_length(f) -> int | None:  # type: ignore[no-untyped-def]
    """Bytes up to the end of the last whole gzip member; None where the data is not gzip past the start of
    the unfinished member (corrupt, not cut: left to the readers)."""
    f.seek(0)
    whole = offset = 0
    member = zlib.decompressobj(wbits=31)
    while chunk := f.read(_CHUNK):
        while chunk:
            try:
                member.decompress(chunk)
            except zlib.error:
                return None
            if not member.eof:
                offset += len(chunk)
                break
            rest = member.unused_data
            offset += len(chunk) - len(rest)
            whole = offset
            member = zlib.decompressobj(wbits=31)
            chunk = rest
    return whole


def _whole_lines_length(f, size: int) -> int:  # type: ignore[no-untyped-def]
    """Bytes up to the last newline (0 where there is none)."""
    end = size
    while end > 0:
        start = max(0, end - _CHUNK)
        f.seek(start)
        at = f.read(end - start).rfind(b"\n")
        if at >= 0:
            return start + at + 1
        end = start
    return 0
