"""How to read a target's answer: one reader per protocol, each returning an OutputRead.

- json: the answer is a JSON document; prediction and confidence by JSON path;
- kserve_v2: Open Inference Protocol (`POST /v2/models/{name}/infer`): outputs[].data;
- openai: chat/completions, plain or streamed (SSE), with token timing and usage.
The configured detectors (output.detectors) then run on every 2xx answer that is JSON."""
from __future__ import annotations

from typing import Mapping, Sequence

from ..scenario import DetectorConfig
from .json_protocol import OutputRead, read_json_output

__all__ = ["OutputRead", "read_output", "PROTOCOLS"]

PROTOCOLS = ("json", "kserve_v2", "openai")


def read_output(protocol: str, status: int, body: bytes, prediction_path: str, confidence_path: str, *,
                headers: Mapping[str, str] | None = None, arrivals: Sequence[tuple[int, float]] = (),
                detectors: DetectorConfig | None = None) -> OutputRead:
    """`headers` are the answer's (lower-case names); `arrivals` the client's (bytes so far, ms since send)
    record of a streamed answer."""
    if protocol == "json":
        out = read_json_output(status, body, prediction_path, confidence_path)
    elif protocol == "kserve_v2":
        from .kserve_v2 import read_kserve_v2_output  # noqa: PLC0415 - optional protocols load on use

        out = read_kserve_v2_output(status, body, prediction_path, confidence_path)
    elif protocol == "openai":
        from .openai import read_openai_output  # noqa: PLC0415

        out = read_openai_output(status, body, prediction_path, confidence_path,
                                 content_type=(headers or {}).get("content-type"), arrivals=arrivals)
    else:
        raise ValueError(f"protocol {protocol!r} has no reader")
    if detectors is not None and 200 <= status < 300 and not out.invalid_json:
        from .detectors import apply_detectors  # noqa: PLC0415

        out = apply_detectors(out, detectors, headers)
    return out
