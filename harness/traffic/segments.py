"""Segment values of a request, from the scenario's segment specs.

Every request also belongs to the overall segment; analysis adds it, so it is not a column here.
Values are strings; a missing source gives "(none)". Cardinality is capped per segment: the first
`max_values` distinct values keep their name, later ones are grouped as "(other)" (in capture order,
which is stable for a given capture). Those two labels are harness's own: a captured value that reads the
same is shown in double quotes ('"(none)"'), so that a tenant called "(none)" is never merged with the
requests that have no tenant. A cross joins its parts with " & "; a part that contains "&" or starts with a
double quote is written as a JSON string, so that two combinations never share a label.
"""
from __future__ import annotations

import bisect
import json
import re
from typing import Any, Callable, Iterable
from urllib.parse import parse_qsl, urlsplit

from ..jsonpath import MISSING, find_first, first_getter
from ..scenario import SegmentSpec
from .record import CapturedRequest

__all__ = ["SegmentEvaluator", "route_template", "bucket_label", "prompt_tokens", "NONE_VALUE", "OTHER_VALUE"]

NONE_VALUE = "(none)"
PHASE_PENDING = ""  # a run_phase value until the schedule is known (traffic.prepare.set_run_phases)
OTHER_VALUE = "(other)"
_RESERVED = frozenset((NONE_VALUE, OTHER_VALUE))


def _literal(value: str) -> str:
    """A captured value as a label: quoted where it reads like one of harness's own labels."""
    return f'"{value}"' if value in _RESERVED else value


_JOIN = " & "


def cross_label(parts: tuple[str, ...] | list[str]) -> str:
    """The parts joined by " & ". Unquoted parts hold no "&" and never start with '"', and a quoted one ends at
    its closing quote, so the label reads back into exactly one combination ("a &" with "b" is not "a" with
    "& b")."""
    label = _JOIN.join(parts)
    if label.count("&") == len(parts) - 1 and '"' not in label:
        return label
    return _JOIN.join(json.dumps(p, ensure_ascii=False) if "&" in p or p.startswith('"') else p for p in parts)


# An id-like path segment: digits, UUIDs, long hex, or long tokens mixing letters and digits.
_ID_SEGMENT = re.compile(
    r"^(\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{12,}"
    r"|(?=[A-Za-z0-9_\-]*\d)[A-Za-z0-9_\-]{16,})$")


# The same id test over a whole path in one pass: "/" then an id-like segment that runs to the next "/" or
# the end. No alternative can match "/", so each match is exactly one whole segment.
_ID_IN_PATH = re.compile(
    r"/(?:\d+|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{12,}"
    r"|(?=[A-Za-z0-9_\-]{16})(?=[A-Za-z0-9_\-]*\d)[A-Za-z0-9_\-]{16,})(?![^/])")  # length first: cheaper
_sub_ids = _ID_IN_PATH.sub
# Paths without an id segment (their own template) repeat from record to record; ids mostly do not.
_PLAIN_ROUTES: set[str] = set()
_PLAIN_ROUTES_MAX = 4096


def route_template(path: str) -> str:
    """'/v1/accounts/123/score?x=1' -> '/v1/accounts/{id}/score'."""
    bare = path.partition("?")[0].partition("#")[0]
    if bare in _PLAIN_ROUTES:
        return bare
    if bare[:1] == "/" and "\n" not in bare:
        route = _sub_ids("/{id}", bare)
        if route == bare and len(_PLAIN_ROUTES) < _PLAIN_ROUTES_MAX:
            _PLAIN_ROUTES.add(bare)
        return route
    # Paths from the readers always take the line above; this is the segment-by-segment definition
    # ("$" also matches before a final newline, which the one-pass pattern does not copy).
    return "/".join("{id}" if _ID_SEGMENT.match(part) else part for part in bare.split("/")) or "/"


def _bucket_label_at(i: int, buckets: tuple[float, ...]) -> str:
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


# buckets -> the label of each bisect position (a label depends on the position only): a cache, bounded.
_LABELS: dict[tuple[float, ...], list[str]] = {}


def _bucket_labels(buckets: tuple[float, ...]) -> list[str] | None:
    """All labels of `buckets`, by bisect position; None when they cannot be cached."""
    try:
        labels = _LABELS.get(buckets)
    except TypeError:  # unhashable (a list)
        return None
    if labels is None:
        try:
            labels = [_bucket_label_at(i, buckets) for i in range(len(buckets) + 1)]
        except Exception:  # noqa: BLE001 - bucket_label raises it again, for the one value that needs it
            return None
        if len(_LABELS) < 256:
            _LABELS[buckets] = labels
    return labels


