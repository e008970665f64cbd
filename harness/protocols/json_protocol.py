"""Plain JSON answers: the document, plus prediction, confidence and model_version by JSON path."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..jsonpath import MISSING, first_getter
from ..numbers import number_label, number_of
from ..traffic.jsonl_reader import loads

__all__ = ["OutputRead", "read_json_output", "label_of", "number_of", "loads", "first"]


@dataclass(slots=True)
class OutputRead:
    """What one answer says, whatever its protocol. Streaming fields are None for answers that did not stream;
    detector fields are None where a detector is not configured or cannot judge the answer. Treated as
    immutable (readers and detectors build new ones with dataclasses.replace); not frozen only because a
    frozen dataclass's __init__ costs a setattr call per field, once per leg."""

    doc: Any = MISSING  # the parsed document (an assembled chat.completion for a stream), MISSING when not JSON
    invalid_json: bool = False
    invalid_reason: str | None = None  # why it is not JSON (positions and byte values, never the answer's text)
    model_error: str | None = None  # an error object where a result was due (openai: a 2xx answer or stream event)
    prediction: str | None = None
    confidence: float | None = None
    model_version: str | None = None
    time_to_first_token_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    streamed: bool = False
    truncated_stream: bool = False  # an event stream that ended before `data: [DONE]`
    inter_token_ms_mean: float | None = None
    inter_token_ms_p95: float | None = None
    token_chunks: int | None = None  # stream events that carried generated text or tool-call arguments
    finish_reason: str | None = None
    content: str | None = None  # the assistant's text (openai), read by the detectors; not stored as such
    tool_calls_valid: bool | None = None
    abstained: bool | None = None
    cited: bool | None = None
    fallback_model: bool | None = None
    # batched answers read row by row (output.rows): None where rows are not read
    row_count: int | None = None
    row_labels: tuple[str | None, ...] | None = None
    row_scores: tuple[float | None, ...] | None = None
    row_invalid: tuple[str | None, ...] | None = None
    row_error: str | None = None  # the answer has no readable rows


def first(doc: Any, path: str) -> Any:
    return first_getter(path)(doc)


def parse_body(status: int, body: bytes, strict: bool = True) -> Any:
    """The answer's JSON document, or the OutputRead that says it has none (empty on a 2xx, or not JSON).
    `strict`: NaN and Infinity make it not JSON (traffic.jsonl_reader.loads); a batched answer read row by
    row reads them, and its rows judge them (an invalid row, harness.protocols.rows)."""
    if not body:
        return OutputRead(invalid_json=200 <= status < 300, invalid_reason="the answer is empty")
    try:
        return loads(body, strict=strict)
    except UnicodeDecodeError as exc:
        byte = exc.object[exc.start] if isinstance(exc.object, bytes) and exc.start < len(exc.object) else None
        at = f" (byte 0x{byte:02x} at offset {exc.start})" if byte is not None else ""
        return OutputRead(invalid_json=True, invalid_reason=f"the answer is not UTF-8{at}")
    except RecursionError:
        return OutputRead(invalid_json=True, invalid_reason="the answer is nested too deeply to read")
    except ValueError as exc:  # json.JSONDecodeError's message gives a position, not the text
        return OutputRead(invalid_json=True, invalid_reason=f"not JSON: {str(exc).splitlines()[0][:160]}")


def read_json_output(status: int, body: bytes, prediction_path: str, confidence_path: str,
                     strict: bool = True) -> OutputRead:
    doc = parse_body(status, body, strict)
    if isinstance(doc, OutputRead):
        return doc
    return OutputRead(doc=doc, prediction=label_of(first(doc, prediction_path)),
                      confidence=number_of(first(doc, confidence_path)),
                      model_version=label_of(first(doc, "$.model_version")))


def label_of(v: Any) -> str | None:
    if v is MISSING or v is None:
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return number_label(v)[:200]
    return json.dumps(v)[:200]
