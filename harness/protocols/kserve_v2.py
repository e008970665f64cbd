"""KServe V2 / Open Inference Protocol answers: outputs[].data -> prediction and confidence.

The first output named like a label ("label", "prediction", "class") gives the prediction, the first
named like a score ("probability", "confidence", "score") or else the first numeric output gives the
confidence (its maximum, for a vector)."""
from __future__ import annotations

import json
from typing import Any

from .json_protocol import OutputRead

__all__ = ["read_kserve_v2_output"]

_LABEL_NAMES = ("label", "labels", "prediction", "predictions", "class", "classes")
_SCORE_NAMES = ("probability", "probabilities", "confidence", "score", "scores", "proba")


def read_kserve_v2_output(status: int, body: bytes) -> OutputRead:
    try:
        doc = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        return OutputRead(invalid_json=True)
    if not isinstance(doc, dict):
        return OutputRead(doc=doc, invalid_json=doc is None and 200 <= status < 300)
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
        numeric = [float(x) for x in data if isinstance(x, (int, float)) and not isinstance(x, bool)]
        if confidence is None and numeric and (name in _SCORE_NAMES or prediction is not None or name not in _LABEL_NAMES):
            if name in _SCORE_NAMES or all(0.0 <= x <= 1.0 for x in numeric):
                confidence = max(numeric)
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
