"""A misbehaving target during a replay. Each fault becomes the right error kind in
legs, the run still completes, and the report shows the error kinds.

One `harness run` (a subprocess, as a user runs it) replays a capture that visits every fault of the
in-process fault server; a second one runs against a target process that is SIGKILLed mid-run and
started again on the same port."""
from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from fault_server import FaultServer
from reliability_kit import (T0, HarnessProc, check_accounting, query, records, run_status, summary, the_run_dir,
                             wait_for, write_jsonl, write_scenario)

pytestmark = pytest.mark.integration

# path -> (expected error kind, number of requests); timeout_s is 1 and the body cap 1 MB.
FAULTS: dict[str, tuple[str | None, int]] = {
    "/ok": (None, 20),
    "/reset": ("reset", 5),                 # closes in the middle of the answer
    "/hang?s=3": ("timeout", 3),            # never answers within timeout_s
    "/trickle?ms=100": ("timeout", 3),      # body one byte per 100 ms: not complete within timeout_s
    "/trickle?ms=5": (None, 3),             # slow but complete within timeout_s: a slow success
    "/status?code=500": ("http_5xx", 20),   # a burst of 500s
    "/status?code=503": ("http_5xx", 3),
    "/invalid_json": ("invalid_json", 5),   # 200 with an HTML body
    "/big?mb=50": ("too_large", 2),         # 50 MB answer, capped by replay.max_response_bytes
}
MAX_RESPONSE_BYTES = 1_000_000


@pytest.fixture(scope="module")
def fault_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("faults")
    recs: list[dict[str, Any]] = []
    t = T0
    for path, (_, n) in FAULTS.items():  # each fault in a burst of its own
        for r in records(n, rate=100, path=path, start=t):
            recs.append(r)
        t += n / 100 + 0.05
    capture = write_jsonl(tmp / "faults.jsonl", recs)
    with FaultServer() as srv:
        scenario = write_scenario(tmp, capture, srv.url, srv.url, name="faults",
                                  replay={"timeout_s": 1, "max_response_bytes": MAX_RESPONSE_BYTES})
        p = HarnessProc(["run", str(scenario), "--out", str(tmp / "reports")], tmp)
        rc = p.wait(timeout=120)
        yield {"rc": rc, "run_dir": the_run_dir(tmp / "reports"), "proc": p, "hits": dict(srv.hits)}


def test_faulty_target_run_completes_with_exact_accounting(fault_run: dict[str, Any]) -> None:
    run_dir = fault_run["run_dir"]
    assert fault_run["rc"] in (0, 1, 2), fault_run["proc"].stderr  # a verdict, not "could not be carried out"
    assert "Traceback" not in fault_run["proc"].stderr
    assert run_status(run_dir)[0] == "complete"
    counts = check_accounting(run_dir, "paired")
    assert counts["replayed"] == sum(n for _, n in FAULTS.values())


@pytest.mark.parametrize("path", list(FAULTS))
def test_each_fault_is_recorded_with_its_error_kind(fault_run: dict[str, Any], path: str) -> None:
    kind, n = FAULTS[path]
    rows = query(fault_run["run_dir"], """select l.version, l.error_kind from legs l join requests r using (request_id)
                                         where r.path = ?""", [path])
    assert len(rows) == 2 * n
    assert sorted(rows) == sorted([(v, kind) for v in ("baseline", "candidate") for _ in range(n)])
    # one attempt per leg: no hidden retry turns a fault into a slow success
    assert fault_run["hits"][path.split("?")[0]] >= 2 * n


def test_slow_trickle_within_the_timeout_is_a_slow_success(fault_run: dict[str, Any]) -> None:
    rows = query(fault_run["run_dir"], """select l.error_kind, l.status_code, l.prediction, l.service_ms
        from legs l join requests r using (request_id) where r.path = '/trickle?ms=5'""")
    assert rows and all(k is None and s == 200 and p == "legit" for k, s, p, _ in rows)
    # the whole trickled body (about 70 bytes, 5 ms each) was waited for
    fast = query(fault_run["run_dir"], """select min(l.service_ms) from legs l join requests r using (request_id)
                                          where r.path = '/ok'""")[0][0]
    assert min(r[3] for r in rows) > fast


