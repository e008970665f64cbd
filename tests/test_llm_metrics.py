"""LLM serving gates: goodput (TTFT and inter-token SLOs met together, as AIPerf counts it), output tokens
per second per stream, end-to-end latency per output token; per segment like every gate."""
from __future__ import annotations

import numpy as np
import pytest

from harness.analysis.dataset import PairData
from harness.analysis.llm_metrics import goodput, latency_per_token_ms, output_tokens_per_s
from harness.errors import ScenarioError
from harness.gate_config import parse_gates
from harness.gates import decide_verdict, evaluate_gates

NAN = float("nan")


def streams(n: int, *, ttft_c: float = 100.0, itl_c: float = 20.0, seed: int = 2) -> PairData:
    """Streamed legs: baseline TTFT ~100 ms and gaps ~20 ms; the candidate's centred on ttft_c / itl_c."""
    rng = np.random.default_rng(seed)
    tokens = rng.integers(2, 200, n).astype(float)
    prompt = np.where(rng.random(n) < 0.5, "<1024", "1024+")

    def version(ttft_ms: float, itl_ms: float) -> dict:
        ttft = ttft_ms * rng.lognormal(0, 0.3, n)
        itl = itl_ms * rng.lognormal(0, 0.2, n)
        service = ttft + itl * (tokens - 1)
        return {"ttft": ttft, "itl": itl, "service": service, "latency": service + 0.5}

    b, c = version(100.0, 20.0), version(ttft_c, itl_c)
    z = np.zeros(n, bool)
    return PairData(order_idx=np.arange(n), segments={"prompt": prompt},
                    latency={"baseline": b["latency"], "candidate": c["latency"]},
                    error={"baseline": z, "candidate": z.copy()}, timeout={"baseline": z, "candidate": z},
                    schema_judged={"baseline": z, "candidate": z}, schema_valid={"baseline": z, "candidate": z},
                    status_4xx={"baseline": z, "candidate": z}, score={"baseline": np.full(n, NAN), "candidate": np.full(n, NAN)},
                    n=n, ttft={"baseline": b["ttft"], "candidate": c["ttft"]},
                    inter_token={"baseline": b["itl"], "candidate": c["itl"]},
                    completion_tokens={"baseline": tokens, "candidate": tokens},
                    service={"baseline": b["service"], "candidate": c["service"]})


def small() -> PairData:
    """Four hand-made baseline legs: good; slow first token; a timeout; a one-token stream; a plain answer."""
    z = np.zeros(5, bool)
    return PairData(order_idx=np.arange(5), segments={}, latency={"baseline": np.array([300.0, 900, 2000, 50, 80])},
                    error={"baseline": np.array([False, False, True, False, False])}, timeout={"baseline": z},
                    schema_judged={"baseline": z}, schema_valid={"baseline": z}, status_4xx={"baseline": z},
                    score={"baseline": np.full(5, NAN)}, n=5,
                    ttft={"baseline": np.array([100.0, 700, NAN, 40, NAN])},
                    inter_token={"baseline": np.array([20.0, 10, NAN, NAN, NAN])},
                    completion_tokens={"baseline": np.array([11.0, 21, NAN, 1, 4])},
                    service={"baseline": np.array([300.0, 900, NAN, 40, 80])})


def test_per_leg_values_on_hand_made_legs() -> None:
    d = small()
    np.testing.assert_allclose(latency_per_token_ms(d)["baseline"], [300 / 11, 900 / 21, NAN, 50, 20])
    # (tokens - 1) / decode seconds: 10 tokens in 0.2 s, 20 in 0.2 s; one token or no stream: none
    np.testing.assert_allclose(output_tokens_per_s(d)["baseline"], [50, 100, NAN, NAN, NAN])
    good, judged = goodput(d, {"time_to_first_token_ms": 500, "inter_token_ms": 25})
    assert good["baseline"].tolist() == [True, False, False, True, False]
    assert judged["baseline"].tolist() == [True, True, True, True, False]  # the plain answer has no TTFT
    good, judged = goodput(d, {"latency_ms": 100})
    assert good["baseline"].tolist() == [False, False, False, True, True] and judged["baseline"].all()


