"""Capture timestamps -> epoch seconds (float, UTC), shared by every reader.

Accepted forms:

* ISO 8601 text WITH a zone: ``2023-07-25T10:58:25.577252+00:00``, ``...Z``, millisecond or
  microsecond fractions (digits beyond microseconds are cut), a space instead of ``T``.
  A time without a zone is refused ("ts has no time zone"): guessing the zone shifts every
  request of a capture by hours and nobody notices.
* epoch seconds as an int or float, or as a numeric string (``"1700000000.25"``).
* a zone-aware ``datetime`` (Parquet TIMESTAMP WITH TIME ZONE columns).

Epoch values of 1e11 or more are refused: they are milliseconds or nanoseconds passed as
seconds (1e11 s is the year 5138). GoReplay nanoseconds go through :func:`epoch_from_ns`.
"""
from __future__ import annotations

import math
import re
from datetime import datetime

__all__ = ["TimestampError", "parse_ts", "epoch_from_ns"]

_MAX_EPOCH_S = 1e11
_fromisoformat = datetime.fromisoformat
_NUMERIC = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


class TimestampError(ValueError):
    """A value that is not a usable capture timestamp; readers turn it into a BadRecord."""


def _check_epoch(value: float, shown: object) -> float:
    if not math.isfinite(value):
        raise TimestampError(f"ts {shown!r} is not a finite number")
    if abs(value) >= _MAX_EPOCH_S:
        raise TimestampError(
            f"ts {shown!r} is too large for epoch seconds (milliseconds or nanoseconds?)"
        )
    return float(value)


def _from_datetime(dt: datetime, shown: object) -> float:
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise TimestampError(f"ts has no time zone: {shown!r}")
    try:
        return dt.timestamp()
    except (OverflowError, ValueError, OSError) as exc:
        raise TimestampError(f"ts {shown!r} is out of range: {exc}") from None


def parse_ts(value: object) -> float:
    """Epoch seconds from a captured ``ts`` value; raises TimestampError with the reason."""
    if type(value) is str and value[4:5] == "-" and value[:4].isdigit():
        # Fast path for the common ISO 8601 text: four digits then "-" cannot be epoch seconds, and
        # what fromisoformat takes as it is, it takes the same after strip() below.
        try:
            dt = _fromisoformat(value)
        except ValueError:
            pass  # the general path below says why (or accepts it once stripped)
        else:
            return _from_datetime(dt, value)
    if isinstance(value, bool):
        raise TimestampError(f"ts must be a time, not a boolean: {value!r}")
    if isinstance(value, int):
        try:
            as_float = float(value)
        except OverflowError:
            raise TimestampError(f"ts {value!r} is out of range") from None
        return _check_epoch(as_float, value)
    if isinstance(value, float):
        return _check_epoch(value, value)
    if isinstance(value, datetime):
        return _from_datetime(value, value.isoformat())
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise TimestampError("ts is empty")
        if _NUMERIC.fullmatch(text):
            try:
                return _check_epoch(float(text), value)
            except (OverflowError, ValueError):
                raise TimestampError(f"ts {value!r} is out of range") from None
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise TimestampError(
                f"ts {value!r} is neither ISO 8601 with a time zone nor epoch seconds"
            ) from None
        return _from_datetime(dt, value)
    raise TimestampError(f"ts must be a string or a number, not {type(value).__name__}")


def epoch_from_ns(ns: int) -> float:
    """GoReplay meta-line timestamps are Unix nanoseconds."""
    try:
        seconds = ns / 1e9
    except OverflowError:
        raise TimestampError(f"timestamp {ns!r} ns is out of range") from None
    return _check_epoch(seconds, ns)
