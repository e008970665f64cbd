"""Must-show for batched predictions: two scikit-learn models (logistic regression vs gradient boosting),
served by real Seldon MLServer (KServe V2, batched predict_proba) and by a TF-Serving-style V1 server,
replayed with batches of 1 to 64 rows. The per-segment row flip rates harness finds are the ones the same
two models give offline on the same rows, and lie within harness's request-clustered intervals.

Needs `.venv-stacks` (`make stacks`; CI builds it): skips with that reason otherwise."""
from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

import pytest

from harness.analysis.rows import batch_size_buckets
from mlserver_kit import StacksKit, skip_reason
from replay_helpers import scenario_dict, write_capture

pytestmark = [pytest.mark.integration, pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")]

T0 = 1_700_000_000.0
N_FEATURES = 6
SHIFT = {"a": 0.0, "b": 0.8, "c": -1.0}  # each tenant's rows come from a shifted distribution


def batches(n: int, seed: int = 11) -> list[tuple[str, list[list[float]]]]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        tenant = "abc"[i % 3]
        size = rng.choice([1, 2, 3, 5, 8, 13, 21, 34, 55, 64])
        out.append((tenant, [[round(rng.gauss(SHIFT[tenant], 1.5), 6) for _ in range(N_FEATURES)]
                             for _ in range(size)]))
    return out


def v2_record(i: int, tenant: str, rows: list[list[float]]) -> dict:
    return {"ts": T0 + i * 0.08, "method": "POST", "path": "/v2/models/model/infer",
            "headers": {"Content-Type": "application/json", "X-Tenant": tenant},
            "body": {"inputs": [{"name": "input-0", "shape": [len(rows), N_FEATURES], "datatype": "FP64",
                                 "data": [x for r in rows for x in r]}],
                     "outputs": [{"name": "predict_proba"}]}}


def v1_record(i: int, tenant: str, rows: list[list[float]]) -> dict:
    return {"ts": T0 + i * 0.08, "method": "POST", "path": "/v1/models/model:predict",
            "headers": {"Content-Type": "application/json", "X-Tenant": tenant}, "body": {"instances": rows}}


def _run(tmp_path: Path, name: str, records: list[dict], baseline: str, candidate: str, protocol: str) -> dict:
    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    sc = scenario_dict(write_capture(tmp_path / f"{name}.jsonl", records), baseline, candidate, speed=1, timeout_s=20,
                       connect_timeout_s=10)
    sc["name"] = name
    sc["targets"]["baseline"]["protocol"] = sc["targets"]["candidate"]["protocol"] = protocol
    sc["segments"] = {"tenant": {"header": "X-Tenant"}}
    sc["promotion_gates"] = {"row_flip_rate": {"maximum": 0.5}, "error_rate": {"maximum": 0.01}}
    result = run_scenario(scenario_from_dict(sc), tmp_path / "out", echo=lambda m: None, progress_every_s=60)
    return json.loads((result.run_dir / "summary.json").read_text())


def _offline_flips(kit: StacksKit, base: Path, cand: Path, data: list[tuple[str, list[list[float]]]]
                   ) -> dict[str, tuple[int, int]]:
    rows = [r for _, rs in data for r in rs]
    pb, pc = kit.score(base, rows), kit.score(cand, rows)
    flips: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    k = 0
    buckets = batch_size_buckets([float(len(rs)) for _, rs in data])
    for (tenant, rs), bucket in zip(data, buckets):
        for _ in rs:
            f = int(max(range(2), key=pb[k].__getitem__) != max(range(2), key=pc[k].__getitem__))
            for seg in (None, f"tenant={tenant}", f"batch_size={bucket}"):
                flips[seg][0] += f
                flips[seg][1] += 1
            k += 1
    return {s: (v[0], v[1]) for s, v in flips.items()}


def _check(summary: dict, offline: dict[str, tuple[int, int]]) -> int:
    assert summary["counts"]["replayed"] == summary["counts"]["captured"]
    results = {g["segment"]: g for g in summary["gates"] if g["name"] == "row_flip_rate"}
    checked = 0
    for seg, (flips, n) in offline.items():
        if n < 200:
            continue
        r = results[seg]
        assert r["n"] == n, (seg, r["reason"])
        assert r["observed"] == pytest.approx(flips / n, abs=1e-12), (seg, r["reason"])
        assert r["ci"][0] <= flips / n <= r["ci"][1], (seg, r["reason"])
        checked += 1
    return checked


def test_row_flip_rates_match_the_models_scored_offline(tmp_path: Path) -> None:
    kit = StacksKit(tmp_path / "kit")
    base = kit.train("baseline", "logistic", n_features=N_FEATURES, seed=5)
    cand = kit.train("candidate", "boosting", n_features=N_FEATURES, seed=5)
    data = batches(120)
    offline = _offline_flips(kit, base, cand, data)
    assert 0.02 < offline[None][0] / offline[None][1] < 0.5  # the two models do disagree, on some rows
    with kit.mlserver(base) as b, kit.mlserver(cand) as c:
        v2 = _run(tmp_path, "mlserver-v2", [v2_record(i, t, rs) for i, (t, rs) in enumerate(data)], b.url, c.url,
                  "kserve_v2")
    with kit.v1_server(base) as b, kit.v1_server(cand) as c:
        v1 = _run(tmp_path, "v1", [v1_record(i, t, rs) for i, (t, rs) in enumerate(data)], b.url, c.url, "kserve_v1")
    for summary in (v2, v1):
        assert summary["rows"]["counts"]["mismatched_legs"] == 0
        assert summary["rows"]["judged_rows"] == offline[None][1]
        assert _check(summary, offline) >= 6  # overall, three tenants, and the larger batch-size buckets
