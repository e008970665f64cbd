"""KServe V1 / TF Serving REST predict (`POST /v1/models/{name}:predict`), also what MLflow and many
in-house servers answer: `{"predictions": [...]}`, one entry per row of the request's `instances` (or
`inputs`); TF Serving's columnar form answers `{"outputs": ...}`.

The answer's rows are read by harness.protocols.rows. The request-level prediction and confidence are the
scenario's JSON paths where they find something, else the single row's label and score of a one-row
answer (a batch has no one prediction: its rows are judged row by row)."""
from __future__ import annotations

from ..jsonpath import MISSING, find_first
from ..scenario import RowsConfig
from .json_protocol import OutputRead, label_of, number_of, parse_body
from .rows import read_rows

__all__ = ["read_kserve_v1_output"]


def read_kserve_v1_output(status: int, body: bytes, prediction_path: str = "$.prediction",
                          confidence_path: str = "$.confidence", strict: bool = True) -> OutputRead:
    doc = parse_body(status, body, strict)
    if isinstance(doc, OutputRead):
        return doc
    prediction = find_first(doc, prediction_path)
    confidence = number_of(find_first(doc, confidence_path))
    if (prediction is MISSING or prediction is None or confidence is None) and isinstance(doc, dict) \
            and isinstance(doc.get("predictions"), list) and len(doc["predictions"]) == 1:
        rows = read_rows("kserve_v1", doc, RowsConfig())
        if prediction is MISSING or prediction is None:
            prediction = rows.labels[0]
        if confidence is None:
            confidence = rows.scores[0]
    version = doc.get("model_version") if isinstance(doc, dict) else None
    return OutputRead(doc=doc, prediction=label_of(prediction), confidence=confidence,
                      model_version=str(version) if version is not None else None)
