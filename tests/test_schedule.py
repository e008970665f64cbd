"""Canary schedule: sizes from the run's own evidence, durations, rollback conditions, and exports
that Argo Rollouts, Flagger and Istio accept.

How the exports are validated. No package from PyPI or Debian here ships the CRD schemas of these projects
(checked with `pip download --no-deps`: kubernetes-validate carries core Kubernetes schemas only;
cloudcoil-models-istio is pydantic models that need cloudcoil and pydantic, which harness does not depend on;
cloudcoil-models-fluxcd covers the Flux controllers, not Flagger; `apt-cache search` for argo-rollouts, flagger
and istio finds nothing). So tests/data/schedule/*.schema.json hold the required fields and types read from
each project's published CRD and validation code, each schema's ``$comment`` naming its source:

- Argo Rollouts: argoproj/argo-rollouts manifests/crds/rollout-crd.yaml and analysis-template-crd.yaml
  (openAPIV3Schema), pkg/apis/rollouts/validation/validation.go, pkg/apis/rollouts/v1alpha1/types.go
  (commit 9f8d111d8f8e);
- Flagger: fluxcd/flagger artifacts/flagger/crd.yaml (Canary, MetricTemplate), pkg/apis/flagger/v1beta1/canary.go,
  pkg/controller/scheduler_metrics.go (commit 15bd6ad555e6);
- Istio: istio/api kubernetes/customresourcedefinitions.gen.yaml (VirtualService, networking.istio.io/v1) and
  networking/v1alpha3/virtual_service.proto (commit b8f8791d9653).

The schemas are stricter than the CRDs in one way: unknown fields fail (the API server would silently prune
them, so a misspelt field would otherwise pass unnoticed).
"""
from __future__ import annotations

import copy
import json
import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import duckdb
import jsonschema
import numpy as np
import pytest
import yaml
from referencing import Registry, Resource

from harness import cli
from harness.analysis import stats
from harness.analysis.dataset import load_run_info
from harness.errors import StoreError, UsageError
from harness.scenario import Scenario, load_scenario, scenario_from_dict
from harness.schedule import (DAILY_CYCLE_S, RESOURCE_SOAK_S, build_schedule, export_schedule, format_duration,
                              load_schedule, traffic_profile, write_schedule)

SCHEMAS = Path(__file__).parent / "data" / "schedule"
REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def run_dir(demo_run: Any) -> Path:
    return Path(demo_run.run_dir)


@pytest.fixture(scope="module")
def summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture()
def con(run_dir: Path) -> Any:
    c = duckdb.connect(str(run_dir / "results.duckdb"), read_only=True)
    yield c
    c.close()


@pytest.fixture()
def scenario(con: Any) -> Scenario:
    return scenario_from_dict(load_run_info(con).config, check_files=False)


@pytest.fixture()
def schedule(summary: dict[str, Any], scenario: Scenario, con: Any) -> dict[str, Any]:
    return build_schedule(summary, scenario, con)


def _validator(name: str) -> jsonschema.Draft202012Validator:
    resources = [(p.name, Resource.from_contents(json.loads(p.read_text()))) for p in SCHEMAS.glob("*.schema.json")]
    schema = json.loads((SCHEMAS / name).read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema, registry=Registry().with_resources(resources))


def _validate(doc: dict[str, Any], name: str) -> None:
    errors = sorted(_validator(name).iter_errors(doc), key=lambda e: list(map(str, e.absolute_path)))
    assert not errors, "\n".join(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in errors[:10])


def _docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def _live(schedule: dict[str, Any]) -> list[dict[str, Any]]:
    return [s for s in schedule["steps"] if s["kind"] == "live"]


# ------------------------------------------------------------------------------------------- the schedule

@pytest.mark.integration
def test_steps_in_order_with_the_scenarios_shares(schedule: dict[str, Any], scenario: Scenario) -> None:
    steps = schedule["steps"]
    assert steps[0]["name"] == "shadow" and steps[0]["traffic_percent"] == 0 and steps[0]["status"] == "done"
    assert [s["traffic_percent"] for s in steps[1:]] == [float(p) for p in scenario.canary.steps_percent]
    assert [s["name"] for s in steps[1:]] == [f"canary-{p:g}" for p in scenario.canary.steps_percent]
    assert schedule["owner"] == scenario.owner == "fraud-ml-oncall"


