"""The Open Inference Protocol over gRPC (protocol kserve_v2_grpc) against real Seldon MLServer gRPC ports.

One capture of KServe V2 REST requests is replayed over REST and over gRPC against the same two models:
both give the same predictions row by row, valid schemas, latencies per leg, and the same gates and
report. A paired and an A/A replay over gRPC have 0 harness-made errors, and the A/A run fails no gate. A
capture of gRPC calls (the gRPC capture record) replays too. A gRPC URL on the HTTP port, or an HTTP URL on
the gRPC port, is one line at the pre-run check and exit 4.

Needs `.venv-stacks` (`make stacks`; CI builds it): skips with that reason otherwise."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pytest
import yaml

from mlserver_kit import Server, StacksKit, skip_reason
from replay_helpers import scenario_dict, write_capture

pytestmark = [pytest.mark.integration, pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")]

N_FEATURES = 6
N_REQUESTS = 40
SCHEMA = {"type": "object", "required": ["model_name", "outputs"],
          "properties": {"outputs": {"type": "array", "minItems": 1,
                                     "items": {"type": "object", "required": ["name", "shape", "data"]}}}}


def _rest_records(n: int) -> list[dict[str, Any]]:
    rng = random.Random(7)
    out = []
    for i in range(n):
        rows = rng.randint(1, 12)
        data = [round(rng.gauss(0, 1.5), 6) for _ in range(rows * N_FEATURES)]
        out.append({"ts": 1_700_000_000 + i * 0.05, "method": "POST", "path": "/v2/models/model/infer",
                    "headers": {"Content-Type": "application/json", "Accept-Encoding": "gzip, deflate",
                                "X-Tenant": f"t{i % 3}"},
                    "body": {"inputs": [{"name": "input-0", "shape": [rows, N_FEATURES], "datatype": "FP64",
                                         "data": data}],
                             "outputs": [{"name": "predict_proba"}]}})
    return out


def _grpc_records(n: int) -> list[dict[str, Any]]:
    """The same calls as gRPC capture records: ModelInferRequest in protobuf's JSON mapping."""
    out = []
    for rec in _rest_records(n):
        tensor = rec["body"]["inputs"][0]
        out.append({"ts": rec["ts"], "grpc_service": "inference.GRPCInferenceService", "grpc_method": "ModelInfer",
                    "metadata": {"x-tenant": rec["headers"]["X-Tenant"]},
                    "message": {"modelName": "model",
                                "inputs": [{"name": "input-0", "datatype": "FP64",
                                            "shape": [str(d) for d in tensor["shape"]],
                                            "contents": {"fp64Contents": tensor["data"]}}],
                                "outputs": [{"name": "predict_proba"}]}})
    return out


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Server]]:
    kit = StacksKit(tmp_path_factory.mktemp("stacks"))
    base_model = kit.train("base", "logistic", N_FEATURES, seed=1)
    cand_model = kit.train("cand", "forest", N_FEATURES, seed=1)
    with kit.mlserver(base_model) as base, kit.mlserver(cand_model) as cand:
        yield base, cand


def _scenario(tmp_path: Path, name: str, records: list[dict[str, Any]], baseline: str, candidate: str, mode: str,
              protocol: str) -> dict[str, Any]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    sc = scenario_dict(write_capture(tmp_path / f"{name}.jsonl", records), baseline, candidate, speed=1,
                       timeout_s=20, mode=mode)
    sc["name"] = name
    sc["targets"]["baseline"]["protocol"] = sc["targets"]["candidate"]["protocol"] = protocol
    sc["output"] = {"schema": str(tmp_path / "schema.json"), "ignore_paths": ["$.id"]}
    sc["promotion_gates"] = {"error_rate": {"maximum": 0.05}, "schema_validation_pass_rate": {"minimum": 0.9},
                             "field_diffs": {"metric": "field_diff_rate", "maximum": 1.0}}
    return sc


def _run(sc: dict[str, Any], out: Path) -> tuple[dict[str, Any], dict[tuple[str, str], tuple[Any, ...]], Path]:
    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    result = run_scenario(scenario_from_dict(sc), out, echo=lambda m: None, progress_every_s=60)
    con = duckdb.connect(str(result.run_dir / "results.duckdb"), read_only=True)
    rows = con.execute("select l.request_id, l.version, l.error_kind, l.error_detail, l.status_code, l.schema_valid, "
                       "l.row_count, l.row_labels, l.row_scores, l.latency_ms, l.service_ms, l.response_bytes, "
                       "l.output_json, r.captured_request_id from legs l join requests r using (request_id)").fetchall()
    con.close()
    legs = {(r[13] or r[0], r[1]): r for r in rows}
    return json.loads((result.run_dir / "summary.json").read_text()), legs, result.run_dir


