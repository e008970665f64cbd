from __future__ import annotations

from pathlib import Path

import pytest

from harness.errors import ScenarioError
from harness.gate_config import parse_gates
from harness.scenario import (RESERVED_COLUMNS, AnalysisConfig, CanaryConfig, OutputConfig, ReplayConfig, SegmentSpec,
                              TargetConfig, TrafficConfig, load_scenario, scenario_json_schema)

REPO = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "cap.jsonl").write_text("")
    p = tmp_path / "s.yaml"
    p.write_text(text)
    return p


BASE = """name: t
traffic: {path: cap.jsonl}
targets:
  baseline: {url: "http://127.0.0.1:1"}
  candidate: {url: "http://127.0.0.1:2"}
"""


def test_demo_scenario_loads_with_the_seed_gates() -> None:
    s = load_scenario(REPO / "scenarios" / "fraud_demo.yaml")
    assert [g.name for g in s.gates] == ["latency_p95_ms", "error_rate", "schema_validation_pass_rate",
                                         "human_review_score", "gpu_oom_events"]
    p95 = s.gates[0]
    assert (p95.metric, p95.aggregation, p95.comparison, p95.threshold) == ("latency_ms", "p95", "relative", 0.10)
    assert s.traffic.path == (REPO / "scenarios" / "../captured_traffic/fraud_sample.jsonl")
    assert [x.name for x in s.segments] == ["route", "tenant", "geography", "request_size", "tenant_x_size"]


def test_unknown_key_names_the_key_and_line(tmp_path: Path) -> None:
    p = write(tmp_path, BASE + "replay:\n  mode: paired\n  timeout: 3\n")
    with pytest.raises(ScenarioError) as e:
        load_scenario(p)
    msg = str(e.value)
    assert "s.yaml:8" in msg and "unknown key 'timeout'" in msg and "replay" in msg


def test_unknown_gate_is_an_error_never_a_pass(tmp_path: Path) -> None:
    p = write(tmp_path, BASE + "promotion_gates:\n  latency_p97_ms: {maximum_regression_percent: 10}\n")
    with pytest.raises(ScenarioError, match="unknown gate 'latency_p97_ms'"):
        load_scenario(p)


@pytest.mark.parametrize("body, match", [
    ({"maximum_regresion_percent": 10}, "unknown key 'maximum_regresion_percent'"),
    ({"metric": "latency_seconds", "maximum": 1}, "unknown metric 'latency_seconds'"),
    ({"metric": "latency_ms", "aggregation": "p97", "maximum": 1}, "aggregation 'p97'"),
    ({"maximum": "ten"}, "expected a number"),
    ({"maximum": 1, "minimum": 0}, "exactly one condition"),
])
def test_gate_errors(body: dict, match: str) -> None:
    with pytest.raises(ScenarioError, match=match):
        parse_gates({"error_rate": body} if "metric" not in body else {"custom": body}, "s.yaml")


