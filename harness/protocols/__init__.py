"""How to read a target's answer: one reader per protocol, each returning an OutputRead.

- json: the answer is a JSON document; prediction and confidence by JSON path;
- kserve_v1: TF Serving / KServe V1 / MLflow predict: `{"predictions": [...]}`, one entry per row;
- kserve_v2: Open Inference Protocol (`POST /v2/models/{name}/infer`): outputs[].data;
- kserve_v2_grpc: the same protocol over gRPC (inference.GRPCInferenceService): the answer message is read
  into the V2 JSON form, then as kserve_v2 (harness.protocols.kserve_v2_grpc);
- openai: chat/completions, plain or streamed (SSE), with token timing and usage.
The configured detectors (output.detectors) then run on every 2xx answer that is JSON, and batched
answers are read row by row (output.rows; harness.protocols.rows)."""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

from ..scenario import DetectorConfig, RowsConfig
from .json_protocol import OutputRead, read_json_output

__all__ = ["OutputRead", "read_output", "PROTOCOLS", "answers_output"]

PROTOCOLS = ("json", "kserve_v1", "kserve_v2", "kserve_v2_grpc", "openai")
# Requests whose answer is never a model's output: HEAD's has no body (HTTP), OPTIONS' is the server's
# (CORS preflight, Allow). A live shadow mirrors them (load balancers' health checks, browsers' preflights),
# and read as outputs they would be an empty "invalid JSON" on both legs, an error rate no model caused.
_NO_OUTPUT_METHODS = frozenset({"HEAD", "OPTIONS"})


def answers_output(method: str | None) -> bool:
    """Whether a request's answer is read as the model's output (its status is judged either way)."""
    return method is None or method.upper() not in _NO_OUTPUT_METHODS


def read_output(protocol: str, status: int, body: bytes, prediction_path: str, confidence_path: str, *,
                headers: Mapping[str, str] | None = None, arrivals: Sequence[tuple[int, float]] = (),
                detectors: DetectorConfig | None = None, rows: RowsConfig | None = None) -> OutputRead:
    """`headers` are the answer's (lower-case names); `arrivals` the client's (bytes so far, ms since send)
    record of a streamed answer."""
    # a batched answer read row by row keeps NaN and Infinity for its rows to judge (an invalid row)
    by_rows = rows is not None and rows.active(protocol)
    strict = not by_rows
    if protocol == "json":
        out = read_json_output(status, body, prediction_path, confidence_path, strict)
    elif protocol == "kserve_v1":
        from .kserve_v1 import read_kserve_v1_output  # noqa: PLC0415 - optional protocols load on use

        out = read_kserve_v1_output(status, body, prediction_path, confidence_path, strict)
    elif protocol == "kserve_v2":
        from .kserve_v2 import read_kserve_v2_output  # noqa: PLC0415 - optional protocols load on use

        out = read_kserve_v2_output(status, body, prediction_path, confidence_path, strict)
    elif protocol == "kserve_v2_grpc":
        from .kserve_v2_grpc import read_kserve_v2_grpc_output  # noqa: PLC0415

        out = read_kserve_v2_grpc_output(status, body, prediction_path, confidence_path, headers)
    elif protocol == "openai":
        from .openai import read_openai_output  # noqa: PLC0415

        out = read_openai_output(status, body, prediction_path, confidence_path,
                                 content_type=(headers or {}).get("content-type"), arrivals=arrivals)
    else:
        raise ValueError(f"protocol {protocol!r} has no reader")
    if out.invalid_json and headers:
        out = _declared_charset(out, headers.get("content-type") or "")
    if detectors is not None and detectors.active and 200 <= status < 300 and not out.invalid_json:
        from .detectors import apply_detectors  # noqa: PLC0415

        out = apply_detectors(out, detectors, headers)
    if by_rows and 200 <= status < 300 and not out.invalid_json:
        assert rows is not None
        out = _with_rows(protocol, out, rows, prediction_path, confidence_path)
    return out


def _declared_charset(out: OutputRead, content_type: str) -> OutputRead:
    """An unreadable answer that declares a charset other than UTF-8 says so: a server that answers JSON in
    ISO-8859-1 is one that a UTF-8 consumer cannot read (RFC 8259: JSON between systems is UTF-8)."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.strip().partition("=")
        charset = value.strip().strip('"').lower()
        if name.strip().lower() == "charset" and charset not in ("utf-8", "utf8"):
            return dataclasses.replace(out, invalid_reason=(out.invalid_reason or "not JSON") +
                                       f"; the answer declares charset {charset[:40]}, and JSON between systems is "
                                       "UTF-8 (RFC 8259)")
    return out


def _with_rows(protocol: str, out: OutputRead, cfg: RowsConfig, prediction_path: str,
               confidence_path: str) -> OutputRead:
    from .rows import read_rows  # noqa: PLC0415

    if protocol == "kserve_v2_grpc":  # the answer is in the V2 JSON form by now
        protocol = "kserve_v2"
    got = read_rows(protocol, out.doc, cfg)
    extra: dict[str, object] = {"row_count": got.count, "row_labels": got.labels, "row_scores": got.scores,
                                "row_invalid": got.invalid, "row_error": got.error}
    if protocol == "kserve_v2" and got.count is not None:
        # One prediction for a batch is meaningless (the first label of 32, the largest of 64 probabilities):
        # a batch is judged row by row, and a one-row answer's prediction is its row's. The request-level
        # values stay as read only where the scenario's paths name them.
        from ..jsonpath import MISSING, find_first  # noqa: PLC0415

        single = got.count == 1 and got.invalid[0] is None
        if find_first(out.doc, prediction_path) in (MISSING, None):
            extra["prediction"] = got.labels[0] if single else None
        if find_first(out.doc, confidence_path) in (MISSING, None):
            extra["confidence"] = got.scores[0] if single else None
    return dataclasses.replace(out, **extra)  # type: ignore[arg-type]