@pytest.mark.integration
def test_shadow_step_records_the_replays_evidence(schedule: dict[str, Any], summary: dict[str, Any]) -> None:
    ev = schedule["steps"][0]["evidence"]
    assert ev["requests_replayed"] == summary["counts"]["replayed"]
    assert ev["verdict"] == summary["verdict"]
    assert sum(ev["gate_results"].values()) == len(summary["gates"])
    first = {g["name"]: g for g in reversed(summary["gates"])}  # first result per gate
    for g in ev["gates"]:
        assert g["status"] == first[g["gate"]]["status"] and g["n"] == first[g["gate"]]["n"]


@pytest.mark.integration
def test_p95_requests_come_from_the_observed_baseline_spread(schedule: dict[str, Any], con: Any,
                                                              scenario: Scenario) -> None:
    lat = con.execute("""select l.latency_ms from legs l join requests r using (request_id)
                         where l.version = 'baseline' and not r.warmup and l.latency_ms > 0""").fetchnumpy()["latency_ms"]
    sigma = float(np.std(np.log(np.asarray(lat, dtype=float)), ddof=1))
    logs = np.log(np.asarray(lat, dtype=float))
    expected = stats.n_quantile_ratio_from_sample(logs, 1.10, 0.95, scenario.analysis.alpha, scenario.canary.power)
    p95 = next(s for s in schedule["sizing"] if s["gate"] == "latency_p95_ms")
    assert p95["latency_log_sd"] == pytest.approx(sigma, rel=1e-9)
    assert p95["latency_log_density"] == pytest.approx(stats.log_quantile_density(logs, 0.95), rel=1e-6)
    assert abs(p95["n_formula"] - expected) <= 1
    assert p95["n"] == p95["requests"] == max(p95["n_formula"], 400)  # 20 requests above the p95
    assert "n_quantile_ratio_from_density" in p95["basis"] and "Hall-Sheather" in p95["basis"]


@pytest.mark.integration
def test_rate_and_score_gates_are_sized_from_observed_values(schedule: dict[str, Any], summary: dict[str, Any],
                                                             scenario: Scenario, con: Any) -> None:
    first = {g["name"]: g for g in reversed(summary["gates"])}
    alpha, power = scenario.analysis.alpha, scenario.canary.power
    err = next(s for s in schedule["sizing"] if s["gate"] == "error_rate")
    assert err["n"] == stats.n_one_proportion_bound(first["error_rate"]["baseline"], 0.01, alpha, power)
    sch = next(s for s in schedule["sizing"] if s["gate"] == "schema_validation_pass_rate")
    n = stats.n_one_proportion_bound(1 - first["schema_validation_pass_rate"]["baseline"], 0.005, alpha, power)
    assert sch["n"] == n and sch["requests"] == math.ceil(n / sch["judged_fraction"])
    review = next(s for s in schedule["sizing"] if s["gate"] == "human_review_score")
    scores = {v: np.asarray(con.execute("select score from scores where version = ?", [v]).fetchnumpy()["score"],
                            dtype=float) for v in ("baseline", "candidate")}
    sd = {v: float(np.std(x, ddof=1)) if len(x) >= 2 else math.nan for v, x in scores.items()}
    if all(math.isfinite(x) for x in sd.values()):  # the demo's review panel scores both versions
        sd_diff = math.sqrt(sd["baseline"] ** 2 + sd["candidate"] ** 2)
        assert review["requests"] == stats.n_mean_difference(sd_diff, 0.02, alpha, power)
    else:
        assert review["requests"] is None and "scores import" in review["basis"]


@pytest.mark.integration
def test_durations_are_requests_over_share_times_rate(schedule: dict[str, Any], con: Any) -> None:
    n, span = con.execute("""select count(*), epoch(max(captured_at)) - epoch(min(captured_at))
                             from requests where loop = 0""").fetchone()
    rate = n / span
    assert schedule["traffic"]["production_rps"] == pytest.approx(rate, rel=1e-9)
    for step in _live(schedule):
        w = step["traffic_percent"] / 100
        for g in step["gates"]:
            assert g["duration_s"] == pytest.approx(g["requests"] / (w * rate), abs=0.06)
        assert step["statistical_duration_s"] == max(g["duration_s"] for g in step["gates"] if not g["manual"])
        assert step["min_duration_s"] >= step["statistical_duration_s"]
        assert step["min_duration_s"] % 60 == 0 and step["min_duration"] == format_duration(step["min_duration_s"])


