"""`harness shadow` with a candidate that is slow, that fails, and that is down: the users get the
baseline's answers, byte for byte, at the baseline's speed; copies beyond the in-flight limit are
dropped and counted; the run folder is a replay's (accounting, the contract checker, `harness report`)."""
from __future__ import annotations

import base64
import gzip
import http.client
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

from reliability_kit import REPO, check_accounting, closed_port, query, run_harness, summary, the_run_dir

pytestmark = pytest.mark.integration

SAMPLE = REPO / "captured_traffic" / "fraud_sample.jsonl"
TARGET = REPO / "tests" / "shadow_target.py"
CLIENT = REPO / "tests" / "capture_client.py"
N = 300


class Target:
    def __init__(self, tmp: Path, mode: str) -> None:
        port_file = tmp / f"{mode}-{time.monotonic_ns()}.port"
        self.proc = subprocess.Popen([sys.executable, str(TARGET), str(port_file), "--mode", mode])
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert self.proc.poll() is None and time.monotonic() < deadline, "target did not start"
            time.sleep(0.02)
        self.url = f"http://127.0.0.1:{port_file.read_text()}"

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def targets(tmp_path: Path) -> Iterator[Any]:
    started: list[Target] = []

    def start(mode: str) -> Target:
        t = Target(tmp_path, mode)
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()


def _client(url: str, out: Path) -> list[dict[str, Any]]:
    proc = subprocess.run([sys.executable, str(CLIENT), url, str(SAMPLE), str(N), str(out), "--secret",
                           "sk-shadow-secret-1234567890"], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [json.loads(x) for x in (out / "answered.jsonl").read_text().splitlines()]


def _scenario(tmp: Path, baseline: str, candidate: str, max_in_flight: int) -> Path:
    d = {
        "name": "live",
        "traffic": {"path": str(SAMPLE)},  # not read by a shadow run
        "segments": {"route": {"path_template": True}, "tenant": {"header": "X-Tenant-Tier"}},
        "targets": {"baseline": {"url": baseline}, "candidate": {"url": candidate}},
        "replay": {"allow": ["POST /v1/score", "POST /v1/accounts/*/score"], "timeout_s": 2.5,
                   "max_in_flight": max_in_flight},
        "promotion_gates": {"error_rate": {"maximum": 0.01}, "latency_p95_ms": {"maximum_regression_percent": 50}},
        "analysis": {"bootstrap_resamples": 200},
    }
    path = tmp / "live.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return path


def _shadow_and_clients(harness_proc: Any, tmp_path: Path, scenario: Path, baseline_url: str,
                        *options: str) -> tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]:
    """`harness shadow` on a free port with `options`, once listening the client's N requests through it,
    then the same requests straight to the baseline: (the shadow process, answers through, answers direct)."""
    port = closed_port()
    shadow = harness_proc(["shadow", scenario, "--listen", f"127.0.0.1:{port}", "--out", tmp_path / "reports",
                           *options], tmp_path)
    deadline = time.monotonic() + 30
    while "listening on" not in shadow.stdout:
        assert shadow.proc.poll() is None and time.monotonic() < deadline, shadow.stdout + shadow.stderr
        time.sleep(0.05)
    return (shadow, _client(f"http://127.0.0.1:{port}", tmp_path / "through"),
            _client(baseline_url, tmp_path / "direct"))


