"""Segment values of a request, from the scenario's segment specs.

Every request also belongs to the overall segment; analysis adds it, so it is not a column here.
Values are strings; a missing source gives "(none)". Cardinality is capped per segment: the first
`max_values` distinct values keep their name, later ones are grouped as "other" (in capture order,
which is stable for a given capture).
"""
from __future__ import annotations

import bisect
import json
import re
from typing import Any, Iterable
from urllib.parse import parse_qsl, urlsplit

import orjson

from ..jsonpath import MISSING, find_first
from ..scenario import SegmentSpec
from .record import CapturedRequest

__all__ = ["SegmentEvaluator", "route_template", "bucket_label", "NONE_VALUE", "OTHER_VALUE"]

NONE_VALUE = "(none)"
OTHER_VALUE = "other"
# An id-like path segment: digits, UUIDs, long hex, or long tokens mixing letters and digits.
_ID_SEGMENT = re.compile(
    r"^(\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{12,}"
    r"|(?=[A-Za-z0-9_\-]*\d)[A-Za-z0-9_\-]{16,})$")


def route_template(path: str) -> str:
    """'/v1/accounts/123/score?x=1' -> '/v1/accounts/{id}/score'."""
    bare = path.split("?", 1)[0].split("#", 1)[0]
    return "/".join("{id}" if _ID_SEGMENT.match(part) else part for part in bare.split("/")) or "/"


def bucket_label(value: float, buckets: tuple[float, ...]) -> str:
    """Buckets [1, 8, 32] -> '<1', '1-7', '8-31', '32+' (integers) or '[a, b)' ranges for floats."""
    i = bisect.bisect_right(buckets, value)
    ints = all(float(b).is_integer() for b in buckets)
    fmt = (lambda x: str(int(x))) if ints else (lambda x: f"{x:g}")
    if i == 0:
        return f"<{fmt(buckets[0])}"
    if i == len(buckets):
        return f"{fmt(buckets[-1])}+"
    lo, hi = buckets[i - 1], buckets[i]
    if ints:
        return fmt(lo) if hi - lo == 1 else f"{fmt(lo)}-{fmt(hi - 1)}"
    return f"[{fmt(lo)}, {fmt(hi)})"


class SegmentEvaluator:
    def __init__(self, specs: Iterable[SegmentSpec]) -> None:
        self.specs = tuple(specs)
        self._plain = [s for s in self.specs if s.kind != "cross"]
        self._cross = [s for s in self.specs if s.kind == "cross"]
        self._seen: dict[str, set[str]] = {s.name: set() for s in self.specs}
        self._needs_body = any(s.kind in ("json_path", "json_array_length", "present") for s in self.specs)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def values(self, req: CapturedRequest) -> dict[str, str]:
        doc: Any = MISSING
        if self._needs_body and req.body[:1] in (b"{", b"["):
            try:
                doc = orjson.loads(req.body)
            except orjson.JSONDecodeError:
                try:
                    doc = json.loads(req.body)
                except (ValueError, RecursionError):
                    doc = MISSING
        out: dict[str, str] = {}
        for spec in self._plain:
            out[spec.name] = self._cap(spec, self._raw_value(spec, req, doc))
        for spec in self._cross:
            out[spec.name] = self._cap(spec, " & ".join(out[n] for n in spec.arg or ()))
        return out

    def _cap(self, spec: SegmentSpec, value: str) -> str:
        seen = self._seen[spec.name]
        if value in seen:
            return value
        if len(seen) >= spec.max_values:
            return OTHER_VALUE
        seen.add(value)
        return value

    def _raw_value(self, spec: SegmentSpec, req: CapturedRequest, doc: Any) -> str:
        kind = spec.kind
        if kind == "path_template":
            return route_template(req.path)
        if kind == "header":
            v = req.header(str(spec.arg))
            return _bucketed(v, spec) if v not in (None, "") else NONE_VALUE
        if kind == "query":
            query = urlsplit(req.path).query
            for k, v in parse_qsl(query, keep_blank_values=True):
                if k == spec.arg:
                    return _bucketed(v, spec) if v != "" else NONE_VALUE
            return NONE_VALUE
        if kind == "body_bytes":
            return bucket_label(len(req.body), spec.buckets or (0,))
        if doc is MISSING:
            return NONE_VALUE if kind != "present" else _present_label(spec, MISSING)
        if kind == "json_path":
            v = find_first(doc, str(spec.arg))
            if v is MISSING or v is None:
                return NONE_VALUE
            return _bucketed(v, spec)
        if kind == "json_array_length":
            v = find_first(doc, str(spec.arg))
            n = len(v) if isinstance(v, (list, str, dict)) else 0
            return bucket_label(n, spec.buckets or (0,))
        if kind == "present":
            return _present_label(spec, doc)
        raise AssertionError(kind)


def _present_label(spec: SegmentSpec, doc: Any) -> str:
    """Feature availability: which of the listed fields are present and not null."""
    paths = spec.arg or ()
    present = [] if doc is MISSING else [p for p in paths if find_first(doc, p, None) is not None]
    if len(present) == len(paths):
        return "all"
    if not present:
        return "none"
    missing = [p.rsplit(".", 1)[-1] for p in paths if p not in present]
    return "missing " + ",".join(missing)


def _bucketed(value: Any, spec: SegmentSpec) -> str:
    if spec.buckets:
        try:
            return bucket_label(float(value), spec.buckets)
        except (TypeError, ValueError):
            return NONE_VALUE
    if isinstance(value, (dict, list)):
        return json.dumps(value, sort_keys=True)[:64]
    return str(value)[:64]