@pytest.mark.integration
def test_moves_money_lengthens_the_first_live_step(summary: dict[str, Any], scenario: Scenario, con: Any) -> None:
    assert scenario.moves_money  # the demo scenario: risk: {moves_money: true}
    # at the demo capture's own rate (about 17 requests/s) the first step already takes more than a day
    scenario = replace(scenario, canary=replace(scenario.canary, production_rps=500.0))
    risky = _live(build_schedule(summary, scenario, con))
    plain = _live(build_schedule(summary, replace(scenario, moves_money=False, customer_trust=False), con))
    trust = _live(build_schedule(summary, replace(scenario, moves_money=False, customer_trust=True), con))
    assert plain[0]["min_duration_s"] < DAILY_CYCLE_S
    assert risky[0]["min_duration_s"] == trust[0]["min_duration_s"] == DAILY_CYCLE_S
    assert any(a["kind"] == "risk" for a in risky[0]["adjustments"])
    assert [s["min_duration_s"] for s in risky[1:]] == [s["min_duration_s"] for s in plain[1:]]


@pytest.mark.integration
def test_resource_heavy_candidate_soaks_every_live_step(summary: dict[str, Any], scenario: Scenario, con: Any) -> None:
    light, heavy = copy.deepcopy(summary), copy.deepcopy(summary)
    base = {"peak_rss_mb": 100.0, "peak_gpu_memory_mb": None}
    light["resources"] = {"baseline": base, "candidate": {"peak_rss_mb": 110.0, "peak_gpu_memory_mb": None}}
    heavy["resources"] = {"baseline": base, "candidate": {"peak_rss_mb": 300.0, "peak_gpu_memory_mb": None}}
    s_light = build_schedule(light, scenario, con)
    s_heavy = build_schedule(heavy, scenario, con)
    assert not s_light["resources"]["heavy"] and s_heavy["resources"]["heavy"]
    assert s_heavy["resources"]["ratio"] == pytest.approx(3.0)
    assert all(s["min_duration_s"] >= RESOURCE_SOAK_S for s in _live(s_heavy))
    assert any(s["min_duration_s"] < RESOURCE_SOAK_S for s in _live(s_light))  # the short, high-share steps


@pytest.mark.integration
def test_production_rps_overrides_the_captured_rate(summary: dict[str, Any], scenario: Scenario, con: Any) -> None:
    fast = replace(scenario, canary=replace(scenario.canary, production_rps=500.0), moves_money=False)
    s = build_schedule(summary, fast, con)
    assert s["traffic"]["production_rps"] == 500.0 and "canary.production_rps" in s["traffic"]["basis"]
    step = _live(s)[0]
    assert step["statistical_duration_s"] == pytest.approx(step["requests_needed"] / (0.01 * 500.0), abs=0.06)