@pytest.mark.parametrize("candidate_mode", ["slow", "failing", "down"])
def test_shadow_never_costs_the_user_anything(tmp_path: Path, targets: Any, harness_proc: Any,
                                              candidate_mode: str) -> None:
    baseline = targets("ok")
    candidate_url = f"http://127.0.0.1:{closed_port()}" if candidate_mode == "down" else targets(candidate_mode).url
    # slow: a limit of 32 copies in flight against bursts of 64 forces drops
    scenario = _scenario(tmp_path, baseline.url, candidate_url, 32 if candidate_mode == "slow" else 1000)
    out = tmp_path / "reports"
    shadow, through, direct = _shadow_and_clients(harness_proc, tmp_path, scenario, baseline.url,
                                                  "--snapshot-every", "2")
    # while it runs, `harness report` works on a consistent snapshot (status incomplete: exit 4)
    live_dir = the_run_dir(out)
    deadline = time.monotonic() + 120
    while True:  # a snapshot cut after the traffic (snapshots are made one after the other, each in seconds)
        assert time.monotonic() < deadline and shadow.proc.poll() is None, shadow.stdout + shadow.stderr
        if (live_dir / "results.duckdb").exists():
            rc, _, err = run_harness(["report", live_dir], tmp_path)
            assert rc == 4, err
            live = summary(live_dir)
            assert live["run"]["status"] == "incomplete"
            if live["counts"]["captured"] == N and live["counts"]["replayed"] > 0:
                break
        time.sleep(0.5)
    assert live["counts"]["replayed"] > 0, live["counts"]
    # the snapshot carries the servers' resources sampled so far
    assert query(live_dir, "select count(*) > 0 from resources where version = 'baseline' and rss_mb > 0") == [(True,)]
    shadow.signal(signal.SIGTERM)
    code = shadow.wait(120)
    assert code in (0, 1, 2), shadow.stdout + shadow.stderr

    # the users' answers are the baseline's, byte for byte
    assert len(through) == len(direct) == N
    got = {a["seq"]: (a["status"], base64.b64decode(a["body_b64"])) for a in through}
    want = {a["seq"]: (a["status"], base64.b64decode(a["body_b64"])) for a in direct}
    assert got == want
    assert all(status == 200 for status, _ in got.values())
    run_dir = the_run_dir(out)
    counts = check_accounting(run_dir, "paired")
    skipped = counts["skipped"]
    mirrored_errors = dict(query(run_dir, "select error_kind, count(*) from legs where version = 'candidate' "
                                          "group by 1"))
    baseline_errors = query(run_dir, "select count(*) from legs where version = 'baseline' and error_kind is not null")
    assert baseline_errors == [(0,)]
    if candidate_mode == "slow":
        assert mirrored_errors.get("timeout", 0) == counts["replayed"], mirrored_errors
        # ... and the users of the mirrored requests did not wait for the candidate's copy (each >= 2.5 s, its
        # timeout). A loaded machine may hold a few answers for a second (a SYN retried), not that long.
        mirrored = {int(v) for (h,) in query(run_dir, "select headers_json from requests")
                    for k, v in json.loads(h) if k.lower() == "x-client-seq"}
        latency = {a["seq"]: a["latency_ms"] for a in through}
        assert len(mirrored) == counts["replayed"] >= 30
        waited = [latency[s] for s in mirrored if latency[s] >= 2500.0]
        assert len(waited) < 0.1 * len(mirrored), (
            sorted((s, round(latency[s])) for s in mirrored if latency[s] >= 2500.0),
            sorted((s, round(v)) for s, v in latency.items() if v >= 2500.0 and s not in mirrored))
        assert skipped.get("not mirrored: copies in flight at replay.max_in_flight", 0) > 0, skipped
    elif candidate_mode == "failing":
        assert mirrored_errors.get("http_5xx", 0) > 0 and mirrored_errors.get("reset", 0) > 0, mirrored_errors
    else:
        assert mirrored_errors == {"connect": counts["replayed"]}, mirrored_errors
    assert summary(run_dir)["verdict"] == "BLOCK"
    # the judgement is rebuilt from results.duckdb alone, as for a replay
    rc, _, err = run_harness(["report", run_dir], tmp_path)
    assert rc == 1, err
    # the shadow capture is kept, redacted, and replayable
    assert b"sk-shadow-secret" not in gzip.decompress((run_dir / "shadow_traffic.jsonl.gz").read_bytes())


