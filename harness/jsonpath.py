"""A small JSONPath subset used by segments, redaction and output extraction.

Supported: `$`, `.key`, `['key']`, `[index]` (negative too) and `[*]` (all items). That covers the
paths people write for model payloads (`$.inputs[0].data`, `$.choices[0].message.content`) without a
dependency; anything else is rejected when the scenario is loaded.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Callable, Iterator

__all__ = ["compile_path", "find_all", "find_first", "first_getter", "set_all", "MISSING", "JsonPathError"]

MISSING = object()
_TOKEN = re.compile(r"\.([A-Za-z_][A-Za-z0-9_\-]*)|\[(-?\d+)\]|\['([^']*)'\]|\[\"([^\"]*)\"\]|\[(\*)\]|\.(\*)")


class JsonPathError(ValueError):
    pass


@lru_cache(maxsize=256)
def compile_path(path: str) -> tuple[str | int | None, ...]:
    """'$.a[0].b' -> ('a', 0, 'b'); None stands for a wildcard."""
    if not path.startswith("$"):
        raise JsonPathError(f"JSON path {path!r} must start with '$'")
    steps: list[str | int | None] = []
    pos = 1
    while pos < len(path):
        m = _TOKEN.match(path, pos)
        if not m:
            raise JsonPathError(f"JSON path {path!r}: cannot parse at {path[pos:]!r}")
        name, index, q1, q2, star1, star2 = m.groups()
        if index is not None:
            steps.append(int(index))
        elif star1 or star2:
            steps.append(None)
        else:
            steps.append(name if name is not None else (q1 if q1 is not None else q2))
        pos = m.end()
    return tuple(steps)


def find_all(doc: Any, path: str) -> Iterator[Any]:
    yield from _walk(doc, compile_path(path))


def find_first(doc: Any, path: str, default: Any = MISSING) -> Any:
    return next(find_all(doc, path), default)


@lru_cache(maxsize=256)
def first_getter(path: str) -> Callable[[Any], Any]:
    """find_first(doc, path) as a function of doc: a plain loop, no generators, for paths without [*] (the
    usual $.a.b[0]). A path that does not compile raises when the function is called, as find_first does."""
    try:
        steps = compile_path(path)
    except JsonPathError:
        return lambda doc: find_first(doc, path)
    if None in steps:
        return lambda doc: find_first(doc, path)

    def first(node: Any) -> Any:
        for step in steps:
            if type(step) is int:
                if isinstance(node, list) and -len(node) <= step < len(node):
                    node = node[step]
                else:
                    return MISSING
            elif isinstance(node, dict) and step in node:
                node = node[step]
            else:
                return MISSING
        return node

    return first


def _walk(node: Any, steps: tuple[str | int | None, ...]) -> Iterator[Any]:
    if not steps:
        yield node
        return
    step, rest = steps[0], steps[1:]
    if step is None:
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            yield from _walk(child, rest)
    elif isinstance(step, int):
        if isinstance(node, list) and -len(node) <= step < len(node):
            yield from _walk(node[step], rest)
    elif isinstance(node, dict) and step in node:
        yield from _walk(node[step], rest)


def set_all(doc: Any, path: str, value: Any) -> int:
    """Replace every match of `path` in place; returns how many were replaced."""
    steps = compile_path(path)
    if not steps:
        return 0
    count = 0
    for parent in _walk(doc, steps[:-1]):
        last = steps[-1]
        if last is None:
            keys = list(parent.keys()) if isinstance(parent, dict) else range(len(parent)) if isinstance(parent, list) else []
            for k in keys:
                parent[k] = value
                count += 1
        elif isinstance(last, int):
            if isinstance(parent, list) and -len(parent) <= last < len(parent):
                parent[last] = value
                count += 1
        elif isinstance(parent, dict) and last in parent:
            parent[last] = value
            count += 1
    return count
