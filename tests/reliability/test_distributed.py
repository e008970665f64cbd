"""`harness run --processes 2` with one worker process SIGKILLed mid-run. The lost shard
is counted and shown (skipped, with the lost worker named), never silent; the run is incomplete (exit 4);
the master still writes every leg the surviving worker sent, and the legs the killed one had written to
its spool file (it ran on the master's machine). And a Ctrl-C of the whole process group
(master and workers) during a distributed run keeps every completed leg, as in the local runner."""
from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import psutil
import pytest

from fault_server import FaultServer
from reliability_kit import (HarnessProc, assert_no_traceback, check_accounting, query, records, run_status,
                             summary, the_run_dir, wait_for, write_jsonl, write_scenario)

pytestmark = pytest.mark.integration

N = 360


def _port_no_connection_is_given(socket: Any) -> int:
    """A free port below the kernel's ephemeral range. The workers start before their master and retry their
    connection to its port while nothing listens there; a port from the ephemeral range can be handed to one
    of those attempts as its own source port, and the worker then connects to itself (TCP simultaneous open)
    and never to the master (a fresh-clone CI run at 7a76023 waited 120 s so)."""
    import random

    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    rng = random.Random()
    for _ in range(500):
        port = rng.randrange(max(1024, low - 10000), low)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low}")


def _workers(pid: int) -> list[psutil.Process]:
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for c in children:
        try:
            if "worker" in c.cmdline() and "harness" in " ".join(c.cmdline()):
                out.append(c)
        except psutil.Error:
            pass
    return out


@pytest.fixture(scope="module")
def lost_worker_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("distributed")
    tmpdir = tmp / "tmpdir"
    tmpdir.mkdir()
    with FaultServer() as srv:
        capture = write_jsonl(tmp / "c.jsonl", records(N, rate=60))  # 6 s of traffic
        scenario = write_scenario(tmp, capture, srv.url, srv.url)
        p = HarnessProc(["run", str(scenario), "--out", str(tmp / "reports"), "--processes", "2"], tmp,
                        env={"TMPDIR": str(tmpdir)})
        try:
            wait_for(lambda: len(_workers(p.pid)) == 2, 60, "two worker processes")
            workers = _workers(p.pid)
            # 2 s in: the victim has spooled legs (it writes every 0.5 s) and has 4 s of its shard left
            wait_for(lambda: srv.hits["/ok"] >= 240, 60, "the replay to be under way")
            victim = workers[0]
            victim_cmd = victim.cmdline()
            victim.send_signal(signal.SIGKILL)
            rc = p.wait(timeout=120)
        finally:
            p.kill_if_running()
            for w in _workers(p.pid):
                w.kill()
        hits = srv.hits["/ok"]
    return {"rc": rc, "proc": p, "run_dir": the_run_dir(tmp / "reports"), "hits": hits, "victim_cmd": victim_cmd,
            "tmpdir": tmpdir}


def test_lost_worker_is_counted_and_the_run_is_incomplete(lost_worker_run: dict[str, Any]) -> None:
    r = lost_worker_run
    run_dir = r["run_dir"]
    assert "worker" in r["victim_cmd"]
    assert r["rc"] == 4, r["proc"].stderr
    assert_no_traceback(r["proc"].stdout, r["proc"].stderr)
    # the master's own child: its exit is seen at once, not after the heartbeat timeout (60 s)
    (detail,), = query(run_dir, "select detail from events where kind = 'worker_lost'")
    assert json.loads(detail)["why"] == "ended by SIGKILL before its report", detail
    assert "ended by SIGKILL before its report: its unfinished shard is counted as lost" in r["proc"].stdout + r["proc"].stderr
    status, reason = run_status(run_dir)
    assert status == "incomplete" and "worker" in (reason or ""), (status, reason)
    # the killed worker's in-flight legs, and those of its last unwritten spool batch, are lost: a request can
    # keep one leg of two; only the lost worker's shard may be short, and the summary says how many
    counts = check_accounting(run_dir, "paired", legs_complete=False)
    index, shards = json.loads(detail)["index"], json.loads(detail)["shard_count"]
    short = query(run_dir, "select order_idx from legs group by 1 having count(*) < 2")
    assert all(order_idx % shards == index for order_idx, in short), short
    half_notes = [n for n in summary(run_dir)["notes"] if f"worker-{index} was lost: " in n]
    assert half_notes == ([f"worker-{index} was lost: {len(short)} of its requests kept fewer legs than versions "
                           f"(the missing legs were in flight or not yet in its spool file)"] if short else []), half_notes
    lost = {reason: n for reason, n in counts["skipped"].items() if "lost" in reason and "worker-" in reason}
    assert lost and sum(lost.values()) > 0, counts["skipped"]
    s = summary(run_dir)
    assert s["run"]["status"] == "incomplete"
    assert any("worker" in note for note in s["notes"]), s["notes"]


