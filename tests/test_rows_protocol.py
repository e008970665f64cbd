"""Batched requests and answers read row by row (harness.protocols.rows, harness.traffic.request_rows)."""
from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.protocols import read_output
from harness.protocols.rows import read_rows
from harness.scenario import RowsConfig, ScenarioError, scenario_from_dict
from harness.traffic.request_rows import request_row_count

DEFAULT = RowsConfig()


def v2(*outputs: dict) -> dict:
    return {"model_name": "m", "outputs": list(outputs)}


def test_v2_probability_tensor_gives_one_row_per_batch_row() -> None:
    doc = v2({"name": "predict_proba", "shape": [3, 2], "datatype": "FP64", "data": [0.9, 0.1, 0.2, 0.8, 0.5, 0.5]})
    r = read_rows("kserve_v2", doc, DEFAULT)
    assert r.count == 3 and r.labels == ("0", "1", "0") and r.scores == (0.1, 0.8, 0.5)
    assert r.invalid == (None, None, None)
    # the positive class above a threshold
    r = read_rows("kserve_v2", doc, RowsConfig(positive_class=1, threshold=0.5))
    assert r.labels == ("0", "1", "1")
    # nested data reads the same as flat
    nested = v2({"name": "predict_proba", "shape": [3, 2], "data": [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]})
    assert read_rows("kserve_v2", nested, DEFAULT) == read_rows("kserve_v2", doc, DEFAULT)


def test_v2_label_and_score_tensors_are_combined_and_multiclass_takes_the_argmax() -> None:
    doc = v2({"name": "label", "shape": [2], "datatype": "BYTES", "data": ["fraud", "legit"]},
             {"name": "probability", "shape": [2], "datatype": "FP32", "data": [0.75, 0.25]})
    r = read_rows("kserve_v2", doc, DEFAULT)
    assert r.labels == ("fraud", "legit") and r.scores == (0.75, 0.25)
    three = v2({"name": "predict_proba", "shape": [1, 3], "data": [0.2, 0.5, 0.3]})
    assert read_rows("kserve_v2", three, DEFAULT).labels == ("1",)
    assert read_rows("kserve_v2", three, DEFAULT).scores == (0.5,)
    # MLServer's default output: labels only
    labels = v2({"name": "predict", "shape": [4], "datatype": "INT64", "data": [0, 1, 1, 0]})
    r = read_rows("kserve_v2", labels, DEFAULT)
    assert r.labels == ("0", "1", "1", "0") and r.scores == (None,) * 4
    # the same labels in an FP32 tensor are the same labels: a dtype change is no flip of every row
    as_float = v2({"name": "predict", "shape": [4], "datatype": "FP32", "data": [0.0, 1.0, 1.0, 0.0]})
    assert read_rows("kserve_v2", as_float, DEFAULT).labels == r.labels


def test_equal_json_numbers_are_one_label() -> None:
    """1 and 1.0 are the same JSON number: the same prediction, never a flip; other values keep their text."""
    from harness.protocols.json_protocol import label_of

    assert label_of(1.0) == label_of(1) == "1" and label_of(-0.0) == "0" and label_of(2.5) == "2.5"
    assert label_of(1e300) == "1e+300" and label_of(True) == "true" and label_of("1.0") == "1.0"
    one = read_output("json", 200, json.dumps({"prediction": 1.0}).encode(), "$.prediction", "$.confidence")
    assert one.prediction == read_output("json", 200, b'{"prediction": 1}', "$.prediction",
                                         "$.confidence").prediction == "1"


def test_v2_bad_tensors_are_invalid_never_aligned() -> None:
    ragged = v2({"name": "predict_proba", "shape": [3, 2], "data": [0.9, 0.1, 0.2]})
    r = read_rows("kserve_v2", ragged, DEFAULT)
    assert r.count is None and "ragged" in (r.error or "")
    bad = v2({"name": "predict_proba", "shape": [3, 2], "data": [0.9, 0.1, 0.7, 0.7, "x", 0.5]})
    r = read_rows("kserve_v2", bad, DEFAULT)
    assert r.count == 3 and r.labels == ("0", None, None)
    assert r.invalid[0] is None and "sum to 1.4" in r.invalid[1] and "non-numeric" in r.invalid[2]
    disagree = v2({"name": "label", "shape": [2], "data": ["a", "b"]}, {"name": "probability", "shape": [3],
                                                                      "data": [0.1, 0.2, 0.3]})
    assert "disagree" in (read_rows("kserve_v2", disagree, DEFAULT).error or "")


def test_v1_predictions_of_every_shape() -> None:
    doc = {"predictions": [[0.3, 0.7], 0.2, 1, "cat", {"label": "dog", "score": 0.9}, [0.5, 0.2, 0.3],
                           float("nan"), None]}
    r = read_rows("kserve_v1", doc, DEFAULT)
    assert r.count == 8
    assert r.labels[:5] == ("1", "0", "1", "cat", "dog") and r.scores[:5] == (0.7, 0.2, None, None, 0.9)
    assert r.invalid[5].startswith("ragged") and r.invalid[6] == "score is nan" and "not a label" in r.invalid[7]
    assert read_rows("kserve_v1", {"outputs": {"label": ["a", "b"], "score": [0.1, 0.9]}}, DEFAULT).labels == ("a", "b")
    assert read_rows("kserve_v1", {"nothing": 1}, DEFAULT).count is None
    r = read_rows("json", {"result": {"rows": [{"cls": "x", "p": 0.4}]}},
                  RowsConfig(path="$.result.rows", label="cls", score="p"))
    assert (r.labels, r.scores) == (("x",), (0.4,))