@pytest.mark.integration
def test_segment_scoped_and_delta_gates(summary: dict[str, Any], con: Any) -> None:
    config = copy.deepcopy(load_run_info(con).config)
    config["promotion_gates"] = {
        "enterprise_p95": {"metric": "latency_ms", "aggregation": "p95", "segment": {"tenant": "enterprise"},
                           "maximum_regression_percent": 10},
        "timeout_increase": {"metric": "timeout_rate", "maximum_increase": 0.005},
        "nowhere_p95": {"metric": "latency_ms", "segment": {"tenant": "no_such_tenant"}, "maximum_regression_percent": 10},
    }
    scenario = scenario_from_dict(config, check_files=False)
    p0 = 0.001
    gates = [{"name": "timeout_increase", "segment": None, "status": "pass", "baseline": p0, "n": 300, "reason": "ok"}]
    s = build_schedule(dict(summary, gates=gates), scenario, con)
    sizing = {z["gate"]: z for z in s["sizing"]}
    share = con.execute("select avg((tenant = 'enterprise')::int) from requests where not warmup").fetchone()[0]
    ent = sizing["enterprise_p95"]
    assert ent["segment"] == "tenant=enterprise" and ent["scope_share"] == pytest.approx(share)
    lat = con.execute("""select l.latency_ms from legs l join requests r using (request_id) where l.version = 'baseline'
                         and not r.warmup and l.latency_ms > 0 and r.tenant = 'enterprise'""").fetchnumpy()["latency_ms"]
    expected = stats.n_quantile_ratio_from_sample(np.log(np.asarray(lat, dtype=float)), 1.1, 0.95, 0.05, 0.8)
    assert abs(ent["n_formula"] - expected) <= 1
    rate = s["traffic"]["production_rps"]
    step = _live(s)[1]
    dur = next(g["duration_s"] for g in step["gates"] if g["gate"] == "enterprise_p95")
    assert dur == pytest.approx(ent["requests"] / (0.05 * rate * share), abs=0.06)
    inc = sizing["timeout_increase"]
    assert inc["n"] == stats.n_two_proportions(p0, p0 + 0.005, 0.05, 0.8)
    p10 = con.execute("""select avg((coalesce(baseline_error_kind = 'timeout', false)
                                     and not coalesce(candidate_error_kind = 'timeout', false))::int)
                         from pairs where not warmup""").fetchone()[0]
    assert inc["shadow_paired_n"] == stats.n_mcnemar(p10, p10 + 0.005, 0.05, 0.8)
    assert sizing["nowhere_p95"]["scope_share"] == 0.0
    assert all(g["gate"] != "nowhere_p95" or g["duration_s"] is None for g in step["gates"])
    conds = {c["gate"]: c for c in s["rollback"]["conditions"]}
    assert conds["timeout_increase"]["rollback_when"] == "canary timeout rate - stable timeout rate > 0.005"
    assert "tenant=enterprise" in conds["enterprise_p95"]["basis"]
    for fmt, schema in (("argo", "argo-analysistemplate.schema.json"), ("flagger", "flagger-metrictemplate.schema.json")):
        for doc in _docs(export_schedule(s, fmt))[1:]:
            _validate(doc, schema)


@pytest.mark.integration
def test_smallest_segment_and_how_long_each_step_needs_for_it(schedule: dict[str, Any],
                                                              summary: dict[str, Any]) -> None:
    totals: dict[str, int] = {}
    for s in summary["segments"]:
        totals[s["segment_name"]] = totals.get(s["segment_name"], 0) + s["n"]
    smallest = min(s["n"] / totals[s["segment_name"]] for s in summary["segments"] if s["n"])
    seg = schedule["smallest_segment"]
    assert seg["share"] == pytest.approx(smallest)
    rate = schedule["traffic"]["production_rps"]
    for step in _live(schedule):
        ss = step["smallest_segment"]
        expected = seg["requests_needed"] / (step["traffic_percent"] / 100 * rate * seg["share"])
        assert ss["duration_s"] == pytest.approx(expected, abs=0.06)
        assert ss["covered_in_step"] == (ss["duration_s"] <= step["min_duration_s"])


@pytest.mark.integration
def test_verdict_other_than_promote_says_do_not_start(schedule: dict[str, Any], summary: dict[str, Any],
                                                     scenario: Scenario, con: Any) -> None:
    if summary["verdict"] == "PROMOTE":
        assert schedule["banner"].startswith("ready to start")
    else:
        assert schedule["banner"].startswith(f"do not start: verdict {summary['verdict']}")
        assert not schedule["start_allowed"]
    assert len(_live(schedule)) == 5  # computed all the same
    ok = dict(summary, verdict="PROMOTE", verdict_reasons=["all pass"])
    promoted = build_schedule(ok, scenario, con)
    assert promoted["banner"].startswith("ready to start") and promoted["start_allowed"]
    blocked = build_schedule(dict(summary, verdict="BLOCK", verdict_reasons=["error rate 2 % > 1 %"]), scenario, con)
    assert blocked["banner"] == "do not start: verdict BLOCK — error rate 2 % > 1 %"
    assert export_schedule(blocked, "yaml").splitlines()[1] == "# do not start: verdict BLOCK — error rate 2 % > 1 %"