def bucket_label(value: float, buckets: tuple[float, ...]) -> str:
    """Buckets [1, 8, 32] -> '<1', '1-7', '8-31', '32+' (integers) or '[a, b)' ranges for floats."""
    i = bisect.bisect_right(buckets, value)
    labels = _bucket_labels(buckets)
    return labels[i] if labels is not None else _bucket_label_at(i, buckets)


def _from_body(path: str, label: Callable[[Any], str]) -> Callable[[CapturedRequest], str]:
    """A segment read at `path` in the JSON body: label(value found, or MISSING); "none" without a JSON body."""
    first = first_getter(path)

    def value(req: CapturedRequest) -> str:
        doc = req.json_body()
        return NONE_VALUE if doc is MISSING else label(first(doc))
    return value


def _admit(seen: set[str], max_values: int, value: str) -> str:
    """A value not seen yet: kept (and remembered) while the segment has room, else "(other)"."""
    if len(seen) >= max_values:
        return OTHER_VALUE
    seen.add(value)
    return value


class SegmentEvaluator:
    def __init__(self, specs: Iterable[SegmentSpec]) -> None:
        self.specs = tuple(specs)
        self._plain = [s for s in self.specs if s.kind != "cross"]
        self._cross = [s for s in self.specs if s.kind == "cross"]
        self._seen: dict[str, set[str]] = {s.name: set() for s in self.specs}
        self._needs_body = any(s.kind in ("json_path", "json_array_length", "present", "prompt_tokens") for s in self.specs)
        # Each spec compiled once into a function of the request (same values as _raw_value).
        self._plain_steps = [(s.name, self._compile(s), self._seen[s.name], s.max_values) for s in self._plain]
        self._cross_steps = [(s.name, tuple(s.arg or ()), self._seen[s.name], s.max_values) for s in self._cross]
        fast = self._straight_line_values()
        if fast is not None:
            self.values = fast  # type: ignore[method-assign]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.specs)

    def values(self, req: CapturedRequest) -> dict[str, str]:
        out: dict[str, str] = {}
        for name, get, seen, cap in self._plain_steps:
            value = get(req)
            if value not in seen:  # the cardinality cap, as _cap
                value = _admit(seen, cap, value)
            out[name] = value
        for name, parts, seen, cap in self._cross_steps:
            value = cross_label([out[n] for n in parts])
            if value not in seen:
                value = _admit(seen, cap, value)
            out[name] = value
        return out

    def _straight_line_values(self) -> Callable[[CapturedRequest], dict[str, str]] | None:
        """values() written out for these specs, without the loop (it runs for each of millions of
        records): the same steps in the same order, the commonest kinds spelled out in place. None when
        names repeat or a cross names a segment not computed before it: values() then raises or behaves
        as it always did. Spec names, arguments and objects reach the code only through `env`."""
        names = [n for n, *_ in self._plain_steps] + [n for n, *_ in self._cross_steps]
        if len(set(names)) != len(names):
            return None
        env: dict[str, Any] = {"_admit": _admit, "route_template": route_template, "MISSING": MISSING,
                               "NONE_VALUE": NONE_VALUE, "bisect_right": bisect.bisect_right,
                               "_literal": _literal, "_RESERVED": _RESERVED,
                               "cross_label": cross_label}
        lines = ["def values(req):"]
        var: dict[str, str] = {}
        have_index = have_doc = False
        for i, (spec, (name, get, seen, cap)) in enumerate(zip(self._plain, self._plain_steps)):
            env[f"get{i}"], env[f"seen{i}"], env[f"cap{i}"] = get, seen, cap
            labels = _bucket_labels(spec.buckets or (0,)) if spec.kind == "json_array_length" else None
            first = first_getter(str(spec.arg)) if spec.kind == "json_array_length" else None
            if spec.kind == "path_template":
                lines.append(f"    v{i} = route_template(req.path)")
            elif spec.kind == "header" and not spec.buckets:
                env[f"lname{i}"] = str(spec.arg).lower()
                if not have_index:
                    lines += ["    index = req._hindex", "    if index is None:", "        index = req._header_index()"]
                    have_index = True
                lines += [f"    v{i} = index.get(lname{i})",
                          f"    if v{i} is None or v{i} == '':", f"        v{i} = NONE_VALUE", "    else:",
                          f"        v{i} = str(v{i})[:64]", f"        if v{i} in _RESERVED:",
                          f"            v{i} = _literal(v{i})"]
            elif labels is not None and first is not None:
                env[f"labels{i}"], env[f"buckets{i}"], env[f"first{i}"] = labels, spec.buckets or (0,), first
                if not have_doc:
                    lines.append("    doc = req.json_body()")
                    have_doc = True
                lines += ["    if doc is MISSING:", f"        v{i} = NONE_VALUE", "    else:",
                          f"        x = first{i}(doc)",
                          f"        v{i} = labels{i}[bisect_right(buckets{i}, "
                          "len(x) if isinstance(x, (list, str, dict)) else 0)]"]
            else:
                lines.append(f"    v{i} = get{i}(req)")
            lines += [f"    if v{i} not in seen{i}:", f"        v{i} = _admit(seen{i}, cap{i}, v{i})"]
            var[name] = f"v{i}"
        for j, (name, parts, seen, cap) in enumerate(self._cross_steps, start=len(self._plain_steps)):
            if any(p not in var for p in parts):
                return None
            env[f"seen{j}"], env[f"cap{j}"] = seen, cap
            lines += [f"    v{j} = cross_label(({''.join(var[p] + ', ' for p in parts)}))", f"    if v{j} not in seen{j}:",
                      f"        v{j} = _admit(seen{j}, cap{j}, v{j})"]
            var[name] = f"v{j}"
        for k, name in enumerate(names):
            env[f"name{k}"] = name
        lines.append("    return {" + ", ".join(f"name{k}: {var[n]}" for k, n in enumerate(names)) + "}")
        self._source = "\n".join(lines)
        exec(self._source, env)  # noqa: S102 - our own text (see the docstring)
        return env["values"]  # type: ignore[no-any-return]

    def _compile(self, spec: SegmentSpec) -> Callable[[CapturedRequest], str]:
        kind = spec.kind
        if kind == "run_phase":
            return lambda req: PHASE_PENDING
        if kind == "path_template":
            return lambda req: route_template(req.path)
        if kind == "header" and not spec.buckets:
            name = str(spec.arg)

            def header(req: CapturedRequest) -> str:
                v = req.header(name)
                return _literal(str(v)[:64]) if v not in (None, "") else NONE_VALUE
            return header
        if kind == "prompt_tokens":
            buckets = spec.buckets or (0,)
            return lambda req: bucket_label(prompt_tokens(req), buckets)
        if kind in ("body_bytes", "json_array_length"):
            buckets = spec.buckets or (0,)
            labels = _bucket_labels(buckets)
            if labels is not None:
                bisect_right = bisect.bisect_right
                if kind == "body_bytes":
                    return lambda req: labels[bisect_right(buckets, len(req.body))]
                return _from_body(str(spec.arg), lambda v: labels[bisect_right(
                    buckets, len(v) if isinstance(v, (list, str, dict)) else 0)])
        if kind == "json_path":
            return _from_body(str(spec.arg), lambda v: NONE_VALUE if v is MISSING or v is None else _bucketed(v, spec))
        needs_body = self._needs_body
        return lambda req: self._raw_value(spec, req, req.json_body() if needs_body else MISSING)

    def _raw_value(self, spec: SegmentSpec, req: CapturedRequest, doc: Any) -> str:
        """The reference definition of a plain segment's value (values() runs compiled forms of it)."""
        kind = spec.kind
        if kind == "run_phase":
            return PHASE_PENDING
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
        if kind == "prompt_tokens":
            return bucket_label(prompt_tokens(req), spec.buckets or (0,))
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


def prompt_tokens(req: CapturedRequest) -> int:
    """A request's prompt length in tokens: the trace's own `input_length` when the record has one (LLM
    traces state it), else the whitespace-separated words of the chat messages' text or of `prompt`
    (an estimate: real tokenizers count roughly 1.3 tokens per English word); 0 without either."""
    stated = req.meta.get("input_length")
    if isinstance(stated, int) and not isinstance(stated, bool):
        return stated
    doc = req.json_body()
    if not isinstance(doc, dict):
        return 0
    texts: list[str] = []
    messages = doc.get("messages")
    for m in messages if isinstance(messages, list) else ():
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            texts.append(content)
        elif isinstance(content, list):
            texts.extend(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    prompt = doc.get("prompt")
    if isinstance(prompt, str):
        texts.append(prompt)
    return sum(len(t.split()) for t in texts)


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
    return _literal(str(value)[:64])
