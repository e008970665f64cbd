"""Must-show for compressed answers: real Seldon MLServer (FastAPI with GZip middleware) answers above 1 kB
with `Content-Encoding: gzip` when the captured request says `Accept-Encoding: gzip, deflate`. A paired
and an A/A replay: 0 invalid_json (0 errors of any kind), the output schema and field diffs work on the
decoded answers, response_bytes (wire) and decoded_bytes both recorded, and the A/A run fails no gate.

Needs `.venv-stacks` (`make stacks`; CI builds it): skips with that reason otherwise."""
from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import duckdb
import pytest

from mlserver_kit import StacksKit, skip_reason
from replay_helpers import scenario_dict, write_capture

pytestmark = [pytest.mark.integration, pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")]

N_FEATURES = 6
SCHEMA = {"type": "object", "required": ["model_name", "outputs"],
          "properties": {"outputs": {"type": "array", "minItems": 1,
                                     "items": {"type": "object", "required": ["name", "shape", "data"]}}}}


def _records(n: int) -> list[dict[str, Any]]:
    rng = random.Random(5)
    out = []
    for i in range(n):
        rows = rng.randint(40, 64)  # predict_proba of 40+ rows: an answer of well over 1 kB
        data = [round(rng.gauss(0, 1.5), 6) for _ in range(rows * N_FEATURES)]
        out.append({"ts": 1_700_000_000 + i * 0.1, "method": "POST", "path": "/v2/models/model/infer",
                    "headers": {"Content-Type": "application/json", "Accept-Encoding": "gzip, deflate",
                                "User-Agent": "python-requests/2.32.3"},
                    "body": {"inputs": [{"name": "input-0", "shape": [rows, N_FEATURES], "datatype": "FP64",
                                         "data": data}],
                             "outputs": [{"name": "predict_proba"}]}})
    return out


def _run(tmp_path: Path, name: str, baseline: str, candidate: str, mode: str) -> tuple[Any, list[tuple[Any, ...]]]:
    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "schema.json").write_text(json.dumps(SCHEMA))
    sc = scenario_dict(write_capture(tmp_path / f"{name}.jsonl", _records(30)), baseline, candidate, speed=1,
                       timeout_s=20, mode=mode)
    sc["name"] = name
    sc["targets"]["baseline"]["protocol"] = sc["targets"]["candidate"]["protocol"] = "kserve_v2"
    sc["output"] = {"schema": str(tmp_path / "schema.json"), "ignore_paths": ["$.id"]}
    sc["promotion_gates"] = {"error_rate": {"maximum": 0.05}, "schema_validation_pass_rate": {"minimum": 0.9},
                             "field_diffs": {"metric": "field_diff_rate", "maximum": 1.0}}
    result = run_scenario(scenario_from_dict(sc), tmp_path / "out", echo=lambda m: None, progress_every_s=60)
    con = duckdb.connect(str(result.run_dir / "results.duckdb"), read_only=True)
    legs = con.execute("select version, error_kind, error_detail, content_encoding, response_bytes, decoded_bytes, "
                       "schema_valid, row_count, output_json from legs").fetchall()
    con.close()
    return json.loads((result.run_dir / "summary.json").read_text()), legs


def test_mlserver_gzip_answers_paired_and_aa(tmp_path: Path) -> None:
    kit = StacksKit(tmp_path)
    base_model = kit.train("base", "logistic", N_FEATURES, seed=1)
    cand_model = kit.train("cand", "forest", N_FEATURES, seed=1)
    with kit.mlserver(base_model) as base, kit.mlserver(cand_model) as cand:
        for mode, candidate in (("paired", cand.url), ("aa", base.url)):
            summary, legs = _run(tmp_path / mode, f"mlserver-{mode}", base.url, candidate, mode)
            assert len(legs) == 60
            assert [leg[:3] for leg in legs if leg[1] is not None] == []  # no invalid_json: no error at all
            assert {leg[3] for leg in legs} == {"gzip"}
            assert all(leg[5] > 1000 and leg[5] > leg[4] for leg in legs)  # decoded > on the wire
            assert all(leg[6] is True for leg in legs)  # the schema is checked on the decoded answer
            assert all(leg[7] >= 40 for leg in legs)
            assert all('"name":"predict_proba"' in leg[8].replace(" ", "") for leg in legs)  # the decoded answer
            assert [g for g in summary["gates"] if g["status"] == "fail"] == []
            diff = next(g for g in summary["gates"] if g["name"] == "field_diffs" and g["segment"] is None)
            # the field diff compares the decoded answers: two models differ, a model against itself does not
            assert diff["observed"] > 0.5 if mode == "paired" else diff["observed"] == 0, diff
