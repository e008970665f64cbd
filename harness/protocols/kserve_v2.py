"""KServe V2 / Open Inference Protocol answers: outputs[].data -> prediction and confidence.

The scenario's output.prediction / output.confidence JSON paths win where they find something (e.g.
`$.outputs[1].data[0]`). Otherwise the first output named like a label
("label", "prediction", "class") gives the prediction, and the first named like a score ("probability",
"confidence", "score") or else the first numeric output with values in [0, 1] gives the confidence (its
maximum, for a vector). Tensors may be nested (row-major) or flat; both are flattened.

These are the values of a run whose answers are not read row by row (output.rows: false). Otherwise
(the default for this protocol) harness.protocols.read_output replaces them with the single row's label
and score, or with nothing for a batch: a batch is judged row by row (harness.protocols.rows)."""
from __future__ import annotations

from typing import Any

from ..jsonpath import MISSING, find_first
from .json_protocol import OutputRead, label_of, number_of, parse_body

__all__ = ["read_kserve_v2_output", "read_kserve_v2_doc"]

# MLServer's scikit-learn runtime names its outputs after the method: predict, predict_proba
_LABEL_NAMES = ("label", "labels", "prediction", "predictions", "predict", "class", "classes")
_SCORE_NAMES = ("probability", "probabilities", "confidence", "score", "scores", "proba", "predict_proba")


def read_kserve_v2_output(status: int, body: bytes, prediction_path: str = "$.prediction",
                          confidence_path: str = "$.confidence", strict: bool = True) -> OutputRead:
    doc = parse_body(status, body, strict)
    if isinstance(doc, OutputRead):
        return doc
    if not isinstance(doc, dict):
        return OutputRead(doc=doc)
    return read_kserve_v2_doc(doc, prediction_path, confidence_path)


def read_kserve_v2_doc(doc: dict[str, Any], prediction_path: str = "$.prediction",
                       confidence_path: str = "$.confidence") -> OutputRead:
    """An answer already parsed (over REST: the JSON body; over gRPC: the message in the V2 JSON form)."""
    outputs = doc.get("outputs") if isinstance(doc.get("outputs"), list) else []
    prediction: str | None = None
    confidence: float | None = None
    for out in outputs:
        if not isinstance(out, dict):
            continue
        name = str(out.get("name", "")).lower()
        data = _flat(out.get("data"))
        if not data:
            continue
        if prediction is None and name in _LABEL_NAMES:
            prediction = str(data[0])
        numeric = [x for x in map(number_of, data) if x is not None]
        if confidence is None and numeric and name not in _LABEL_NAMES:  # a label tensor of 0/1 is no score
            if name in _SCORE_NAMES or all(0.0 <= x <= 1.0 for x in numeric):
                confidence = max(numeric)
    by_path = find_first(doc, prediction_path)
    if by_path is not MISSING and by_path is not None:
        prediction = label_of(by_path)
    by_path = number_of(find_first(doc, confidence_path))
    if by_path is not None:
        confidence = by_path
    version = doc.get("model_version")
    return OutputRead(doc=doc, prediction=prediction, confidence=confidence,
                      model_version=str(version) if version is not None else None)


def _flat(data: Any) -> list[Any]:
    if isinstance(data, list):
        out: list[Any] = []
        for x in data:
            out.extend(_flat(x) if isinstance(x, list) else [x])
        return out
    return [] if data is None else [data]