@pytest.mark.integration
def test_rollback_conditions_carry_live_thresholds_and_the_owner(schedule: dict[str, Any]) -> None:
    rb = schedule["rollback"]
    assert rb["owner"] == "fraud-ml-oncall"
    conds = {c["gate"]: c for c in rb["conditions"]}
    assert set(conds) == {"latency_p95_ms", "error_rate", "schema_validation_pass_rate", "human_review_score",
                          "gpu_oom_events"}
    lat = conds["latency_p95_ms"]
    assert lat["live_threshold"] == pytest.approx(1.10) and lat["direction"] == "max"
    assert "histogram_quantile(0.95" in lat["promql_template"] and "\n/\n" in lat["promql_template"]
    assert conds["error_rate"]["live_threshold"] == 0.01 and conds["error_rate"]["rollback_when"] == "canary error rate > 0.01"
    assert conds["schema_validation_pass_rate"]["direction"] == "min"
    assert conds["human_review_score"]["action"] == "manual review"
    assert all(c["basis"] for c in rb["conditions"])


@pytest.mark.integration
def test_every_number_has_a_basis(schedule: dict[str, Any]) -> None:
    for block in (schedule["traffic"], schedule["traffic"]["burstiness"], schedule["resources"], schedule["risk"],
                  schedule["parameters"], schedule["smallest_segment"], *schedule["sizing"], *schedule["steps"],
                  *[a for s in _live(schedule) for a in s["adjustments"]]):
        assert isinstance(block.get("basis"), str) and block["basis"], block


@pytest.mark.integration
def test_run_folder_schedule_round_trips(run_dir: Path, summary: dict[str, Any], schedule: dict[str, Any],
                                         tmp_path: Path) -> None:
    loaded = load_schedule(run_dir)
    assert loaded == summary["schedule"]
    assert [s["min_duration_s"] for s in _live(loaded)] == [s["min_duration_s"] for s in _live(schedule)]
    write_schedule(tmp_path / "canary_schedule.yaml", schedule)
    assert load_schedule(tmp_path) == json.loads(json.dumps(schedule))
    only_summary = tmp_path / "only-summary"
    only_summary.mkdir()
    (only_summary / "summary.json").write_text(json.dumps({"schedule": schedule}))
    assert load_schedule(only_summary)["steps"] == schedule["steps"]
    with pytest.raises(StoreError, match="not a run folder"):
        load_schedule(tmp_path / "nothing-here")


# ------------------------------------------------------------------------------------------- traffic

def _synthetic_requests(offsets_s: list[float]) -> Any:
    c = duckdb.connect()
    c.execute("create table requests (captured_at timestamptz, loop bigint)")
    c.executemany("insert into requests values (to_timestamp(?), 0)", [[1_800_000_000 + t] for t in offsets_s])
    c.execute("create table events (occurred_at timestamptz, kind varchar, detail varchar)")
    return c


def test_bursty_traffic_is_measured_per_second() -> None:
    scenario = load_scenario(REPO / "scenarios" / "fraud_demo.yaml")
    steady = _synthetic_requests([i * 0.1 for i in range(600)])  # 10 rps, every second alike
    profile = traffic_profile(steady, scenario)
    assert profile["production_rps"] == pytest.approx(600 / 59.9)
    assert not profile["burstiness"]["bursty"] and profile["burstiness"]["factor_at_low_shares"] == 1.0
    bursts = [10 * b + i / 200 for b in range(6) for i in range(100)]  # 100 requests in the first half second of 10
    profile = traffic_profile(_synthetic_requests(bursts), scenario)
    b = profile["burstiness"]
    assert b["bursty"] and b["peak_to_mean"] > 5 and b["dispersion"] > 2
    assert 1.0 < b["factor_at_low_shares"] <= 3.0 and "bursty" in b["basis"]


def test_steady_arrivals_that_start_and_end_mid_second_are_not_bursty() -> None:
    """Random (Poisson) arrivals at 100 rps over about 30 s, starting and ending mid-second: the partial
    calendar seconds at either end are no lulls. Counted by calendar second, 6 of 20 seeded captures were
    "bursty" (variance/mean up to 4.3, where random arrivals give about 1)."""
    scenario = load_scenario(REPO / "scenarios" / "fraud_demo.yaml")
    bursty = []
    for seed in range(20):
        rng = random.Random(seed)
        t, offsets = rng.random(), []
        while t < 30:
            offsets.append(t)
            t += rng.expovariate(100)
        b = traffic_profile(_synthetic_requests(offsets), scenario)["burstiness"]
        bursty.append(b["bursty"])
    assert sum(bursty) <= 1, bursty