def test_goodput_gate_fails_a_candidate_that_misses_the_ttft_slo_more_often() -> None:
    gates = parse_gates({"goodput": {"slo": {"time_to_first_token_ms": 200, "inter_token_ms": 30}, "minimum_delta": -0.02},
                         "goodput_floor": {"metric": "goodput", "slo": {"time_to_first_token_ms": 200}, "minimum": 0.9}},
                        "t")
    same = evaluate_gates(gates, streams(3000), None, n_resamples=200)
    worse = evaluate_gates(gates, streams(3000, ttft_c=160.0), None, n_resamples=200)
    by = {r.name: r for r in same if r.segment is None}
    assert by["goodput"].status == "pass" and by["goodput_floor"].status == "pass"
    assert by["goodput_floor"].candidate == pytest.approx(0.99, abs=0.01)  # P(lognormal(100, .3) <= 200)
    w = {r.name: r for r in worse if r.segment is None}
    assert w["goodput"].status == "fail" and w["goodput"].observed < -0.1
    assert w["goodput_floor"].status == "fail" and "goodput" in w["goodput_floor"].reason
    assert {r.segment for r in worse if r.name == "goodput"} == {None, "prompt=1024+", "prompt=<1024"}
    assert decide_verdict(worse).verdict == "BLOCK"


def test_latency_per_token_is_paired_like_latency_and_tokens_per_s_has_an_absolute_floor() -> None:
    gates = parse_gates({"latency_per_token_p95_ms": {"maximum_regression_percent": 10},
                         "speed": {"metric": "output_tokens_per_s", "aggregation": "p10", "minimum": 30}}, "t")
    ok = {r.name: r for r in evaluate_gates(gates, streams(2000), None, n_resamples=300) if r.segment is None}
    slow = {r.name: r for r in evaluate_gates(gates, streams(2000, itl_c=30.0), None, n_resamples=300)
            if r.segment is None}
    assert ok["latency_per_token_p95_ms"].status == "pass" and slow["latency_per_token_p95_ms"].status == "fail"
    # gaps ~20 ms: 50 tokens/s per stream, p10 above 30; gaps ~30 ms: p10 about 26 tokens/s, under 30
    assert ok["speed"].status == "pass" and 35 < ok["speed"].candidate < 50
    assert slow["speed"].status == "fail" and slow["speed"].candidate < 30


def test_llm_gate_config_errors_name_the_key() -> None:
    with pytest.raises(ScenarioError, match="goodput needs `slo:`"):
        parse_gates({"goodput": {"minimum": 0.9}}, "s.yaml")
    with pytest.raises(ScenarioError, match=r"slo: unknown key 'ttft'"):
        parse_gates({"goodput": {"slo": {"ttft": 5}, "minimum": 0.9}}, "s.yaml")
    with pytest.raises(ScenarioError, match=r"slo.inter_token_ms: expected a positive number"):
        parse_gates({"goodput": {"slo": {"inter_token_ms": -1}, "minimum": 0.9}}, "s.yaml")
    with pytest.raises(ScenarioError, match="only the goodput metric takes SLOs"):
        parse_gates({"error_rate": {"slo": {"latency_ms": 5}, "maximum": 0.1}}, "s.yaml")
    with pytest.raises(ScenarioError, match="goodput is a rate"):
        parse_gates({"goodput": {"slo": {"latency_ms": 5}, "maximum_regression_percent": 5}}, "s.yaml")
    with pytest.raises(ScenarioError, match="output_tokens_per_s takes an absolute"):
        parse_gates({"x": {"metric": "output_tokens_per_s", "maximum_regression_percent": 5}}, "s.yaml")
    [spec] = parse_gates({"latency_per_token_p99_ms": {"maximum": 40}}, "s.yaml")
    assert (spec.metric, spec.aggregation) == ("latency_per_token_ms", "p99")
