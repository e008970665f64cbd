"""What no gate judges is named next to the verdict: shape breaks, more failures, slower answers; and a run where
nothing changed names nothing (seeded simulations at the hardest null)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from harness.gate_config import parse_gates
from harness.gates.ungated import error_notes, latency_notes, shape_notes, ungated_notes

from answer_server import AnswerServer
from test_gates import pairs

ALPHA = 0.05
LATENCY_ONLY = parse_gates({"latency_p95_ms": {"maximum_increase": 0.10}}, "t")
ERRORS_ONLY = parse_gates({"error_rate": {"maximum": 0.01}}, "t")


def test_a_shape_break_no_gate_judges_is_named() -> None:
    outputs = {"compared": 3000, "fields": [
        {"path": "$.prediction", "kind": "missing", "n": 300, "reported": True},
        {"path": "$.score", "kind": "type", "n": 31, "reported": True},
        {"path": "$.debug", "kind": "extra", "n": 3000, "reported": True},  # new fields break nobody
        {"path": "$.label", "kind": "value", "n": 900, "reported": True},  # a changed value is the model's
        {"path": "$.trace", "kind": "missing", "n": 29, "reported": True},  # under 1 %
        {"path": "$.id", "kind": "missing", "n": 3000, "reported": False}]}  # ignored, or within A/A noise
    notes = shape_notes(outputs)
    assert [n.split(" is ")[0] for n in notes] == ["Not gated: $.prediction", "Not gated: $.score"]
    assert "10.0 % of the candidate's answers (300 of 3,000 compared pairs)" in notes[0]
    assert ungated_notes(ERRORS_ONLY, outputs, None, ALPHA, 200, 0) == notes
    assert ungated_notes(parse_gates({"field_diff_rate": {"maximum": 0.01}}, "t"), outputs, None, ALPHA, 200, 0) == []
    assert ungated_notes(parse_gates({"schema_validation_pass_rate": {"minimum": 0.995}}, "t"), outputs, None,
                         ALPHA, 200, 0) == []


def test_more_failures_without_an_error_gate_are_named_with_their_counts() -> None:
    data = pairs(4000, err_b=0.01, err_c=0.04, seed=3)
    notes = ungated_notes(LATENCY_ONLY, {}, data, ALPHA, 200, 0)
    assert len(notes) == 1 and notes[0].startswith("Not gated: the candidate failed ")
    kc, kb = int(data.error["candidate"].sum()), int(data.error["baseline"].sum())
    assert f"({kc:,} of 4,000 pairs) against the baseline's {100 * kb / 4000:.2f} %" in notes[0]
    assert "overall; an error_rate gate would judge it" in notes[0]
    assert ungated_notes(ERRORS_ONLY, {}, data, ALPHA, 200, 0) == []  # the gate judges it
    # below 1 % of requests, or no more than the baseline: nothing to say
    assert error_notes(pairs(4000, err_b=0.0, err_c=0.005, seed=3), ALPHA) == []
    assert error_notes(pairs(4000, err_b=0.05, err_c=0.05, seed=3), ALPHA) == []


def test_a_tenant_the_average_hides_is_named() -> None:
    n = 6000
    tenant = np.array(["big"] * 5400 + ["small"] * 600)
    data = pairs(n, segment=tenant, seed=5)
    rng = np.random.default_rng(5)
    data.error["candidate"] = (tenant == "small") & (rng.random(n) < 0.08)  # about 48: 0.8 % of the whole run
    assert data.error["candidate"].sum() / n < 0.01
    notes = error_notes(data, ALPHA)
    assert len(notes) == 1 and notes[0].endswith("in tenant=small; an error_rate gate would judge it")
    # an error gate scoped to another tenant judges that tenant only: the note stays (it was silenced)
    scoped = parse_gates({"big_errors": {"metric": "error_rate", "maximum": 0.01, "segment": {"tenant": "big"}}}, "t")
    assert ungated_notes(scoped, {}, data, ALPHA, 200, 0) == notes
    # ... and a gate on tenant=small itself judges it: no note
    own = parse_gates({"small_errors": {"metric": "error_rate", "maximum": 0.01, "segment": {"tenant": "small"}}}, "t")
    assert ungated_notes(own, {}, data, ALPHA, 200, 0) == []


def test_slower_answers_without_a_latency_gate_are_named() -> None:
    notes = latency_notes(pairs(4000, slow=1.3, seed=2), ALPHA, 400, 0)
    assert len(notes) == 1 and "p95 latency is 1.3" in notes[0] and "a latency_ms gate would judge it" in notes[0]
    assert latency_notes(pairs(4000, slow=1.0, seed=2), ALPHA, 400, 0) == []
    assert ungated_notes(parse_gates({"latency_p99_ms": {"maximum_increase": 0.2}}, "t"), {},
                         pairs(4000, slow=1.3, seed=2), ALPHA, 400, 0) == []


@pytest.mark.integration
def test_nothing_changed_names_nothing_in_at_most_alpha_of_runs() -> None:
    """Errors: equal failure rates above the 1 % floor (the hardest null), with a segment split. Latency: the
    candidate exactly 1.10x slower at every quantile, the tolerance itself. 400 and 200 seeded runs; the bound
    is alpha plus 2.33 standard errors of the simulated frequency."""
    runs = 400
    named = sum(bool(error_notes(pairs(2000, err_b=0.03, err_c=0.03, seed=s), ALPHA)) for s in range(runs))
    assert named / runs <= ALPHA + 2.33 * np.sqrt(ALPHA * (1 - ALPHA) / runs), named
    runs = 200
    named = sum(bool(latency_notes(pairs(1000, slow=1.10, seed=s), ALPHA, 300, s)) for s in range(runs))
    assert named / runs <= ALPHA + 2.33 * np.sqrt(ALPHA * (1 - ALPHA) / runs), named


@pytest.mark.integration
def test_a_real_run_with_only_a_latency_gate_names_the_candidates_failures(tmp_path: Path) -> None:
    """A candidate answering 500 to one request in twenty, judged by a latency gate alone: the verdict is the
    gate's, and the note next to it says what the gate did not look at."""
    from fault_server import FaultServer

    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    capture = tmp_path / "c.jsonl"
    paths = ["/status?code=500" if i % 20 == 0 else "/ok" for i in range(400)]
    capture.write_text("".join(json.dumps({"ts": 1_700_000_000 + i * 0.005, "method": "POST", "path": p,
                                           "body": {"x": i}}) + "\n" for i, p in enumerate(paths)))
    with AnswerServer(json.dumps({"prediction": "a"}).encode()) as baseline, FaultServer() as candidate:
        s = scenario_from_dict({
            "name": "ungated", "traffic": {"path": str(capture), "speed": 1},
            "targets": {"baseline": {"url": baseline.url}, "candidate": {"url": candidate.url}},
            "replay": {"allow": ["POST /*"]}, "promotion_gates": {"latency_p50_ms": {"maximum": 5000}}})
        result = run_scenario(s, tmp_path / "run", echo=lambda m: None)
    notes = [n for n in result.summary["notes"] if n.startswith("Not gated")]
    assert notes == ["Not gated: the candidate failed 5.00 % of requests (20 of 400 pairs) against the baseline's "
                     "0.00 % (20 failed only on the candidate, 0 only on the baseline) overall; an error_rate gate "
                     "would judge it"]
    html = (result.run_dir / "gate_report.html").read_text()
    assert "the candidate failed 5.00 % of requests" in html