def test_general_gate_form() -> None:
    (g,) = parse_gates({"enterprise_p99": {"metric": "latency_ms", "aggregation": "p99", "segment": {"tenant": "enterprise"},
                                           "maximum_regression_percent": 20, "severity": "warning"}}, "s.yaml")
    assert (g.metric, g.aggregation, g.threshold, g.severity, g.segment, g.per_segment) == (
        "latency_ms", "p99", 0.20, "warning", {"tenant": "enterprise"}, False)


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="scenario file not found"):
        load_scenario(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(ScenarioError, match="bad.yaml:.*invalid YAML"):
        load_scenario(bad)


def test_wrong_type_is_reported_with_its_path(tmp_path: Path) -> None:
    p = write(tmp_path, BASE.replace("{path: cap.jsonl}", "{path: cap.jsonl, speed: fast}"))
    with pytest.raises(ScenarioError, match=r"s.yaml:2: traffic.speed: 'fast' is not of type 'number'"):
        load_scenario(p)


def test_paired_mode_needs_a_candidate(tmp_path: Path) -> None:
    p = write(tmp_path, BASE.replace('  candidate: {url: "http://127.0.0.1:2"}\n', ""))
    with pytest.raises(ScenarioError, match="targets.candidate is required"):
        load_scenario(p)
    p.write_text(p.read_text() + "replay: {mode: baseline-only}\n")
    assert load_scenario(p).versions == ("baseline",)


def test_aa_mode_sends_the_candidate_leg_to_the_baseline(tmp_path: Path) -> None:
    p = write(tmp_path, BASE + "replay: {mode: aa}\n")
    s = load_scenario(p)
    assert s.target_for("candidate").url == "http://127.0.0.1:1"


def test_cross_segment_must_name_known_segments(tmp_path: Path) -> None:
    p = write(tmp_path, BASE + "segments:\n  tenant: {header: X-T}\n  both: {cross: [tenant, size]}\n")
    with pytest.raises(ScenarioError, match="unknown segment 'size'"):
        load_scenario(p)


def test_published_schema_is_valid_json_schema() -> None:
    import jsonschema

    jsonschema.Draft202012Validator.check_schema(scenario_json_schema())


def test_tls_settings_are_checked_and_resolved(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    https = BASE.replace('"http://127.0.0.1:2"}', '"https://127.0.0.1:2", tls: {ca_file: ca.pem, server_name: m.internal}}')
    s = load_scenario(write(tmp_path, https))
    assert s.targets["candidate"].tls == {"ca_file": str((tmp_path / "ca.pem").resolve()), "server_name": "m.internal"}
    assert s.targets["baseline"].tls is None  # verified with the system's CAs
    with pytest.raises(ScenarioError, match=r"targets.candidate.tls.client_cert: file not found: .*nope.pem"):
        load_scenario(write(tmp_path, https.replace("ca_file: ca.pem", "client_cert: nope.pem")))
    with pytest.raises(ScenarioError, match="targets.candidate.tls.client_key: needs client_cert"):
        load_scenario(write(tmp_path, https.replace("ca_file: ca.pem", "client_key: ca.pem")))
    with pytest.raises(ScenarioError, match=r"targets.baseline.tls: set for a target that is not https://"):
        load_scenario(write(tmp_path, BASE.replace('"http://127.0.0.1:1"}', '"http://127.0.0.1:1", tls: {verify: false}}')))
    with pytest.raises(ScenarioError, match="verify"):
        load_scenario(write(tmp_path, https.replace("server_name: m.internal", "verify: no-thanks")))


def test_accept_encoding(tmp_path: Path) -> None:
    assert load_scenario(write(tmp_path, BASE)).replay.accept_encoding == "captured"
    s = load_scenario(write(tmp_path, BASE + "replay: {accept_encoding: identity}\n"))
    assert s.replay.accept_encoding == "identity"


def test_what_a_scenario_leaves_out_takes_the_dataclass_defaults(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, BASE + "segments: {tier: {header: X-Tier}}\n"))
    assert s.traffic == TrafficConfig(path=tmp_path / "cap.jsonl")
    assert s.replay == ReplayConfig()
    assert s.output == OutputConfig() and s.analysis == AnalysisConfig() and s.canary == CanaryConfig()
    assert s.targets["baseline"] == TargetConfig(name="baseline", url="http://127.0.0.1:1")
    assert s.segments == (SegmentSpec(name="tier", kind="header", arg="X-Tier"),)
    assert (s.description, s.owner, s.moves_money, s.customer_trust) == ("", None, False, False)
    # the connect timeout defaults to no more than the whole exchange's
    quick = load_scenario(write(tmp_path, BASE + "replay: {timeout_s: 0.4}\n"))
    assert quick.replay.connect_timeout_s == 0.4


@pytest.mark.parametrize("name", sorted(RESERVED_COLUMNS - {"route"}))
def test_a_segment_cannot_take_a_column_name(tmp_path: Path, name: str) -> None:
    with pytest.raises(ScenarioError, match=f"segments.{name}: the name is a column of the requests table"):
        load_scenario(write(tmp_path, BASE + f"segments: {{{name}: {{header: X-A}}}}\n"))


def test_a_paired_run_of_one_target_against_itself_is_named() -> None:
    from harness.scenario import scenario_from_dict

    def scenario(candidate: dict[str, object], mode: str = "paired") -> object:
        return scenario_from_dict({"name": "t", "traffic": {"path": "c.jsonl"}, "replay": {"mode": mode},
                                   "targets": {"baseline": {"url": "http://127.0.0.1:8001"}, "candidate": candidate}},
                                  check_files=False)

    assert "same target (http://127.0.0.1:8001)" in scenario({"url": "http://127.0.0.1:8001/"}).self_comparison()
    assert scenario({"url": "http://127.0.0.1:8002"}).self_comparison() is None
    # the same server under another spelling: another loopback name, a trailing slash
    assert scenario({"url": "http://localhost:8001"}).self_comparison() is not None
    assert scenario({"url": "http://[::1]:8001/"}).self_comparison() is not None
    assert scenario({"url": "http://127.0.0.2:8001"}).self_comparison() is None
    assert scenario({"url": "https://127.0.0.1:8001"}).self_comparison() is None
    # one load balancer, the version chosen by a header: two targets
    assert scenario({"url": "http://127.0.0.1:8001", "headers": {"X-Model": "v2"}}).self_comparison() is None
    assert scenario({"url": "http://127.0.0.1:8001"}, mode="aa").self_comparison() is None
