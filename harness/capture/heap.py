"""Keeps glibc's malloc from handing freed heap back to the kernel after every batch.

A proxy that records builds a batch of records every flush (orjson's parse of each body, the lines, their
join), writes it and frees it. With glibc's defaults the writer thread's heap is handed back to the
kernel when the batch is freed and faulted in again by the next one: through `harness capture` at full
load (wrk -t1 -c50 on benchmarks/proxy_overhead.py's upstream, 2026-12-05, `perf stat -e
page-faults,context-switches`, one run each) 0.69 page faults and 0.36 context switches a request,
against 0.03 and 0.10 with these thresholds; `perf record -e page-faults` put 46 % of the faults in
malloc growing the heap under orjson.loads and 38 % in the join's copy. The proxy's CPU a request went
from 52-61 us (22 us of it in the kernel) to 49-52 us (18-19 us), 3 runs each (docs/benchmarks.md).
The cost is memory kept: up to `trim_bytes` of free heap stays with the process after a burst.

glibc only (mallopt); elsewhere nothing is changed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["keep_freed_heap"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_heap(trim_bytes: int = 64 << 20, mmap_bytes: int = 32 << 20) -> bool:
    """Raises the trim threshold (free heap kept before any goes back) and the size above which a block
    is its own mapping (mapped and unmapped each time: a flush's joined batch); True where applied."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt returns 1 on success; either setting alone helps, so each is tried
    return bool(mallopt(_M_TRIM_THRESHOLD, trim_bytes)) & bool(mallopt(_M_MMAP_THRESHOLD, mmap_bytes))
