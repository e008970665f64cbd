"""How to read a target's answer: one reader per protocol, each returning an OutputRead."""
from __future__ import annotations

from .json_protocol import OutputRead, read_json_output

__all__ = ["OutputRead", "read_output"]


def read_output(protocol: str, status: int, body: bytes, prediction_path: str, confidence_path: str) -> OutputRead:
    if protocol == "json":
        return read_json_output(status, body, prediction_path, confidence_path)
    from .kserve_v2 import read_kserve_v2_output  # noqa: PLC0415 - optional protocols load on use
    if protocol == "kserve_v2":
        return read_kserve_v2_output(status, body)
    raise ValueError(f"protocol {protocol!r} has no reader")