def test_oversized_answer_is_cut_at_the_cap(fault_run: dict[str, Any]) -> None:
    rows = query(fault_run["run_dir"], """select l.error_kind, l.output_json, l.error_detail
        from legs l join requests r using (request_id) where r.path = '/big?mb=50'""")
    for kind, excerpt, detail in rows:
        assert kind == "too_large" and excerpt is None
        assert str(MAX_RESPONSE_BYTES) in detail


def test_summary_counts_every_error_kind(fault_run: dict[str, Any]) -> None:
    s = summary(fault_run["run_dir"])
    for version in ("baseline", "candidate"):
        kinds = s["versions"][version]["error_kinds"]
        for path, (kind, n) in FAULTS.items():
            if kind is not None:
                assert kinds.get(kind, 0) >= n, (path, kinds)


def test_report_shows_the_error_kinds(fault_run: dict[str, Any]) -> None:
    html = (fault_run["run_dir"] / "gate_report.html").read_text(encoding="utf-8")
    for kind in {k for k, _ in FAULTS.values() if k is not None}:
        assert kind in html, kind


# -- the target killed and started again ------------------------------------------------------------

def _start_target(tmp: Path, port: int, hits: Path) -> tuple[subprocess.Popen[bytes], int]:
    port_file = tmp / f"port-{port}-{len(list(tmp.glob('port-*')))}"
    proc = subprocess.Popen([sys.executable, str(Path(__file__).with_name("target_proc.py")), "--port", str(port),
                             "--port-file", str(port_file), "--hits-file", str(hits)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: port_file.exists() or proc.poll() is not None, 30, "the target to listen")
    assert proc.poll() is None, f"target exited with {proc.returncode}"
    return proc, int(port_file.read_text())


def test_target_killed_and_restarted_mid_run(tmp_path: Path) -> None:
    """SIGKILL of the candidate's process mid-run: legs in flight are reset, legs while it is down are
    refused (connect), and once it is back on the same port the replay goes on. The run completes."""
    hits = tmp_path / "hits"
    baseline, base_port = _start_target(tmp_path, 0, tmp_path / "baseline-hits")
    candidate, port = _start_target(tmp_path, 0, hits)
    restarted: subprocess.Popen[bytes] | None = None
    try:
        capture = write_jsonl(tmp_path / "c.jsonl", records(240, rate=60))  # 4 s of captured time
        scenario = write_scenario(tmp_path, capture, f"http://127.0.0.1:{base_port}", f"http://127.0.0.1:{port}",
                                  replay={"timeout_s": 1, "connect_timeout_s": 0.5})
        p = HarnessProc(["run", str(scenario), "--out", str(tmp_path / "reports")], tmp_path)
        try:
            wait_for(lambda: hits.exists() and hits.stat().st_size >= 40, 60, "the replay to reach the candidate")
            candidate.send_signal(signal.SIGKILL)
            candidate.wait(timeout=10)
            down_at = hits.stat().st_size
            # down while the replay sends at least 20 more pairs (each pair's baseline leg counts there)
            base_hits = tmp_path / "baseline-hits"
            base_at_kill = base_hits.stat().st_size
            wait_for(lambda: base_hits.stat().st_size >= base_at_kill + 20, 60, "requests while the target is down")
            restarted, again = _start_target(tmp_path, port, hits)
            assert again == port
            rc = p.wait(timeout=120)
        finally:
            p.kill_if_running()
        run_dir = the_run_dir(tmp_path / "reports")
        assert rc in (0, 1, 2), p.stderr
        assert "Traceback" not in p.stderr
        assert run_status(run_dir)[0] == "complete"
        check_accounting(run_dir, "paired")
        kinds = dict(query(run_dir, "select error_kind, count(*) from legs where version = 'candidate' group by 1"))
        assert kinds.get("connect", 0) >= 1, kinds  # refused while it was down
        assert set(kinds) <= {None, "connect", "reset", "timeout"}, kinds
        assert query(run_dir, "select count(*) from legs where version = 'baseline' and error_kind is not null") == [(0,)]
        # it recovered: the candidate answered again after the restart, and the last requests all succeeded
        assert hits.stat().st_size > down_at
        tail = query(run_dir, """select error_kind from legs where version = 'candidate'
                                 order by intended_at desc limit 20""")
        assert tail == [(None,)] * 20, tail
        s = summary(run_dir)
        assert s["versions"]["candidate"]["error_kinds"].get("connect", 0) == kinds.get("connect", 0)
    finally:
        for proc in (baseline, candidate, restarted):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
