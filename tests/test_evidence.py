"""Item 4 of issue 15: no evidence, no PASS. Each resource result names its sources; none is INCONCLUSIVE."""
from __future__ import annotations

import json
import subprocess

import pytest

from harness.evidence import apply_evidence, sources_for
from harness.gates import GateResult

from small_run import small_run

GATES = {"restarts": {"maximum": 0}, "oom_kills": {"maximum": 0}, "gpu_oom_events": {"maximum": 0},
         "error_rate": {"maximum": 0.05}}


def _count(metric: str) -> GateResult:
    return GateResult(name=metric, metric=metric, aggregation="count", segment=None, baseline=0, candidate=0,
                      observed=0, threshold=0, threshold_text="<= 0", ci=None, n=100, status="pass", reason="0 vs <= 0.",
                      severity="blocking", unit="events")


def test_sources_per_metric() -> None:
    watched = {"process": "PID 7", "kernel_log": True, "prometheus": None, "oom_counter": None, "nvml": False}
    assert sources_for("restarts", watched) == ["PID 7"]
    assert sources_for("oom_kills", watched) == ["kernel log with PID 7"]
    assert sources_for("gpu_oom_events", watched) == []  # no GPU seen, no OOM counter
    assert sources_for("oom_kills", dict(watched, kernel_log=False)) == []
    counter = {"process": None, "prometheus": "http://h/metrics", "oom_counter": "oom_total", "nvml": False}
    assert sources_for("gpu_oom_events", counter) == ["OOM counter oom_total at http://h/metrics"]
    assert sources_for("restarts", counter) == []


def test_no_source_is_inconclusive_and_sources_are_named() -> None:
    sources = {"baseline": {"process": "PID 1", "kernel_log": True},
               "candidate": {"process": None, "kernel_log": False}}
    out = apply_evidence([_count("oom_kills"), _count("restarts")], sources, ("baseline", "candidate"))
    assert [r.status for r in out] == ["inconclusive", "inconclusive"]
    assert out[0].reason.startswith("No evidence of OOM kills for the candidate")
    sources["candidate"] = {"process": "PID 2", "kernel_log": True}
    out = apply_evidence([_count("oom_kills")], sources, ("baseline", "candidate"))
    assert out[0].status == "pass" and out[0].reason.endswith("Sources: candidate: kernel log with PID 2.")


@pytest.mark.integration
def test_a_target_nothing_could_sample_holds(tmp_path) -> None:
    # 127.0.0.2 is loopback, but not an address harness looks for a local listener on: as a remote target
    result = small_run(tmp_path, gates=GATES, host="127.0.0.2")
    gates = {g["name"]: g for g in result.summary["gates"] if g["segment"] is None}
    for name in ("restarts", "oom_kills", "gpu_oom_events"):
        assert gates[name]["status"] == "inconclusive" and "No evidence" in gates[name]["reason"], gates[name]
    assert gates["error_rate"]["status"] == "pass"
    assert result.summary["verdict"] == "HOLD" and result.exit_code == 2


@pytest.mark.integration
def test_a_watched_local_target_names_its_sources(tmp_path) -> None:
    result = small_run(tmp_path, gates=GATES)  # the servers run in this process: found as the port's listener
    gates = {g["name"]: g for g in result.summary["gates"] if g["segment"] is None}
    assert gates["restarts"]["status"] == "pass" and "the process listening on" in gates["restarts"]["reason"]
    dmesg_ok = subprocess.run(["dmesg"], capture_output=True).returncode == 0
    assert gates["oom_kills"]["status"] == ("pass" if dmesg_ok else "inconclusive")
    assert gates["gpu_oom_events"]["status"] == "inconclusive"  # no GPU, no OOM counter
    stored = json.loads((result.run_dir / "summary.json").read_text())["gates"]
    assert [g["reason"] for g in stored if g["name"] == "restarts"] == [gates["restarts"]["reason"]]
