"""The MLServer test kit (tests/mlserver_kit.py) itself: real MLServer and the V1 server answer with the
probabilities scikit-learn gives offline for the same rows."""
from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest

from mlserver_kit import StacksKit, skip_reason

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")]


def _post(url: str, doc: dict) -> dict:
    req = urllib.request.Request(url, data=json.dumps(doc).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:  # noqa: S310 - 127.0.0.1 only
        return json.loads(r.read())


def test_mlserver_and_v1_server_answer_what_the_model_scores_offline(tmp_path: Path) -> None:
    kit = StacksKit(tmp_path)
    model = kit.train("m", "logistic", n_features=3)
    rows = [[0.0, 0.0, 0.0], [1.0, -2.0, 0.5], [3.0, 1.0, -1.0]]
    offline = kit.score(model, rows)
    assert len(offline) == 3 and all(abs(sum(p) - 1) < 1e-9 for p in offline)
    with kit.mlserver(model, "m") as srv:
        v2 = _post(f"{srv.url}/v2/models/m/infer",
                   {"inputs": [{"name": "x", "shape": [3, 3], "datatype": "FP64", "data": sum(rows, [])}],
                    "outputs": [{"name": "predict_proba"}]})
    (out,) = v2["outputs"]
    assert out["name"] == "predict_proba" and out["shape"] == [3, 2]
    assert out["data"] == pytest.approx(sum(offline, []), abs=1e-12)
    with kit.v1_server(model, "m") as srv:
        v1 = _post(f"{srv.url}/v1/models/m:predict", {"instances": rows})
    assert sum(v1["predictions"], []) == pytest.approx(sum(offline, []), abs=1e-12)
