"""Locust's web UI during a replay, in one process and as the master of 2 workers.

A user watches the run (the page and its stats show both versions' requests), adds users from the UI
(the schedule must still be sent once: no leg twice), then presses Stop: the replay stops like Ctrl-C,
every leg the target answered is in results.duckdb, and the run is incomplete (exit code 4)."""
from __future__ import annotations

import json
import urllib.parse
import urllib.request
from typing import Any

import pytest

from fault_server import FaultServer
from reliability_kit import (HarnessProc, assert_no_traceback, check_accounting, closed_port, query, records,
                             run_status, the_run_dir, wait_for, write_jsonl, write_scenario)

pytestmark = pytest.mark.integration

RATE = 60  # pairs per second of captured time: 20 s of traffic, stopped from the UI well before its end
N = 1200


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


def _post(url: str, form: dict[str, Any] | None = None) -> dict[str, Any]:
    data = urllib.parse.urlencode(form or {}).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data, method="POST"), timeout=30) as r:
        return json.loads(r.read())


def _requests_by_version(ui: str) -> dict[str, int]:
    _, body = _get(ui + "/stats/requests")
    return {s["method"]: s["num_requests"] for s in json.loads(body)["stats"] if s["name"] != "Aggregated"}


@pytest.fixture(scope="module", params=[0, 2], ids=["one-process", "processes-2"])
def stopped_from_ui(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    processes: int = request.param
    tmp = tmp_path_factory.mktemp(f"webui{processes}")
    port = closed_port()
    ui = f"http://127.0.0.1:{port}"
    seen: dict[str, Any] = {}
    with FaultServer() as srv:
        capture = write_jsonl(tmp / "c.jsonl", records(N, rate=RATE))
        scenario = write_scenario(tmp, capture, srv.url, srv.url)
        args = ["run", str(scenario), "--out", str(tmp / "reports"), "--web-ui", "--web-port", str(port)]
        p = HarnessProc(args + (["--processes", str(processes)] if processes else []), tmp)
        try:
            wait_for(lambda: srv.hits["/ok"] >= 60, 60, "the replay to be under way")
            seen["index"] = _get(ui + "/")
            # workers report their stats to the master every 3 s
            wait_for(lambda: min(_requests_by_version(ui).values(), default=0) > 0, 20,
                     "both versions in the UI's stats", interval=0.5)
            seen["stats"] = _requests_by_version(ui)
            seen["swarm"] = _post(ui + "/swarm", {"user_count": 3, "spawn_rate": 3})
            wait_for(lambda: srv.hits["/ok"] >= 300, 60, "more of the replay after adding users")
            seen["stop"] = _post(ui + "/stop")
            rc = p.wait(timeout=120)
        finally:
            p.kill_if_running()
        hits = srv.hits["/ok"]
    return {"rc": rc, "proc": p, "hits": hits, "seen": seen, "run_dir": the_run_dir(tmp / "reports")}


def test_ui_serves_the_replay_stats(stopped_from_ui: dict[str, Any]) -> None:
    seen = stopped_from_ui["seen"]
    status, page = seen["index"]
    assert status == 200 and b"locust" in page.lower()
    assert set(seen["stats"]) == {"baseline", "candidate"}
    assert all(n > 0 for n in seen["stats"].values()), seen["stats"]
    assert seen["swarm"]["success"] is True and seen["stop"]["success"] is True


def test_ui_stop_is_an_interrupt_that_keeps_every_leg(stopped_from_ui: dict[str, Any]) -> None:
    p, run_dir = stopped_from_ui["proc"], stopped_from_ui["run_dir"]
    assert stopped_from_ui["rc"] == 4, p.stderr
    assert_no_traceback(p.stdout, p.stderr)
    status, reason = run_status(run_dir)
    assert status == "incomplete" and "web UI" in (reason or ""), (status, reason)
    (legs, versions), = query(run_dir, "select count(*), count(distinct version) from legs")
    assert legs == stopped_from_ui["hits"] and versions == 2  # every answered request, each once
    assert 300 <= legs < 2 * N
    counts = check_accounting(run_dir, "paired")  # also: no (request, version) twice despite the extra users
    assert counts["skipped_total"] > 0 and all("web UI" in r for r in counts["skipped"]), counts["skipped"]
