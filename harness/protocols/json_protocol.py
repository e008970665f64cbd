"""Plain JSON answers: the document, plus prediction, confidence and model_version by JSON path."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..jsonpath import MISSING, find_first

__all__ = ["OutputRead", "read_json_output"]


@dataclass(frozen=True, slots=True)
class OutputRead:
    doc: Any = MISSING  # the parsed document, MISSING when the body is not JSON
    invalid_json: bool = False
    prediction: str | None = None
    confidence: float | None = None
    model_version: str | None = None
    time_to_first_token_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def read_json_output(status: int, body: bytes, prediction_path: str, confidence_path: str) -> OutputRead:
    if not body:
        return OutputRead(invalid_json=200 <= status < 300)
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return OutputRead(invalid_json=True)
    return OutputRead(doc=doc, prediction=_label(find_first(doc, prediction_path)),
                      confidence=_number(find_first(doc, confidence_path)),
                      model_version=_label(find_first(doc, "$.model_version")))


def _label(v: Any) -> str | None:
    if v is MISSING or v is None:
        return None
    return v if isinstance(v, str) else json.dumps(v)[:200]


def _number(v: Any) -> float | None:
    # A confidence sent as a string is a contract break the schema catches; it is not a number here.
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)
