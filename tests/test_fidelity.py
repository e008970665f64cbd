"""Item 3 of issue 15: a run whose load was not delivered may not PROMOTE."""
from __future__ import annotations

import json

import pytest

from harness.fidelity import apply_fidelity, assess_fidelity
from harness.gates import GateResult

from small_run import small_run


def _fid(lag: float = 1940.0, skew: float = 0.3, skipped: int = 224):
    return assess_fidelity({"lag_p99_ms": lag, "pair_skew_p99_ms": skew, "lag_bound_ms": 5,
                            "skipped_in_flight": skipped}, speed=4, max_in_flight=1000)


def _result(metric: str, status: str, **kw) -> GateResult:
    base = dict(name="g", metric=metric, aggregation="p95", segment=None, baseline=10.0, candidate=12.0, observed=1.2,
                threshold=0.1, threshold_text="<= +10 % vs baseline", ci=(1.1, 1.3), n=2000, status=status, reason="r.",
                severity="blocking", unit="ms", comparison="relative")
    base.update(kw)
    return GateResult(**base)


def test_the_reason_names_each_shortfall() -> None:
    f = _fid()
    assert not f.delivered
    assert f.reason == "load not delivered: send lag p99 1,940 ms > 5 ms; 224 requests skipped at the in-flight limit"
    assert any("traffic.speed (now 4)" in a for a in f.advice) and any("max_in_flight (now 1,000)" in a for a in f.advice)
    assert _fid(lag=1.0, skew=0.2, skipped=0).delivered


def test_latency_passes_turn_inconclusive_and_fails_stand_while_pairs_left_together() -> None:
    passed, failed = _result("latency_ms", "pass"), _result("latency_ms", "fail")
    out = apply_fidelity([passed, failed], _fid(), {None: 0}, 0.05)
    assert [r.status for r in out] == ["inconclusive", "fail"]
    assert "load not delivered: send lag p99 1,940 ms > 5 ms" in out[0].reason
    skewed = apply_fidelity([failed], _fid(skew=40.0), {None: 0}, 0.05)
    assert skewed[0].status == "inconclusive"


def test_rate_gates_count_skipped_requests_as_unknown_outcomes() -> None:
    # 0 errors in 2,000: passes <= 1 % alone; with 224 unknown outcomes counted as errors it does not
    err = _result("error_rate", "pass", aggregation="rate", observed=0.0, candidate=0.0, threshold=0.01,
                  threshold_text="<= 1 %", ci=(0.0, 0.0015), unit="fraction", comparison="absolute")
    assert apply_fidelity([err], _fid(), {None: 224}, 0.05)[0].status == "inconclusive"
    assert apply_fidelity([err], _fid(skipped=2), {None: 2}, 0.05)[0].status == "pass"
    # a clear failure (10 %) stays one whatever the skipped requests would have been
    bad = _result("error_rate", "fail", aggregation="rate", observed=0.1, candidate=0.1, threshold=0.01,
                  threshold_text="<= 1 %", ci=(0.09, 0.11), unit="fraction", comparison="absolute")
    assert apply_fidelity([bad], _fid(), {None: 224}, 0.05)[0].status == "fail"


@pytest.mark.integration
def test_requests_skipped_at_the_in_flight_limit_hold_the_release(tmp_path) -> None:
    # 400 pairs arriving at 200/s against servers that take 20 ms, at most 2 pairs in flight: half or more
    # are skipped. Without the fidelity rule this run PROMOTEs (no errors in the pairs sent).
    result = small_run(tmp_path, 400, delay_s=0.02, max_in_flight=2,
                       gates={"latency_p50_ms": {"maximum_regression_percent": 50}, "error_rate": {"maximum": 0.2}})
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["replay"]["skipped_in_flight"] > 50 and not summary["replay"]["delivered"]
    overall = {g["name"]: g for g in summary["gates"] if g["segment"] is None}
    assert overall["latency_p50_ms"]["status"] == "inconclusive"
    assert "load not delivered" in overall["latency_p50_ms"]["reason"]
    assert overall["error_rate"]["status"] == "inconclusive" and "skipped at the in-flight limit" in overall["error_rate"]["reason"]
    assert summary["verdict"] == "HOLD" and result.exit_code == 2
    assert any("max_in_flight" in a for a in summary["replay"]["advice"])
