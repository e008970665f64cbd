"""Detectors configured under output.detectors, applied to every 2xx answer that is JSON.

- abstention: the pattern is searched in the content (the assistant's text, or `content:` by JSON path);
- citations: the pattern is found in the content, or the `field` is present and not empty;
- fallback model: the model name (from `field`, default $.model, or from a response `header`) does not
  fully match `expected_model`; with a header and no expected_model, the header's presence (not empty,
  0, false or no) says a fallback answered.
A detector that is not configured, or has nothing to read in an answer, leaves its column null.
"""
from __future__ import annotations

import re
from dataclasses import replace
from functools import lru_cache
from typing import Any, Mapping

from ..jsonpath import MISSING, find_first
from ..scenario import DetectorConfig
from .json_protocol import OutputRead

__all__ = ["apply_detectors"]

_FALSY = frozenset({"", "0", "false", "no"})


@lru_cache(maxsize=64)
def _rx(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def apply_detectors(out: OutputRead, cfg: DetectorConfig | None, headers: Mapping[str, str] | None) -> OutputRead:
    if cfg is None or out.doc is MISSING:
        return out
    content = out.content
    if cfg.content is not None:
        content = _as_text(find_first(out.doc, cfg.content))
    changes: dict[str, Any] = {}
    if cfg.abstention_pattern is not None and content is not None:
        changes["abstained"] = _rx(cfg.abstention_pattern).search(content) is not None
    if cfg.citation_pattern is not None or cfg.citation_field is not None:
        by_pattern = (_rx(cfg.citation_pattern).search(content) is not None
                      if cfg.citation_pattern is not None and content is not None else None)
        by_field = _present(find_first(out.doc, cfg.citation_field)) if cfg.citation_field is not None else None
        if by_pattern is not None or by_field is not None:
            changes["cited"] = bool(by_pattern) or bool(by_field)
    if cfg.fallback_configured:
        changes["fallback_model"] = _fallback(out.doc, cfg, {k.lower(): v for k, v in (headers or {}).items()})
    return replace(out, **changes) if changes else out


def _fallback(doc: Any, cfg: DetectorConfig, headers: Mapping[str, str]) -> bool | None:
    if cfg.fallback_header is not None:
        value = headers.get(cfg.fallback_header.lower())
        if cfg.expected_model is None:
            return value is not None and value.strip().lower() not in _FALSY
        model = value.strip() if value is not None else None
    else:
        model = _as_text(find_first(doc, cfg.model_field))
    if model is None or cfg.expected_model is None:
        return None
    return _rx(cfg.expected_model).fullmatch(model) is None


def _as_text(v: Any) -> str | None:
    if isinstance(v, str):
        return v
    if isinstance(v, list):  # content parts
        parts = [p.get("text") if isinstance(p, dict) else p for p in v]
        texts = [p for p in parts if isinstance(p, str)]
        return "".join(texts) if texts else None
    return None


def _present(v: Any) -> bool:
    return v is not MISSING and v is not None and v != "" and v != [] and v != {}
