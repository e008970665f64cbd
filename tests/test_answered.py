"""No answers, no PASS: a baseline that answered too few of the replayed requests is no evidence, whatever the
gates say; a candidate doing worse than it still fails."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dataclasses import replace

from harness.answered import MIN_BASELINE_ANSWERED, apply_answered, baseline_shortfall
from harness.gates import decide_verdict, evaluate_gates
from harness.gate_config import parse_gates

from test_gates import RES, pairs

GATES = parse_gates({"error_rate": {"maximum": 0.01}, "latency_p95_ms": {"maximum_regression_percent": 10}}, "t")


def test_a_baseline_answering_half_the_requests_or_more_is_evidence() -> None:
    data = pairs(1000, seed=4)
    data.error["baseline"] = np.arange(1000) < 1000 * (1 - MIN_BASELINE_ANSWERED)  # exactly half answered
    assert baseline_shortfall(data, {"timeout": 500}) is None
    data.error["baseline"] = np.arange(1000) < 501
    text = baseline_shortfall(data, {"timeout": 501})
    assert text is not None and text.startswith("the baseline answered only 499 of 1,000 requests (49.9 %)")
    assert "(501 timeout)" in text
    # a refusal is no answer either: 4xx from both (a wrong path) is nobody's error, and no evidence
    data = pairs(1000, seed=4)
    data.status_4xx["baseline"] = data.status_4xx["candidate"] = np.ones(1000, bool)
    assert "answered only 0 of 1,000" in (baseline_shortfall(data, {"http_4xx": 1000}) or "")


def test_passes_become_inconclusive_and_only_a_candidate_worse_than_the_baseline_fails() -> None:
    same = pairs(2000, err_b=0.6, err_c=0.6, seed=7)  # both fail alike: the error gate fails on both
    results = evaluate_gates(GATES, same, RES, n_resamples=200)
    shortfall = baseline_shortfall(same, {"timeout": 1200})
    assert shortfall is not None
    judged = {r.name: r for r in apply_answered(results, shortfall, paired=True) if r.segment is None}
    assert {r.name: r.status for r in results if r.segment is None}["error_rate"] == "fail"
    assert judged["error_rate"].status == "inconclusive"
    assert "the candidate did no worse than the baseline, and the baseline answered only" in judged["error_rate"].reason
    assert judged["latency_p95_ms"].status != "pass"
    worse = pairs(2000, err_b=0.6, err_c=0.9, seed=7)
    judged = {r.name: r for r in apply_answered(evaluate_gates(GATES, worse, RES, n_resamples=200),
                                                baseline_shortfall(worse, {}), paired=True) if r.segment is None}
    assert judged["error_rate"].status == "fail"
    fine = pairs(2000, seed=7)
    assert apply_answered(evaluate_gates(GATES, fine, RES, n_resamples=200), baseline_shortfall(fine, {}), True) == \
        evaluate_gates(GATES, fine, RES, n_resamples=200)


def test_fails_that_stand_whatever_the_baseline_answered() -> None:
    """A pair metric's FAIL (measured on the pair, on its own scale), a FAIL with nothing judged on the baseline
    (NaN: a schema rate when the baseline answered no 2xx), and a single version's FAIL are the candidate's own."""
    same = pairs(2000, err_b=0.6, err_c=0.6, seed=7)
    fail = next(r for r in evaluate_gates(GATES, same, RES, n_resamples=200) if r.name == "error_rate" and r.segment is None)
    assert fail.status == "fail"
    shortfall = "the baseline answered only 800 of 2,000 requests"
    for stands in (replace(fail, metric="confidence_mean_shift", baseline=0.8, ci=(0.15, 0.25)),
                   replace(fail, baseline=float("nan"))):
        assert apply_answered([stands], shortfall, paired=True)[0].status == "fail"
    assert apply_answered([fail], shortfall, paired=True)[0].status == "inconclusive"
    assert apply_answered([fail], shortfall, paired=False)[0].status == "fail"
    # no gate, or only warnings, let a run without answers through: it holds
    assert decide_verdict(apply_answered([], shortfall, paired=True)).verdict == "HOLD"
    assert decide_verdict(apply_answered([replace(fail, severity="warning", status="pass")], shortfall,
                                         paired=True)).verdict == "HOLD"
    assert decide_verdict(apply_answered([fail], shortfall, paired=False)).verdict == "BLOCK"
    assert decide_verdict(apply_answered([replace(fail, status="pass")], None, paired=True)).verdict == "PROMOTE"


@pytest.mark.integration
def test_a_replay_whose_baseline_answers_nothing_holds(tmp_path: Path) -> None:
    """Both targets answer 404 (a target URL without the model's path): PROMOTE with every gate passing, before
    this rule. Both time out (replay.timeout_s too short): BLOCK on an error rate both versions share. Each is a
    HOLD (exit 2) that says what the baseline answered."""
    from fault_server import FaultServer

    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    def run(path: str, name: str) -> Any:
        capture = tmp_path / f"{name}.jsonl"
        capture.write_text("".join(json.dumps({"ts": 1_700_000_000 + i * 0.01, "method": "POST", "path": path,
                                               "body": {"x": i}}) + "\n" for i in range(500)))
        s = scenario_from_dict({
            "name": name, "traffic": {"path": str(capture), "speed": 1},
            "targets": {"baseline": {"url": baseline.url}, "candidate": {"url": candidate.url}},
            "replay": {"allow": ["POST /*"], "timeout_s": 0.3},
            "promotion_gates": {"error_rate": {"maximum": 0.01}, "latency_p95_ms": {"maximum_regression_percent": 10}}})
        return run_scenario(s, tmp_path / name, echo=lambda m: None)

    with FaultServer() as baseline, FaultServer() as candidate:
        wrong_path = run("/status?code=404", "wrong-path")
        too_short = run("/slow?ms=500", "too-short")
    for result, what in ((wrong_path, "(500 http_4xx)"), (too_short, "(500 timeout)")):
        assert (result.verdict, result.exit_code) == ("HOLD", 2)
        assert {g["status"] for g in result.summary["gates"] if g["segment"] is None} == {"inconclusive"}
        assert result.summary["notes"][0].startswith(
            f"No evidence: the baseline answered only 0 of 500 requests (0.0 %) with a readable 2xx {what}")
