"""Helpers of the reliability suite: run `harness` as a user does (a subprocess, real servers on
127.0.0.1), read what it left behind, and check the accounting of every run it made.

Every run here is small (tens to a few hundred requests) and bounded by a timeout; assertions never
depend on wall-clock durations, only on counts and contents (waits poll with generous deadlines)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import duckdb
import yaml

from run_folder_contract import assert_meets_contract

REPO = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0
PER_PAIR = {"paired": 2, "aa": 2, "baseline-only": 1}


def records(n: int, rate: float, path: str = "/ok", method: str = "POST", start: float = T0,
            **extra: Any) -> list[dict[str, Any]]:
    """n capture records, `rate` per second of captured time."""
    return [{"ts": start + i / rate, "method": method, "path": path,
             "headers": {"Content-Type": "application/json"}, "body": {"i": i}, **extra} for i in range(n)]


def write_jsonl(path: Path, recs: list[Any]) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for r in recs:
            f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def write_scenario(directory: Path, capture: Path, baseline: str, candidate: str | None, *,
                   name: str = "rel", speed: float = 1.0, replay: dict[str, Any] | None = None,
                   **top: Any) -> Path:
    """A scenario YAML beside the capture; one cheap gate, few bootstrap resamples."""
    d: dict[str, Any] = {
        "name": name,
        "traffic": {"path": capture.name if capture.parent == directory else str(capture), "speed": speed},
        "segments": {"route": {"path_template": True}},
        "targets": {"baseline": {"url": baseline}},
        "replay": {"allow": ["* /*"], "timeout_s": 1, **(replay or {})},
        "promotion_gates": {"error_rate": {"maximum": 0.01}},
        "analysis": {"bootstrap_resamples": 200},
        **top,
    }
    if candidate is not None:
        d["targets"]["candidate"] = {"url": candidate}
    else:
        d["replay"].setdefault("mode", "baseline-only")
    path = directory / f"{name}.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False), encoding="utf-8")
    return path


def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class HarnessProc:
    """`python -m harness ARGS` in a subprocess, output to files (no pipe can fill up and stall it)."""

    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None,
                 preexec_fn: Callable[[], None] | None = None, new_session: bool = False) -> None:
        self.cwd = cwd
        self.out_path = cwd / f"harness-{id(self)}.stdout"
        self.err_path = cwd / f"harness-{id(self)}.stderr"
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=cwd, stdin=subprocess.DEVNULL,
                                     stdout=self._out, stderr=self._err,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                                     preexec_fn=preexec_fn, start_new_session=new_session)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait(self, timeout: float = 120) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise AssertionError(f"harness did not finish within {timeout:g} s:\n{self.stdout}\n{self.stderr}") from None
        finally:
            self._out.close()
            self._err.close()

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def kill_if_running(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._out.close()
        self._err.close()

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(encoding="utf-8", errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(encoding="utf-8", errors="replace")


def run_harness(args: list[Any], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, str, str]:
    p = HarnessProc([str(a) for a in args], cwd, env)
    try:
        rc = p.wait(timeout)
    finally:
        p.kill_if_running()
    return rc, p.stdout, p.stderr


def the_run_dir(out_root: Path) -> Path:
    dirs = [d for d in out_root.iterdir() if d.is_dir()]
    assert len(dirs) == 1, f"expected one run folder under {out_root}, found {dirs}"
    return dirs[0]


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def query(run_dir: Path, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    con = duckdb.connect(str(run_dir / "results.duckdb"), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def run_status(run_dir: Path) -> tuple[str, str | None]:
    (status, reason), = query(run_dir, "select status, status_reason from runs")
    return status, reason


def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def assert_no_traceback(*texts: str) -> None:
    for t in texts:
        assert "Traceback" not in t, t


def check_run_folder(run_dir: Path, mode: str = "paired") -> None:
    """The run-folder contract (docs/architecture.md)."""
    assert_meets_contract(run_dir, mode)


def check_accounting(run_dir: Path, mode: str = "paired", *, legs_complete: bool = True) -> dict[str, Any]:
    """Accounting after a run, from summary.json and cross-checked in results.duckdb:
    captured = replayed + skipped (each with a reason) + bad, and legs = 2 x replayed in paired mode.

    legs_complete=False is for a run killed with SIGKILL, which never reached its end: the capture still
    balances, no request has more legs than versions, and the shortfall is flagged, never hidden."""
    counts = summary(run_dir)["counts"]
    per = PER_PAIR[mode]
    captured, replayed = counts["captured"], counts["replayed"]
    skipped_total, bad = counts["skipped_total"], counts["bad_records"]
    assert captured == replayed + skipped_total + bad, counts
    assert skipped_total == sum(counts["skipped"].values()), counts
    assert all(reason for reason in counts["skipped"]), counts  # every skip has a reason
    (n_req, n_legs, n_skip, n_bad), = query(run_dir, """select (select count(*) from requests), (select count(*) from legs),
        (select count(*) from skipped), (select count(*) from bad_records)""")
    assert (n_req, n_skip, n_bad) == (replayed, skipped_total, bad), (counts, n_req, n_skip, n_bad)
    assert counts["legs"] == n_legs
    assert not query(run_dir, "select request_id from legs group by request_id, version having count(*) > 1")
    assert query(run_dir, "select count(*) from skipped where reason is null or reason = ''") == [(0,)]
    if legs_complete:
        assert n_legs == per * replayed, counts
        assert counts["accounting_ok"] is True, counts
        check_run_folder(run_dir, mode)
    else:
        assert n_legs <= per * replayed, counts
        assert counts["accounting_ok"] is (n_legs == per * replayed), counts
    return counts