def _gate_statuses(summary: dict[str, Any]) -> dict[tuple[str, Any], str]:
    return {(g["name"], g["segment"]): g["status"] for g in summary["gates"]}


def test_rest_and_grpc_replays_of_one_capture_agree(tmp_path: Path, servers: tuple[Server, Server]) -> None:
    base, cand = servers
    assert base.grpc_url and cand.grpc_url
    records = _rest_records(N_REQUESTS)
    rest_summary, rest_legs, _ = _run(_scenario(tmp_path / "rest", "rest", records, base.url, cand.url, "paired",
                                                "kserve_v2"), tmp_path / "rest" / "out")
    grpc_summary, grpc_legs, run_dir = _run(_scenario(tmp_path / "grpc", "grpc", records, base.grpc_url,
                                                      cand.grpc_url, "paired", "kserve_v2_grpc"),
                                            tmp_path / "grpc" / "out")
    assert len(rest_legs) == len(grpc_legs) == 2 * N_REQUESTS
    errors = [(k, leg[2], leg[3]) for k, leg in grpc_legs.items() if leg[2] is not None]
    assert errors == []
    for key, leg in grpc_legs.items():
        rest = rest_legs[key]
        assert leg[4] == 200 and leg[5] is True  # OK, and the V2 JSON form passes the REST schema
        assert leg[6] == rest[6] >= 1  # one row per requested row
        assert leg[7] == rest[7]  # the same labels, row by row
        assert leg[8] == pytest.approx(rest[8], abs=1e-9)  # and the same probabilities
        assert leg[9] > 0 and leg[10] > 0 and leg[11] > 0  # latency, service time and message size per leg
        assert '"name":"predict_proba"' in leg[12].replace(" ", "")
    # the two models disagree on some rows: the answers were read, not defaulted
    assert any(leg[7] != grpc_legs[(k[0], "baseline")][7] for k, leg in grpc_legs.items() if k[1] == "candidate")
    assert _gate_statuses(grpc_summary) == _gate_statuses(rest_summary)
    assert grpc_summary["verdict"] == rest_summary["verdict"]
    assert grpc_summary["counts"]["harness_errors"] == 0
    assert (run_dir / "gate_report.html").stat().st_size > 10_000


def test_grpc_aa_and_grpc_capture_records(tmp_path: Path, servers: tuple[Server, Server]) -> None:
    base, cand = servers
    assert base.grpc_url and cand.grpc_url
    summary, legs, _ = _run(_scenario(tmp_path / "aa", "grpc-aa", _grpc_records(N_REQUESTS), base.grpc_url,
                                      base.grpc_url, "aa", "kserve_v2_grpc"), tmp_path / "aa" / "out")
    assert len(legs) == 2 * N_REQUESTS
    assert [(k, leg[2], leg[3]) for k, leg in legs.items() if leg[2] is not None] == []
    assert all(leg[5] is True and leg[6] >= 1 for leg in legs.values())
    assert [g for g in summary["gates"] if g["status"] == "fail"] == []
    assert summary["counts"]["harness_errors"] == 0
    diff = next(g for g in summary["gates"] if g["name"] == "field_diffs" and g["segment"] is None)
    assert diff["observed"] == 0  # a model against itself: the same answers


def _cli_run(tmp_path: Path, sc: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "scenario.yaml"
    path.write_text(yaml.safe_dump(sc))
    return subprocess.run([sys.executable, "-m", "harness", "run", str(path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=120, check=False)


def test_protocol_and_port_mismatch_is_one_line_before_sending(tmp_path: Path, servers: tuple[Server, Server]
                                                               ) -> None:
    base, _ = servers
    assert base.grpc_url
    http_port_as_grpc = base.url.replace("http://", "grpc://")
    grpc_port_as_http = base.grpc_url.replace("grpc://", "http://")
    cases = ((http_port_as_grpc, "kserve_v2_grpc", "HTTP/1.x, not HTTP/2"),
             (grpc_port_as_http, "kserve_v2", "HTTP/2 only"))
    for i, (url, protocol, words) in enumerate(cases):
        sc = _scenario(tmp_path / f"c{i}", f"mismatch{i}", _rest_records(3), url, url, "aa", protocol)
        proc = _cli_run(tmp_path / f"c{i}", sc)
        assert proc.returncode == 4, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and words in lines[0] and url in lines[0], proc.stderr
        assert not list((tmp_path / f"c{i}" / "out").glob("*/results.duckdb"))  # nothing was sent
