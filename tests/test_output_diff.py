"""Baseline against candidate, answer by answer, on real replays: field diffs (missing, extra, type,
value, key order), A/A noise (Diffy's rule) and ignore paths, labels (confusion, agreement, kappa,
flips), confidence drift, the gates on them, and summary["outputs"] from a full run."""
from __future__ import annotations

import json
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from openai_server import OpenAIServer
from replay_helpers import replay, scenario_dict, write_capture
from run_folder_contract import assert_meets_contract

from harness.analysis import stats
from harness.analysis.dataset import PairData, load_pairs
from harness.analysis.output_diff import (OutputDiffConfig, _judge_fields, compare_outputs, confidence_drift,
                                          covered_by, field_diffs, label_summary)
from harness.gate_config import parse_gates
from harness.gates import evaluate_gates

REPO = Path(__file__).resolve().parents[1]
T0 = 1_700_000_000.0
N = 200


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # the default backlog of 5 drops connections in a burst of requests


class ScoringServer:
    """A JSON model server on 127.0.0.1 whose answer is `answer(request body)`."""

    def __init__(self, answer: Callable[[dict[str, Any]], Any]) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                body = json.dumps(answer(req)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = _Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ScoringServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def baseline_answer(req: dict[str, Any]) -> dict[str, Any]:
    amount = float(req["amount"])
    return {"prediction": "fraud" if amount > 70 else "legit", "confidence": amount / 100, "model_version": "1.4",
            "request_id": str(uuid.uuid4()), "explain": {"top_feature": "amount", "weight": 0.5}}


def candidate_answer(req: dict[str, Any]) -> dict[str, Any]:
    """Renames the label "fraud" to "FRAUD", drops `explain`, shifts confidence up by 0.1."""
    out = baseline_answer(req)
    out["prediction"] = out["prediction"].replace("fraud", "FRAUD")
    out["confidence"] = min(1.0, out["confidence"] + 0.1)
    out["model_version"] = "2.0"
    del out["explain"]
    return out


def records(n: int = N) -> list[dict[str, Any]]:
    tiers = ["free", "pro"]
    return [{"ts": T0 + i * 0.004, "method": "POST", "path": "/score",
             "headers": {"Content-Type": "application/json", "X-Tier": tiers[i % 2]},
             "body": {"amount": (i * 37) % 100}} for i in range(n)]


def paired(tmp_path: Path, baseline: Callable, candidate: Callable, n: int = N, **scenario: Any):
    with ScoringServer(baseline) as b, ScoringServer(candidate) as c:
        cap = write_capture(tmp_path / "c.jsonl", records(n))
        sc = scenario_dict(cap, b.url, c.url, **scenario)
        sc["segments"]["tier"] = {"header": "X-Tier"}
        con, _ = replay(tmp_path, sc)
    return con, load_pairs(con, ("route", "tier"), ("baseline", "candidate"))


def by_key(fields: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(f["path"], f["kind"]): f for f in fields}


# ------------------------------------------------------------------------------------------ fields, labels

@pytest.mark.integration
def test_a_renamed_label_and_a_dropped_field_are_found(tmp_path: Path) -> None:
    con, data = paired(tmp_path, baseline_answer, candidate_answer)
    cmp = compare_outputs(con, data, OutputDiffConfig())
    s = cmp.summary
    assert s["pairs"] == N and s["compared"] == N and s["not_compared"] == {"error": 0, "not_json": 0}
    f = by_key(s["fields"])
    assert f[("$.explain", "missing")]["diff_rate"] == 1.0 and f[("$.explain", "missing")]["reported"]
    assert ("$.explain.top_feature", "missing") not in f  # counted once, at the top-most missing node
    n_fraud = sum(1 for r in records() if r["body"]["amount"] > 70)
    assert f[("$.prediction", "value")]["n"] == n_fraud
    assert f[("$.model_version", "value")]["diff_rate"] == 1.0
    assert f[("$.request_id", "value")]["reported"]  # without an A/A reference every difference counts
    assert all(x["aa_rate"] is None for x in s["fields"])
    lab = s["labels"]
    assert lab["confusion"] == {"fraud": {"FRAUD": n_fraud}, "legit": {"legit": N - n_fraud}}
    assert lab["only_baseline"] == ["fraud"] and lab["only_candidate"] == ["FRAUD"]
    assert lab["agreement"] == pytest.approx((N - n_fraud) / N) and lab["flip_rate"] == pytest.approx(n_fraud / N)
    assert lab["flip_rates"]["fraud"] == {"n": n_fraud, "flipped": n_fraud, "rate": 1.0, "mostly_to": "FRAUD"}
    assert lab["kappa"] == pytest.approx(stats.cohen_kappa(data.prediction["baseline"].decode(),
                                                           data.prediction["candidate"].decode()))
    conf = s["confidence"]
    assert conf["mean_shift"] > 0.05 and conf["ks"] > 0.05 and conf["psi"] > 0.05
    assert {(p["segment"], p["value"]) for p in conf["per_segment"]} >= {("tier", "free"), ("tier", "pro")}
    assert cmp.field_judged.all() and cmp.field_diff.all()


@pytest.mark.integration
def test_ignore_paths_key_order_and_type_changes(tmp_path: Path) -> None:
    def reordered(req: dict[str, Any]) -> dict[str, Any]:
        out = baseline_answer(req)
        out["confidence"] = str(out["confidence"])  # a type change
        return dict(reversed(list(out.items())))  # same keys, other order

    con, data = paired(tmp_path, baseline_answer, reordered, n=60)
    f = by_key(field_diffs(con, OutputDiffConfig()).fields)
    assert f[("$.confidence", "type")]["diff_rate"] == 1.0
    assert not any(kind == "order" for _, kind in f)  # key order is not significant unless configured
    cfg = OutputDiffConfig(ignore_paths=("$.request_id", "$['explain']"), key_order_paths=("$",))
    fd = field_diffs(con, cfg)
    f = by_key(fd.fields)
    assert f[("$", "order")]["reported"] and not f[("$.request_id", "value")]["reported"]
    assert f[("$.request_id", "value")]["ignored"]
    cfg = OutputDiffConfig(ignore_paths=("$.request_id", "$.confidence"))
    assert not field_diffs(con, cfg).differs.any()  # nothing else differs: every pair is clean


@pytest.mark.integration
def test_array_elements_fold_and_count_once(tmp_path: Path) -> None:
    con, _ = paired(tmp_path, lambda r: {"items": [{"a": 1, "b": [1, 2]}, {"a": 2}], "n": 1},
                    lambda r: {"items": [{"a": 1, "b": [1, 2, 3]}], "n": 1.0}, n=20)
    f = by_key(field_diffs(con, OutputDiffConfig()).fields)
    assert set(f) == {("$.items[*]", "missing"), ("$.items[*].b[*]", "extra")}  # 1 == 1.0: numbers compare as numbers
    assert f[("$.items[*]", "missing")]["n"] == 20


def test_diffys_rule_needs_both_margins() -> None:
    rows = [("$.ts", "value", 1000), ("$.score", "value", 330), ("$.label", "value", 100), ("$.rare", "extra", 2),
            ("$.new", "extra", 50)]
    aa = {("$.ts", "value"): 1.0, ("$.score", "value"): 0.30, ("$.label", "value"): 0.02}
    f = by_key(_judge_fields(rows, 1000, OutputDiffConfig(aa_rates=aa)))
    assert not f[("$.ts", "value")]["reported"]  # as noisy in A/A as here
    assert not f[("$.score", "value")]["reported"]  # 33 % vs 30 %: (0.33-0.30)/(0.63) = 5 % < 20 %
    assert f[("$.label", "value")]["reported"]  # 10 % vs 2 %
    assert f[("$.rare", "extra")]["aa_rate"] == 0.0 and f[("$.rare", "extra")]["reported"]  # 0.2 % > 0.03 %
    f = by_key(_judge_fields([("$.rare", "extra", 2)], 10_000, OutputDiffConfig(aa_rates={})))
    assert not f[("$.rare", "extra")]["reported"]  # 0.02 % of the pairs: under the absolute margin
    assert covered_by('$."a b"[*].c', ["$['a b'][0]"]) and not covered_by("$.ab", ["$.a"])


def test_label_and_confidence_helpers_on_known_values() -> None:
    b = np.array(["a", "a", "b", "b", None, "c"], dtype=object)
    c = np.array(["a", "b", "b", "b", "a", None], dtype=object)
    s = label_summary(b, c)
    assert s["n"] == 4 and s["agreement"] == 0.75 and s["confusion"] == {"a": {"a": 1, "b": 1}, "b": {"b": 2}}
    assert s["unlabelled"] == {"baseline": 1, "candidate": 1}
    assert s["kappa"] == pytest.approx(stats.cohen_kappa(["a", "a", "b", "b"], ["a", "b", "b", "b"]))
    assert label_summary(np.array([None, None], dtype=object), np.array([None, None], dtype=object)) is None
    d = confidence_drift(np.array([0.1, 0.2, np.nan, 0.4]), np.array([0.1, 0.2, 0.3, 0.4]))
    assert d["n"] == 3 and d["mean_shift"] == 0.0 and d["ks"] == 0.0


# ------------------------------------------------------------------------------------------ gates

OUTPUT_GATES = {
    "label_agreement": {"minimum": 0.95}, "label_flip_rate": {"maximum": 0.05}, "label_kappa": {"minimum": 0.8},
    "field_diff_rate": {"maximum": 0.02}, "confidence_psi": {"maximum": 0.1}, "confidence_ks": {"maximum": 0.1},
    "confidence_mean_shift": {"maximum": 0.02},
}


def _gate_status(con: Any, data: PairData, cfg: OutputDiffConfig) -> dict[str, str]:
    cmp = compare_outputs(con, data, cfg)
    data.field_diff, data.field_judged = cmp.field_diff, cmp.field_judged
    results = evaluate_gates(parse_gates(OUTPUT_GATES, "t"), data, None, n_resamples=400)
    return {r.name: r.status for r in results if r.segment is None}


@pytest.mark.integration
def test_output_gates_fail_on_the_incompatible_candidate_and_pass_on_itself(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    con, data = paired(tmp_path / "a", baseline_answer, candidate_answer)
    assert _gate_status(con, data, OutputDiffConfig()) == {name: "fail" for name in OUTPUT_GATES}
    con, data = paired(tmp_path / "b", baseline_answer, baseline_answer)
    got = _gate_status(con, data, OutputDiffConfig(ignore_paths=("$.request_id",)))
    assert got == {name: "pass" for name in OUTPUT_GATES}


def test_pair_metrics_take_absolute_limits_only() -> None:
    from harness.errors import ScenarioError

    with pytest.raises(ScenarioError, match="label_agreement compares the two versions already"):
        parse_gates({"label_agreement": {"minimum_delta": -0.01}}, "t")
    with pytest.raises(ScenarioError, match="is a rate"):
        parse_gates({"abstention_rate": {"maximum_regression_percent": 10}}, "t")
    g = parse_gates({"ttft_p95_ms": {"maximum_regression_percent": 10}, "inter_token_p50_ms": {"maximum": 50}}, "t")
    assert [(x.metric, x.aggregation) for x in g] == [("time_to_first_token_ms", "p95"), ("inter_token_ms", "p50")]


# ------------------------------------------------------------------------------------------ full runs

def _run(scenario: dict[str, Any], out: Path) -> Any:
    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    return run_scenario(scenario_from_dict(scenario), out, echo=lambda m: None, progress_every_s=60)


@pytest.mark.integration
def test_aa_noise_is_carried_by_the_aa_summary_and_not_reported(tmp_path: Path) -> None:
    """A field that differs in A/A too (a per-answer id) is noise; the dropped field and renamed label
    are not. The A/A run's summary carries its per-field rates for the paired run to read."""
    with ScoringServer(baseline_answer) as b, ScoringServer(candidate_answer) as c:
        cap = write_capture(tmp_path / "c.jsonl", records())
        aa = scenario_dict(cap, b.url, b.url, mode="aa")
        aa["name"] = "aa"
        aa_run = _run(aa, tmp_path / "runs")
        rates = {(x["path"], x["kind"]): x["rate"] for x in aa_run.summary["outputs"]["aa_field_rates"]["fields"]}
        assert rates == {("$.request_id", "value"): 1.0}
        sc = scenario_dict(cap, b.url, c.url, aa_reference=str(aa_run.run_dir))
        sc["promotion_gates"] = {"label_agreement": {"minimum": 0.95}, "field_diff_rate": {"maximum": 0.01}}
        run = _run(sc, tmp_path / "runs")
    out = run.summary["outputs"]
    assert set(out) >= {"fields", "labels", "confidence", "compared", "noise_rule", "llm"}
    f = by_key(out["fields"])
    assert f[("$.request_id", "value")]["aa_rate"] == 1.0 and not f[("$.request_id", "value")]["reported"]
    assert f[("$.explain", "missing")]["reported"] and f[("$.explain", "missing")]["aa_rate"] == 0.0
    assert f[("$.prediction", "value")]["reported"]
    assert set(out["labels"]) >= {"baseline_labels", "candidate_labels", "confusion", "agreement", "kappa", "flip_rate"}
    assert set(out["confidence"]) >= {"psi", "ks", "mean_shift", "per_segment"}
    assert out["noise_rule"]["aa_pairs"] == N and out["llm"] is None
    gates = {g["name"]: g["status"] for g in run.summary["gates"] if g["segment"] is None}
    assert gates == {"label_agreement": "fail", "field_diff_rate": "fail"} and run.verdict == "BLOCK"
    assert "aa_field_rates" not in out  # only A/A runs carry them
    assert_meets_contract(run.run_dir)


@pytest.mark.integration
def test_llm_metrics_gate_a_slower_abstaining_candidate(tmp_path: Path) -> None:
    with OpenAIServer(ttft_ms=2) as b, OpenAIServer(ttft_ms=40, mode="abstain") as c:
        recs = [{"ts": T0 + i * 0.01, "method": "POST", "path": "/v1/chat/completions",
                 "headers": {"Content-Type": "application/json"},
                 "body": {"model": "tiny-chat-1", "messages": [{"role": "user", "content": "hi there"}], "stream": True,
                          "stream_options": {"include_usage": True}}} for i in range(120)]
        cap = write_capture(tmp_path / "c.jsonl", recs)
        sc = scenario_dict(cap, b.url, c.url, timeout_s=5)
        for v in ("baseline", "candidate"):
            sc["targets"][v]["protocol"] = "openai"
        sc["output"] = {"detectors": {"abstention": {"pattern": "(?i)I'm sorry"}}}
        sc["promotion_gates"] = {"ttft_p50_ms": {"maximum_regression_percent": 10},
                                 "abstention_rate": {"maximum_increase": 0.01},
                                 "completion_tokens": {"metric": "completion_tokens", "maximum_regression_percent": 50}}
        run = _run(sc, tmp_path / "runs")
    gates = {g["name"]: g for g in run.summary["gates"] if g["segment"] is None}
    assert gates["ttft_p50_ms"]["status"] == "fail" and gates["ttft_p50_ms"]["candidate"] >= 40
    assert gates["abstention_rate"]["status"] == "fail" and gates["abstention_rate"]["observed"] == 1.0
    assert gates["completion_tokens"]["status"] == "fail"  # 8 words of refusal against 5
    llm = run.summary["outputs"]["llm"]
    assert llm["candidate"]["abstention_rate"] == 1.0 and llm["baseline"]["abstention_rate"] == 0.0
    assert llm["candidate"]["ttft_p50_ms"] >= 40 and llm["baseline"]["streamed"] == 120
    assert llm["baseline"]["finish_reasons"] == {"stop": 120}