def test_a_stratified_sample_gives_the_captured_rate(tmp_path: Path) -> None:
    """3,000 requests over about 20 s (a tenant of 4.5 % among 8), sampled at 0.2 stratified by tenant with 100
    kept per tenant: 900 are replayed, and 900 / span / 0.2 gave 229.5 rps for a capture of 153 rps (every live
    step a third too short). The rate counts the requests the sample left out instead."""
    from harness.scenario import scenario_from_dict
    from harness.store import RunMeta, RunStore
    from harness.traffic.prepare import prepare_traffic

    rng = random.Random(1)
    t, lines = 1_793_000_000.0, []
    for i in range(3000):
        t += rng.expovariate(150)
        tenant = "small" if rng.random() < 0.045 else f"t{rng.randrange(8)}"
        lines.append(json.dumps({"ts": t, "method": "POST", "path": "/v1/score",
                                 "headers": {"X-Tenant": tenant}, "body": {"id": i}}))
    capture = tmp_path / "capture.jsonl"
    capture.write_text("\n".join(lines) + "\n")
    scenario = scenario_from_dict({
        "name": "s", "traffic": {"path": str(capture), "sample": {"fraction": 0.2, "seed": 7, "stratify_by": "tenant",
                                                                  "min_per_stratum": 100}},
        "segments": {"tenant": {"header": "X-Tenant"}},
        "targets": {"baseline": {"url": "http://127.0.0.1:1"}, "candidate": {"url": "http://127.0.0.1:2"}},
        "replay": {"allow": ["POST /v1/score"]}, "promotion_gates": {"error_rate": {"maximum": 0.01}}})
    prepared = prepare_traffic(scenario, tmp_path / ".work")
    store = RunStore(tmp_path / "results.duckdb")
    store.create(RunMeta("t", "s", "", "{}", "", "", "0", None, "", None, "paired", 1.0, prepared.segment_names),
                 prepared.schedule_path, prepared.skipped_path, prepared.bad_path)
    assert prepared.replayed < 0.4 * 3000  # most of the capture is left out
    profile = traffic_profile(store.con, scenario)
    store.close()
    assert profile["production_rps"] == pytest.approx(3000 / (t - json.loads(lines[0])["ts"]), rel=0.01)
    assert "not sampled" in profile["basis"]


def test_format_duration() -> None:
    assert [format_duration(s) for s in (1, 60, 61, 3600, 13620, 86400)] == ["1m", "1m", "2m", "1h", "3h47m", "24h"]


# ------------------------------------------------------------------------------------------- exports

@pytest.mark.integration
def test_argo_export_validates_and_follows_the_steps(schedule: dict[str, Any]) -> None:
    docs = _docs(export_schedule(schedule, "argo"))
    rollout, templates = docs[0], docs[1:]
    _validate(rollout, "argo-rollout.schema.json")
    for t in templates:
        _validate(t, "argo-analysistemplate.schema.json")
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    live = _live(schedule)
    assert [s["setWeight"] for s in steps if "setWeight" in s] == [int(s["traffic_percent"]) for s in live]
    assert [s["pause"]["duration"] for s in steps if "pause" in s] == [s["min_duration"] for s in live]
    names = {t["metadata"]["name"] for t in templates}
    referenced = {t["templateName"] for s in steps if "analysis" in s for t in s["analysis"]["templates"]}
    referenced |= {t["templateName"] for t in rollout["spec"]["strategy"]["canary"].get("analysis", {}).get("templates", [])}
    assert referenced == names
    gates = next(t for t in templates if t["metadata"]["name"].endswith("-gates"))
    conds = {m["name"]: m["successCondition"] for m in gates["spec"]["metrics"]}
    assert conds["latency-p95-ms"] == "result[0] <= 1.1" and conds["error-rate"] == "result[0] <= 0.01"
    assert conds["schema-validation-pass-rate"] == "result[0] >= 0.995"
    assert all(m["provider"]["prometheus"]["query"].startswith("# TEMPLATE") for m in gates["spec"]["metrics"])