def test_master_keeps_the_surviving_workers_legs(lost_worker_run: dict[str, Any]) -> None:
    run_dir = lost_worker_run["run_dir"]
    per_worker = dict(query(run_dir, "select worker, count(*) from legs group by 1"))
    # the surviving worker finished its whole shard: every other request of the schedule, two legs each
    assert 2 * (N // 2) in per_worker.values(), per_worker
    # no leg arrives that the target never saw; legs of the killed worker's last batch may be lost
    (legs,), = query(run_dir, "select count(*) from legs")
    assert legs <= lost_worker_run["hits"]
    # every request the survivor owned is complete: both legs
    (survivor,) = [w for w, n in per_worker.items() if n == 2 * (N // 2)]
    assert query(run_dir, f"""select count(*) from (select request_id from legs where worker = '{survivor}'
        group by 1 having count(*) = 2)""") == [(N // 2,)]


def test_master_recovers_the_lost_workers_spooled_legs(lost_worker_run: dict[str, Any]) -> None:
    run_dir = lost_worker_run["run_dir"]
    (detail,), = query(run_dir, "select detail from events where kind = 'worker_lost'")
    recovered = json.loads(detail)["legs_recovered"]
    per_worker = dict(query(run_dir, "select worker, count(*) from legs group by 1"))
    lost_name = f"worker-{json.loads(detail)['index']}"
    # at least the 1.5 s it had spooled (30 pairs/s), and all of it in results.duckdb
    assert recovered >= 2 * 30 and per_worker.get(lost_name) == recovered, (recovered, per_worker)
    assert per_worker[lost_name] < 2 * (N // 2)  # killed before the end of its shard


def test_workers_leave_no_temp_dirs(lost_worker_run: dict[str, Any]) -> None:
    left = sorted(p.name for p in lost_worker_run["tmpdir"].glob("harness-worker-*"))
    # the SIGKILLed worker could not clean up: the master removed its folder once it had read its spool
    assert left == [], left


def test_ctrl_c_of_a_distributed_run_keeps_every_completed_leg(tmp_path: Path) -> None:
    """SIGINT to the process group, as a terminal's Ctrl-C does: the workers ignore it, the master stops them."""
    with FaultServer() as srv:
        capture = write_jsonl(tmp_path / "c.jsonl", records(480, rate=80))
        scenario = write_scenario(tmp_path, capture, srv.url, srv.url)
        p = HarnessProc(["run", str(scenario), "--out", str(tmp_path / "reports"), "--processes", "2"], tmp_path,
                        new_session=True)
        try:
            wait_for(lambda: srv.hits["/ok"] >= 60, 60, "the replay to be under way")
            os.killpg(p.pid, signal.SIGINT)
            rc = p.wait(timeout=60)
        finally:
            p.kill_if_running()
        hits = srv.hits["/ok"]
    run_dir = the_run_dir(tmp_path / "reports")
    assert rc == 4, p.stderr
    assert_no_traceback(p.stdout, p.stderr)
    assert run_status(run_dir) == ("incomplete", "interrupted by SIGINT")
    assert query(run_dir, "select count(*) from legs") == [(hits,)]
    counts = check_accounting(run_dir, "paired")
    assert set(counts["skipped"]) == {"not sent: run interrupted by SIGINT"}, counts["skipped"]


def test_a_worker_that_cannot_start_its_replay_fails_the_run_at_once(tmp_path: Path) -> None:
    """A worker's scratch folder removed before the run (a /tmp cleaner): its replay cannot start. The
    master is told at once and fails the run with that error (exit 4, status failed), instead of waiting
    for it; the healthy worker sends nothing; both workers exit."""
    import shutil
    import socket
    import subprocess
    import sys

    port = _port_no_connection_is_given(socket)
    with FaultServer() as srv:
        capture = write_jsonl(tmp_path / "c.jsonl", records(N, rate=60))
        scenario = write_scenario(tmp_path, capture, srv.url, srv.url)
        tmpdirs = [tmp_path / f"wtmp{i}" for i in range(2)]
        workers = []
        for d in tmpdirs:
            d.mkdir()
            workers.append(subprocess.Popen([sys.executable, "-m", "harness", "worker", "--master-port", str(port)],
                                            env={**os.environ, "TMPDIR": str(d)}, stdout=subprocess.PIPE,
                                            stderr=subprocess.STDOUT, text=True))
        master = None
        try:
            wait_for(lambda: all(any(d.glob("harness-worker-*")) for d in tmpdirs), 60, "the workers' scratch folders")
            shutil.rmtree(next(tmpdirs[0].glob("harness-worker-*")))
            master = HarnessProc(["run", str(scenario), "--out", str(tmp_path / "reports"), "--master",
                                  "--expect-workers", "2", "--master-bind-port", str(port)], tmp_path)
            rc = master.wait(timeout=120)
            worker_rcs = [w.wait(timeout=60) for w in workers]
        finally:
            if master is not None:
                master.kill_if_running()
            for w in workers:
                w.kill()
        hits = srv.hits["/ok"]
    assert rc == 4, master.stderr
    assert "worker" in master.stderr and "FileNotFoundError" in master.stderr, master.stderr
    status, reason = run_status(the_run_dir(tmp_path / "reports"))
    assert status == "failed" and "FileNotFoundError" in (reason or ""), (status, reason)
    assert hits == 0  # stopped before any request left
    assert worker_rcs == [0, 0]
