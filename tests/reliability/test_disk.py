"""A run folder that cannot be written, or a disk that is full, is a clear error (one line,
exit 4) before any traffic is sent: the fault server sees no request.

Tests run as root, for whom permissions do not stop a write, so the faults are ones root cannot get
round: --out below a regular file (mkdir fails with ENOTDIR), and a file-size limit (RLIMIT_FSIZE,
which makes a write past the limit fail with EFBIG "File too large", like a full disk)."""
from __future__ import annotations

import resource
from pathlib import Path
from typing import Callable

import pytest

from fault_server import FaultServer
from reliability_kit import HarnessProc, assert_no_traceback, records, write_jsonl, write_scenario

pytestmark = pytest.mark.integration


def _file_size_limit(kib: int) -> Callable[[], None]:
    def limit() -> None:  # in the child, before exec; Python ignores SIGXFSZ, so writes fail with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (kib * 1024, kib * 1024))
    return limit


def _run(tmp_path: Path, out: Path, limit_kib: int | None = None) -> tuple[int, HarnessProc, int]:
    with FaultServer() as srv:
        capture = write_jsonl(tmp_path / "c.jsonl", records(100, rate=100))
        scenario = write_scenario(tmp_path, capture, srv.url, srv.url)
        p = HarnessProc(["run", str(scenario), "--out", str(out)], tmp_path,
                        preexec_fn=_file_size_limit(limit_kib) if limit_kib else None)
        rc = p.wait(timeout=120)
        return rc, p, sum(srv.hits.values())


def _assert_clear_error(p: HarnessProc, *fragments: str) -> None:
    assert_no_traceback(p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("harness: error: "), p.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])


def test_out_below_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    rc, p, hits = _run(tmp_path, blocker / "sub")
    assert rc == 4
    _assert_clear_error(p, str(blocker / "sub"))
    assert hits == 0
    assert blocker.read_text() == "not a directory\n"


def test_out_is_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "reports"
    blocker.write_text("")
    rc, p, hits = _run(tmp_path, blocker)
    assert rc == 4
    _assert_clear_error(p, str(blocker))
    assert hits == 0


def test_full_disk_is_caught_before_traffic(tmp_path: Path) -> None:
    """Room for less than the run folder's write probe (64 KiB)."""
    rc, p, hits = _run(tmp_path, tmp_path / "reports", limit_kib=16)
    assert rc == 4
    _assert_clear_error(p, "File too large")
    assert hits == 0


def test_disk_too_small_for_results_is_a_clear_error(tmp_path: Path) -> None:
    rc, p, hits = _run(tmp_path, tmp_path / "reports", limit_kib=200)
    assert_no_traceback(p.stdout, p.stderr)
    assert rc == 4
    _assert_clear_error(p, "results.duckdb")
    assert hits == 0


def test_disk_filling_up_mid_run_is_a_clear_error(tmp_path: Path) -> None:
    # results.duckdb of this run grows past 2 MB (DuckDB allocates in 256 KiB blocks), so a 1.5 MB
    # limit leaves room for the start of the run and always stops it before its end.
    rc, p, hits = _run(tmp_path, tmp_path / "reports", limit_kib=1500)
    assert hits > 0
    assert_no_traceback(p.stdout, p.stderr)
    assert rc == 4
    _assert_clear_error(p)
