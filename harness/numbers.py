"""JSON numbers as floats, for every reader: a valid JSON document must never trip one. Python's json reads an
integer of any size exactly, and float() of one past the float range raises, where the same number written
with an exponent (1e400) already reads as inf."""
from __future__ import annotations

import math
from typing import Any

__all__ = ["number_of", "finite_number", "number_label"]


def number_of(v: Any) -> float | None:
    """A JSON number as a float (+-inf past the float range), None for anything else."""
    # A number sent as a string is a contract break a schema catches; it is not a number here.
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    try:
        return float(v)
    except OverflowError:
        return math.inf if v > 0 else -math.inf


def finite_number(v: Any) -> float | None:
    """A JSON number that is a usable quantity (a duration, a timestamp): None for inf, nan, an integer past the
    float range and anything that is not a number."""
    x = number_of(v)
    return x if x is not None and math.isfinite(x) else None


def number_label(v: int | float) -> str:
    """A number as a label: equal JSON numbers are one label whatever their spelling (1, 1.0 and an FP32
    tensor's 1.0 against an INT64 tensor's 1), an integral float as its integer while exact (|v| < 2**53)."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 2**53:
        return str(int(v))
    return repr(v) if isinstance(v, float) else str(v)