def test_request_row_counts_per_protocol() -> None:
    def body(d: object) -> bytes:
        return json.dumps(d).encode()

    v2_req = {"inputs": [{"name": "a", "shape": [32, 30], "data": []}, {"name": "b", "shape": [32], "data": []}]}
    assert request_row_count(body(v2_req), "kserve_v2") == 32
    v2_req["inputs"][1]["shape"] = [31]
    assert request_row_count(body(v2_req), "kserve_v2") is None  # inputs disagree: a bad request
    assert request_row_count(body({"instances": [[1], [2], [3]]}), "kserve_v1") == 3
    assert request_row_count(body({"inputs": {"a": [1, 2], "b": [3, 4]}}), "kserve_v1") == 2
    assert request_row_count(body({"dataframe_split": {"columns": ["a"], "data": [[1], [2]]}}), "json") == 2
    assert request_row_count(body({"dataframe_records": [{"a": 1}]}), "json") == 1
    assert request_row_count(b"not json", "kserve_v1") is None
    assert request_row_count(body({"instances": [1]}), "openai") is None


def test_read_output_adds_rows_where_active_and_clears_batch_level_guesses() -> None:
    body = json.dumps(v2({"name": "predict_proba", "shape": [2, 2], "data": [0.9, 0.1, 0.2, 0.8]})).encode()
    out = read_output("kserve_v2", 200, body, "$.prediction", "$.confidence", rows=DEFAULT)
    assert out.row_count == 2 and out.row_labels == ("0", "1") and out.confidence is None
    assert read_output("json", 200, body, "$.p", "$.c", rows=DEFAULT).row_count is None  # json: off by default
    assert read_output("kserve_v2", 500, body, "$.p", "$.c", rows=DEFAULT).row_labels is None
    one = read_output("kserve_v1", 200, b'{"predictions": [[0.25, 0.75]]}', "$.p", "$.c", rows=DEFAULT)
    assert (one.prediction, one.confidence, one.row_count) == ("1", 0.75, 1)
    # a one-row V2 answer: its row's label and the positive class's probability, not the largest probability
    one_v2 = json.dumps(v2({"name": "predict_proba", "shape": [1, 2], "data": [0.7, 0.3]})).encode()
    out = read_output("kserve_v2", 200, one_v2, "$.prediction", "$.confidence", rows=DEFAULT)
    assert (out.prediction, out.confidence) == ("0", 0.3)


def test_rows_config_is_validated() -> None:
    base = {"name": "t", "traffic": {"path": "x.jsonl"}, "targets": {"baseline": {"url": "http://127.0.0.1:1"}},
            "replay": {"mode": "baseline-only"}}
    s = scenario_from_dict({**base, "output": {"rows": {"path": "$.p", "positive_class": 1, "threshold": 0.3}}},
                           check_files=False)
    assert s.output.rows == RowsConfig(enabled=True, path="$.p", positive_class=1, threshold=0.3)
    with pytest.raises(ScenarioError, match="positive_class"):
        scenario_from_dict({**base, "output": {"rows": {"positive_class": -1}}}, check_files=False)
    with pytest.raises(ScenarioError, match="colour"):
        scenario_from_dict({**base, "output": {"rows": {"colour": 1}}}, check_files=False)


@settings(max_examples=60)
@given(st.lists(st.one_of(st.floats(allow_nan=True), st.integers(), st.text(max_size=3), st.none(),
                          st.lists(st.floats(allow_nan=True), max_size=4)), max_size=20))
def test_any_prediction_list_gives_one_entry_per_row(preds: list) -> None:
    r = read_rows("kserve_v1", {"predictions": preds}, DEFAULT)
    assert r.count == len(preds) == len(r.labels) == len(r.scores) == len(r.invalid)
    for s, bad in zip(r.scores, r.invalid):
        assert s is None or math.isfinite(s)
        assert bad is None or s is None


@settings(max_examples=60)
@given(st.integers(0, 8), st.integers(1, 4), st.data())
def test_v2_tensors_read_the_same_flat_or_nested(n: int, k: int, data: st.DataObject) -> None:
    values = data.draw(st.lists(st.floats(0, 1), min_size=n * k, max_size=n * k))
    flat = v2({"name": "predict_proba", "shape": [n, k], "data": values})
    nested = v2({"name": "predict_proba", "shape": [n, k], "data": [values[i * k:(i + 1) * k] for i in range(n)]})
    a, b = read_rows("kserve_v2", flat, DEFAULT), read_rows("kserve_v2", nested, DEFAULT)
    assert a == b and a.count == n
    short = v2({"name": "predict_proba", "shape": [n + 1, k], "data": values})
    assert read_rows("kserve_v2", short, DEFAULT).count is None  # a tensor shorter than its shape: unreadable
