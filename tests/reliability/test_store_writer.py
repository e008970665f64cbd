"""The store's writer process (harness.store_writer) killed, or the replay's process killed, mid-replay.

A killed writer loses no leg: the replay's process takes the file back and writes the rest (and the batch
in flight once), the failure is counted and the run is incomplete. A killed replay leaves the writer to
write what it received and exit at the end of its pipe."""
from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Callable

import psutil
import pytest

from fault_server import FaultServer
from reliability_kit import (HarnessProc, assert_no_traceback, check_accounting, query, records, run_status,
                             the_run_dir, wait_for, write_jsonl, write_scenario)

pytestmark = pytest.mark.integration

RATE = 80
N = 480  # 6 s of traffic at RATE


def _writer_of(pid: int) -> psutil.Process:
    found: list[psutil.Process] = []

    def look() -> bool:
        for child in psutil.Process(pid).children(recursive=True):
            try:
                if "harness.store_writer" in " ".join(child.cmdline()):
                    found.append(child)
                    return True
            except psutil.Error:  # gone, or a zombie (the run's `git rev-parse`)
                pass
        return False

    wait_for(look, 30, "the store's writer process")
    return found[0]


def _start(tmp_path: Path, srv: FaultServer, harness_proc: Callable[..., HarnessProc]) -> HarnessProc:
    capture = write_jsonl(tmp_path / "c.jsonl", records(N, rate=RATE))
    scenario = write_scenario(tmp_path, capture, srv.url, srv.url)
    return harness_proc(["run", scenario, "--out", tmp_path / "reports"], tmp_path)


def test_a_killed_writer_loses_no_leg(tmp_path: Path, harness_proc: Callable[..., HarnessProc]) -> None:
    with FaultServer() as srv:
        p = _start(tmp_path, srv, harness_proc)
        writer = _writer_of(p.pid)
        wait_for(lambda: srv.hits["/ok"] >= 2 * RATE * 2, 60, "the replay to be under way")
        run_dir = the_run_dir(tmp_path / "reports")
        writer.send_signal(signal.SIGKILL)
        rc = p.wait(timeout=60)
        hits = srv.hits["/ok"]
    assert_no_traceback(p.stdout, p.stderr)
    assert rc in (0, 1, 2), p.stderr  # nothing was lost: the run is judged, and says what happened
    (legs, distinct), = query(run_dir, "select count(*), count(distinct (order_idx, version)) from legs")
    assert legs == distinct == hits == 2 * N  # every leg sent is recorded, once
    status, reason = run_status(run_dir)
    assert status == "complete", reason
    (detail,), = query(run_dir, "select detail from events where kind = 'replay'")
    assert json.loads(detail)["sink_failures"] == 0
    notes = [n for (n,) in query(run_dir, "select detail from events where kind = 'note'")]
    assert any(n.startswith("The store's writer process failed (") and n.endswith("none lost") for n in notes), notes
    (samples,), = query(run_dir, "select count(*) from resources")
    assert samples >= 10  # sampled every 0.5 s of 6 s, before and after the kill
    check_accounting(run_dir, "paired")


def test_a_killed_replay_leaves_the_writer_to_write_and_exit(tmp_path: Path,
                                                             harness_proc: Callable[..., HarnessProc]) -> None:
    with FaultServer() as srv:
        p = _start(tmp_path, srv, harness_proc)
        writer = _writer_of(p.pid)
        wait_for(lambda: srv.hits["/ok"] >= 2 * RATE * 2, 60, "the replay to be under way")
        p.signal(signal.SIGKILL)
        assert p.wait(timeout=30) == -signal.SIGKILL
        hits = srv.hits["/ok"]
        writer.wait(timeout=30)  # the end of its pipe: it writes what it received and exits (else TimeoutExpired)
        assert not writer.is_running()
    run_dir = the_run_dir(tmp_path / "reports")
    (legs, distinct), = query(run_dir, "select count(*), count(distinct (order_idx, version)) from legs")
    assert legs == distinct
    assert 0 < legs <= hits
    assert hits - legs <= 2 * RATE + 10, (hits, legs)  # at most a flush interval and what was in flight
    assert run_status(run_dir)[0] == "running"  # nobody finished it: `harness report` calls it incomplete