def test_keep_serving_answers_past_the_runs_end(tmp_path: Path, targets: Any, harness_proc: Any) -> None:
    """--max-requests 100 --keep-serving: the run folder is written once 100 requests are mirrored, and the
    users' requests after that are still answered from the baseline, byte for byte, none refused (without
    --keep-serving the listener closed at the limit and 199 of 400 requests failed); nothing past the end is
    in the run. SIGTERM then ends the proxy with the run's verdict."""
    baseline = targets("ok")
    scenario = _scenario(tmp_path, baseline.url, targets("ok").url, 1000)
    out = tmp_path / "reports"
    shadow, through, direct = _shadow_and_clients(harness_proc, tmp_path, scenario, baseline.url,
                                                  "--snapshot-every", "0", "--max-requests", "100", "--keep-serving")
    deadline = time.monotonic() + 120
    while "verdict" not in shadow.stdout:
        assert shadow.proc.poll() is None and time.monotonic() < deadline, shadow.stdout + shadow.stderr
        time.sleep(0.2)
    assert "still answering from the baseline" in shadow.stdout
    assert shadow.proc.poll() is None  # serving on after the run folder is written
    shadow.signal(signal.SIGTERM)
    assert shadow.wait(60) in (0, 2), shadow.stdout + shadow.stderr
    assert len(through) == len(direct) == N
    got = {a["seq"]: (a["status"], base64.b64decode(a["body_b64"])) for a in through}
    assert got == {a["seq"]: (a["status"], base64.b64decode(a["body_b64"])) for a in direct}
    run_dir = the_run_dir(out)
    counts = check_accounting(run_dir, "paired")
    assert counts["replayed"] == 100 and summary(run_dir)["run"]["status"] == "complete"


def test_health_checks_and_preflights_are_judged_by_their_status_alone(tmp_path: Path, targets: Any,
                                                                      harness_proc: Any) -> None:
    """A live shadow mirrors HEAD and OPTIONS (a load balancer's health checks, a browser's preflights): their
    answers have no body (HEAD) or none of the model's (OPTIONS: 204), and read as the model's output they were
    an empty "invalid JSON" on both legs, 2/3 of this run's legs in error and a BLOCK no model caused."""
    baseline, candidate = targets("ok"), targets("ok")
    scenario = _scenario(tmp_path, baseline.url, candidate.url, 1000)
    spec = yaml.safe_load(scenario.read_text())
    spec["promotion_gates"]["restarts"] = {"maximum": 0}
    scenario.write_text(yaml.safe_dump(spec, sort_keys=False))
    port = closed_port()
    shadow = harness_proc(["shadow", scenario, "--listen", f"127.0.0.1:{port}", "--out", tmp_path / "reports",
                           "--snapshot-every", "0"], tmp_path)
    deadline = time.monotonic() + 30
    while "listening on" not in shadow.stdout:
        assert shadow.proc.poll() is None and time.monotonic() < deadline, shadow.stdout + shadow.stderr
        time.sleep(0.05)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    for i in range(30):
        for method in ("POST", "HEAD", "OPTIONS"):
            body = json.dumps({"amount": i}).encode() if method == "POST" else None
            conn.request(method, "/v1/score", body=body, headers={"Content-Type": "application/json"})
            answer = conn.getresponse()
            answer.read()
            assert answer.status == {"POST": 200, "HEAD": 200, "OPTIONS": 204}[method]
    conn.close()
    time.sleep(0.5)  # the copies' answers
    shadow.signal(signal.SIGTERM)
    assert shadow.wait(120) in (0, 1, 2), shadow.stdout + shadow.stderr
    run_dir = the_run_dir(tmp_path / "reports")
    legs = dict(query(run_dir, "select r.method || ' ' || l.version, count(*) from legs l join requests r "
                               "using (request_id) where l.error_kind is null group by 1"))
    assert legs == {f"{m} {v}": 30 for m in ("POST", "HEAD", "OPTIONS") for v in ("baseline", "candidate")}
    assert query(run_dir, "select count(*) from legs where error_kind is not null") == [(0,)]
    error_gate = [g for g in summary(run_dir)["gates"] if g["name"] == "error_rate" and g["segment"] is None]
    assert error_gate and error_gate[0]["status"] != "fail", error_gate
    # both servers' resources were sampled, as a replay samples them (a shadow run had none: every resource gate
    # was inconclusive, so a scenario with one could only HOLD)
    pids = dict(query(run_dir, "select version, max(pid) from resources where rss_mb > 0 group by 1"))
    assert pids == {"baseline": baseline.proc.pid, "candidate": candidate.proc.pid}
    restarts = [g for g in summary(run_dir)["gates"] if g["name"] == "restarts" and g["segment"] is None]
    assert restarts and restarts[0]["status"] == "pass", restarts
