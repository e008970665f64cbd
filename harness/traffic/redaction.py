"""Secrets never leave the traffic stage: headers, query parameters and JSON fields are masked here,
before anything is stored, logged, rendered or sent. Test credentials for the targets are added later,
at send time, from the environment (replay.headers), and are never stored either."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

import orjson

from ..jsonpath import MISSING, set_all
from ..scenario import RedactConfig
from .jsonl_reader import compact_text
from .record import NOT_PARSED, CapturedRequest, _keep_doc

__all__ = ["Redactor", "REDACTED", "DEFAULT_SECRET_HEADERS", "PARSE"]

REDACTED = "[REDACTED]"
PARSE: Any = NOT_PARSED  # Redactor.body: the body has not been parsed yet
DEFAULT_SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
                          "api-key", "x-auth-token", "x-amz-security-token")
# Query parameters and JSON keys whose values are credentials whatever the scenario says.
_SECRET_NAME = re.compile(r"(^|[_\-.])(api[_\-]?key|apikey|access[_\-]?token|refresh[_\-]?token|token|secret|"
                          r"password|passwd|client[_\-]?secret|session[_\-]?id|auth)([_\-.]|$)", re.I)


# A superset of what _SECRET_NAME matches, on raw bytes: where none of these is in a body, no key can be
# secret. A JSON \u00XX escape or a form's %-escape could spell a name in other bytes, so they count as
# well (\u escapes of other scripts, as in a JSON-encoded CJK prompt, cannot spell an ASCII name).
# Searched in the lowered bytes: a case-insensitive regex took 4 us on a 60-byte answer and 37 us on a 1 kB
# one. Up to _SHORT bytes one pass of an alternation (0.6 us on a 36-byte answer, against 2.2 us for a
# substring test per part, the Python loop's own cost); above, a substring test per part (13 us on 2 kB,
# against 16 us).
_SECRET_KEY_PARTS = (b"key", b"token", b"secret", b"passw", b"session", b"auth")
_JSON_PARTS = _SECRET_KEY_PARTS + (b"\\u00",)
_FORM_PARTS = _SECRET_KEY_PARTS + (b"%",)
_SHORT = 512


def _any_of(parts: tuple[bytes, ...]) -> Any:
    return re.compile(b"|".join(re.escape(p) for p in parts)).search


_JSON_ANY = _any_of(_JSON_PARTS)
_FORM_ANY = _any_of(_FORM_PARTS)


def _may_name_a_secret(body: bytes, parts: tuple[bytes, ...], any_of: Any) -> bool:
    low = body.lower()
    if len(low) <= _SHORT:
        return any_of(low) is not None
    for part in parts:
        if part in low:
            return True
    return False


_FORM = re.compile(rb"^[A-Za-z0-9_.~%+\-\[\]]+=[^&\s]*(&[A-Za-z0-9_.~%+\-\[\]]+=[^&\s]*)*\s*$")
_NAME_VALUE = re.compile(r"(([A-Za-z0-9_.\-\[\]]+)=)[^&\s'\"]*")


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


@dataclass(frozen=True)
class Redactor:
    config: RedactConfig = RedactConfig()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_headers", {h.lower() for h in (*DEFAULT_SECRET_HEADERS, *self.config.headers)})
        object.__setattr__(self, "_query", {q.lower() for q in self.config.query})

    def header_is_secret(self, name: str) -> bool:
        return name.lower() in self._headers  # type: ignore[attr-defined]

    def headers(self, headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        secret = self._headers  # type: ignore[attr-defined]
        if not any(k.lower() in secret for k, _ in headers):
            return tuple(headers)  # nothing to mask: the same tuple when it is one
        return tuple((k, REDACTED if self.header_is_secret(k) else v) for k, v in headers)

    def path(self, path: str) -> str:
        if "?" not in path:
            return path
        parts = urlsplit(path)
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if not any(self._query_secret(k) for k, _ in pairs):
            return path
        query = urlencode([(k, REDACTED if self._query_secret(k) else v) for k, v in pairs], safe="[]")
        return f"{parts.path}?{query}"

    def _query_secret(self, name: str) -> bool:
        return name.lower() in self._query or is_secret_name(name)  # type: ignore[attr-defined]

    def body(self, body: bytes, doc: Any = PARSE) -> bytes:
        """Masks configured JSON paths and credential-named keys of JSON bodies, and credential-named
        fields of form-encoded bodies (`user=a&password=...`); other bodies pass unchanged.

        `doc`: the body parsed already by the caller (MISSING: it is not JSON), which is then masked in
        place rather than parsed again; the caller must own it (no cache shared with others)."""
        if not body:
            return body
        if body[:1] not in (b"{", b"["):
            return self._form(body)
        if not self.may_mask_json(body):
            return body
        if doc is PARSE:
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                try:
                    doc = json.loads(body)
                except (ValueError, RecursionError):
                    return body
        elif doc is MISSING:
            return body
        changed = self.mask_doc(doc)
        return compact_text(doc).encode() if changed else body

    def may_mask_json(self, raw: bytes) -> bool:
        """False where the JSON text `raw` certainly has nothing to mask. Most bodies hold no credential-like
        key at all: a byte scan is far cheaper than parsing them."""
        return bool(self.config.json_paths) or _may_name_a_secret(raw, _JSON_PARTS, _JSON_ANY)

    def mask_doc(self, doc: Any) -> int:
        """Masks a parsed JSON document in place; returns how many values were masked."""
        changed = sum(set_all(doc, p, REDACTED) for p in self.config.json_paths)
        return changed + _mask_secret_keys(doc)

    def _form(self, body: bytes) -> bytes:
        if not _FORM.match(body) or not _may_name_a_secret(body, _FORM_PARTS, _FORM_ANY):
            return body
        text = body.decode("ascii", "replace")
        pairs = parse_qsl(text, keep_blank_values=True)
        if not any(self._query_secret(k) for k, _ in pairs):
            return body
        return urlencode([(k, REDACTED if self._query_secret(k) else v) for k, v in pairs], safe="[]").encode()

    def reason(self, text: str) -> str:
        """Masks credential-like `name=value` pairs in free text, such as a bad record's reason quoting the
        record's path."""
        return _NAME_VALUE.sub(lambda m: m.group(1) + REDACTED if self._query_secret(m.group(2)) else m.group(0), text)

    def request(self, req: CapturedRequest) -> CapturedRequest:
        headers, path, body = self.headers(req.headers), self.path(req.path), self.body(req.body)
        response = req.response
        if response is not None:
            response_headers = self.headers(response.headers)
            if response_headers is not response.headers:
                response = replace(response, headers=response_headers)
        if headers is req.headers and path is req.path and body is req.body and response is req.response:
            return req  # nothing to mask (records are immutable): keeps its parsed body for the segments
        out = replace(req, headers=headers, path=path, body=body, response=response)
        if body is req.body:
            _keep_doc(req, out)  # same bytes, same parse
        return out

    def text(self, text: str, extra_secrets: tuple[str, ...] = ()) -> str:
        """Masks known secret values (e.g. the test credentials sent) in free text such as response excerpts."""
        for s in extra_secrets:
            if s and len(s) >= 4:
                text = text.replace(s, REDACTED)
        return text


def _mask_secret_keys(node: object) -> int:
    count = 0
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, str) and is_secret_name(k) and isinstance(v, (str, int, float)) and v != REDACTED:
                node[k] = REDACTED
                count += 1
            else:
                count += _mask_secret_keys(v)
    elif isinstance(node, list):
        for v in node:
            count += _mask_secret_keys(v)
    return count