@pytest.mark.integration
def test_flagger_export_validates(schedule: dict[str, Any]) -> None:
    docs = _docs(export_schedule(schedule, "flagger"))
    canary, templates = docs[0], docs[1:]
    _validate(canary, "flagger-canary.schema.json")
    for t in templates:
        _validate(t, "flagger-metrictemplate.schema.json")
    analysis = canary["spec"]["analysis"]
    assert analysis["stepWeights"] == [int(s["traffic_percent"]) for s in _live(schedule)]
    longest = max(s["min_duration_s"] for s in _live(schedule))
    assert analysis["interval"] == f"{math.ceil(longest / 60)}m"
    ranges = {m["name"]: m["thresholdRange"] for m in analysis["metrics"]}
    assert ranges["latency-p95-ms"] == {"max": pytest.approx(1.1)} and ranges["schema-validation-pass-rate"] == {"min": 0.995}
    assert {m["templateRef"]["name"] for m in analysis["metrics"]} == {t["metadata"]["name"] for t in templates}


@pytest.mark.integration
def test_istio_export_has_one_virtualservice_per_step_summing_to_100(schedule: dict[str, Any]) -> None:
    docs = _docs(export_schedule(schedule, "istio"))
    live = _live(schedule)
    assert len(docs) == len(live)
    for doc, step in zip(docs, live):
        _validate(doc, "istio-virtualservice.schema.json")
        route = doc["spec"]["http"][0]["route"]
        weights = {r["destination"]["subset"]: r["weight"] for r in route}
        assert sum(weights.values()) == 100
        assert weights["canary"] == int(step["traffic_percent"])
        assert doc["metadata"]["annotations"]["harness/min-duration"] == step["min_duration"]


@pytest.mark.integration
def test_schemas_reject_what_the_tools_would(schedule: dict[str, Any]) -> None:
    rollout = _docs(export_schedule(schedule, "argo"))[0]
    bad = copy.deepcopy(rollout)
    bad["spec"]["strategy"]["canary"]["steps"][0] = {"setWeight": 1, "pause": {}}  # two actions in one step
    assert list(_validator("argo-rollout.schema.json").iter_errors(bad))
    bad = copy.deepcopy(rollout)
    bad["spec"]["strategy"]["canary"]["steps"][1] = {"pause": {"duration": "1 day"}}
    assert list(_validator("argo-rollout.schema.json").iter_errors(bad))
    canary = _docs(export_schedule(schedule, "flagger"))[0]
    bad = copy.deepcopy(canary)
    bad["spec"]["analysis"]["interval"] = "24h"  # Flagger's CRD pattern ^[0-9]+(m|s)
    assert list(_validator("flagger-canary.schema.json").iter_errors(bad))
    vs = _docs(export_schedule(schedule, "istio"))[0]
    bad = copy.deepcopy(vs)
    bad["spec"]["http"][0]["route"][0]["weight"] = "99"
    assert list(_validator("istio-virtualservice.schema.json").iter_errors(bad))


@pytest.mark.integration
def test_fractional_shares_cannot_be_exported(summary: dict[str, Any], scenario: Scenario, con: Any) -> None:
    s = build_schedule(summary, replace(scenario, canary=replace(scenario.canary, steps_percent=(0.5, 10.0, 100.0))),
                       con)
    assert [st["traffic_percent"] for st in _live(s)] == [0.5, 10.0, 100.0]
    assert _docs(export_schedule(s, "yaml"))[0]["steps"][1]["traffic_percent"] == 0.5
    for fmt in ("argo", "flagger", "istio"):
        with pytest.raises(UsageError, match="whole percents"):
            export_schedule(s, fmt)


@pytest.mark.integration
def test_cli_schedule_prints_the_argo_export(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    promoted = load_schedule(run_dir)["verdict"] == "PROMOTE"  # else refused without --force (test_schedule_refusal)
    assert cli.main(["schedule", str(run_dir), "--format", "argo", *([] if promoted else ["--force"])]) == 0
    docs = _docs(capsys.readouterr().out)
    assert [d["kind"] for d in docs][:2] == ["Rollout", "AnalysisTemplate"]
    assert cli.main(["schedule", str(run_dir)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == load_schedule(run_dir)
