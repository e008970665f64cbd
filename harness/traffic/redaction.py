"""Secrets never leave the traffic stage: headers, query parameters and JSON fields are masked here,
before anything is stored, logged, rendered or sent. Test credentials for the targets are added later,
at send time, from the environment (replay.headers), and are never stored either."""
from __future__ import annotations

import base64
import copy
import re
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Iterable, Iterator, NamedTuple
from urllib.parse import parse_qsl, quote, quote_plus, urlencode, urlsplit

from ..jsonpath import MISSING, find_all, set_all
from ..scenario import STORED_MASK, RedactConfig
from .jsonl_reader import compact_text
from .record import NOT_PARSED, CapturedRequest, _keep_doc, _parse_body, json_like

__all__ = ["Redactor", "REDACTED", "DEFAULT_SECRET_HEADERS", "PARSE", "MIN_SECRET_CHARS", "mask_values", "mask_values_in_doc",
           "masking_order", "content_encoding_of"]

REDACTED = STORED_MASK
PARSE: Any = NOT_PARSED  # Redactor.body: the body has not been parsed yet
DEFAULT_SECRET_HEADERS = ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key",
                          "api-key", "x-auth-token", "x-amz-security-token")
# Header names, query parameters and JSON keys whose values are credentials whatever the scenario says, read
# as words (separators, and camelCase: `authToken` is auth + token, `CSRFToken` csrf + token):
# - a word that names a secret anywhere in the name (`password_confirmation`, `X-Api-Secret-Id`);
# - a last word, or last two, that name one (`X-Vault-Token`, `idToken`, `Ocp-Apim-Subscription-Key`,
#   `private_key`), but not a count or a type of it (`promptTokenCount`, `auth_type`) nor a page token;
# - in a query only, the names URLs carry credentials under (`?key=`, `?sig=`, `X-Amz-Signature`): as JSON
#   keys they are ordinary (`key`, and `signature` in the thinking blocks of LLM chat histories);
# - a session id as a JSON key or query parameter, not as a header (routing: sticky sessions, prefix caches).
_ANY_WORD = frozenset(("password", "passwd", "pwd", "passphrase", "secret", "apikey", "credential", "credentials",
                       "jwt"))
_LAST_WORD = frozenset(("token", "auth", "authorization", "cookie"))
_LAST_TWO = frozenset(("apikey", "privatekey", "secretkey", "accesskey", "subscriptionkey", "functionskey",
                       "masterkey", "accountkey", "signingkey"))
_NOT_SECRET_TOKENS = frozenset(("page", "next", "continuation", "cursor", "sync"))  # pagination, not credentials
_QUERY_NAMES = frozenset(("key", "sig", "signature", "sessionid"))
_WORDS = re.compile(r"[^A-Za-z0-9]+|(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _words(name: str) -> list[str]:
    return [w.lower() for w in _WORDS.split(name) if w]


@lru_cache(maxsize=8192)
def is_secret_name(name: str, where: str = "json") -> bool:
    """Whether a value under this name is a credential; `where`: "json", "query" (a query or form field) or
    "header"."""
    words = _words(name)
    if not words:
        return False
    if any(w in _ANY_WORD for w in words):
        return True
    last = words[-1]
    if last in _LAST_WORD and not (len(words) > 1 and words[-2] in _NOT_SECRET_TOKENS):
        return True
    two = words[-2] + last if len(words) > 1 else last
    if two in _LAST_TWO:
        return True
    if where != "header" and two == "sessionid":
        return True
    return where == "query" and (last in _QUERY_NAMES or two in _QUERY_NAMES or last == "credential")


# A superset of what is_secret_name matches, on raw bytes: where none of these is in a body, no key can be
# secret. A JSON \u00XX escape or a form's %-escape could spell a name in other bytes, so they count as
# well (\u escapes of other scripts, as in a JSON-encoded CJK prompt, cannot spell an ASCII name).
# Searched in the lowered bytes: a case-insensitive regex took 4 us on a 60-byte answer and 37 us on a 1 kB
# one. Up to _SHORT bytes one pass of an alternation (0.6 us on a 36-byte answer, against 2.2 us for a
# substring test per part, the Python loop's own cost); above, a substring test per part (13 us on 2 kB,
# against 16 us).
_SECRET_KEY_PARTS = (b"key", b"token", b"secret", b"pass", b"session", b"auth", b"pwd", b"credential",
                     b"jwt", b"cookie")
_JSON_PARTS = _SECRET_KEY_PARTS + (b"\\u00",)
_FORM_PARTS = _SECRET_KEY_PARTS + (b"sig", b"%")  # the query names, lowered
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


@dataclass(frozen=True)
class Redactor:
    config: RedactConfig = RedactConfig()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_headers", {h.lower() for h in (*DEFAULT_SECRET_HEADERS, *self.config.headers)})
        object.__setattr__(self, "_query", {q.lower() for q in self.config.query})
        object.__setattr__(self, "_header_names", {})  # header name as captured -> secret (names repeat)

    def header_is_secret(self, name: str) -> bool:
        known = self._header_names  # type: ignore[attr-defined]
        secret = known.get(name)
        if secret is None:
            secret = name.lower() in self._headers or is_secret_name(name, "header")  # type: ignore[attr-defined]
            if len(known) < 4096:
                known[name] = secret
        return bool(secret)

    def headers(self, headers: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
        secret = self.header_is_secret
        if not any(secret(k) for k, _ in headers):
            return tuple(headers)  # nothing to mask: the same tuple when it is one
        return tuple((k, REDACTED if secret(k) else v) for k, v in headers)

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
        return name.lower() in self._query or is_secret_name(name, "query")  # type: ignore[attr-defined]

    def body(self, body: bytes, doc: Any = PARSE) -> bytes:
        """Masks configured JSON paths and credential-named keys of JSON bodies (also behind a byte-order
        mark, and each line of JSON lines), and credential-named fields of form-encoded bodies
        (`user=a&password=...`) and of multipart forms; other bodies pass unchanged.

        `doc`: the body parsed already by the caller (MISSING: it is not JSON), which is then masked in
        place rather than parsed again; the caller must own it (no cache shared with others)."""
        if not body:
            return body
        if not json_like(body):
            return self._other(body)
        if not self.may_mask_json(body):
            return body
        if doc is PARSE:
            doc = _parse_body(body)
        if doc is MISSING:
            lines = _json_lines(body)  # JSON lines are no one JSON value
            if lines is None:
                return body
            out = [self.body(line) if json_like(line) else line for line in lines]
            return body if all(a is b for a, b in zip(out, lines)) else b"\n".join(out)
        changed = self.mask_doc(doc)
        return compact_text(doc).encode() if changed else body

    def coded_body(self, body: bytes, content_encoding: str | None, doc: Any = PARSE) -> bytes:
        """`body` masked as `body` masks it, where the request says it is coded (`Content-Encoding`: a client
        that compresses its uploads): decoded, masked, and coded again as it came, so that a replay sends what
        the client sent but for the credentials. One that cannot be decoded (a header that names no coding,
        `Content-Encoding: UTF-8`; or bytes that are not what it says) is masked as it is."""
        if not content_encoding or not body:
            return self.body(body, doc)
        plain = _decoded(body, content_encoding)
        if plain is None:
            return self.body(body, doc)
        masked = self.body(plain)
        if masked is plain:
            return body
        from ..content_encoding import encode_body

        return encode_body(content_encoding, masked)

    def may_mask_json(self, raw: bytes) -> bool:
        """False where the JSON text `raw` certainly has nothing to mask. Most bodies hold no credential-like
        key at all: a byte scan is far cheaper than parsing them."""
        return bool(self.config.json_paths) or _may_name_a_secret(raw, _JSON_PARTS, _JSON_ANY)

    def mask_doc(self, doc: Any) -> int:
        """Masks a parsed JSON document in place; returns how many values were masked."""
        changed = sum(set_all(doc, p, REDACTED) for p in self.config.json_paths)
        return changed + _mask_secret_keys(doc)

    def _other(self, body: bytes) -> bytes:
        """A body that does not start as JSON: a form; or, where it may name a secret at all, JSON behind a
        byte-order mark (written back without it), or a multipart form."""
        if _FORM.match(body):
            return self._form(body)
        if body.startswith(_BOM):
            inner = body[3:]
            masked = self.body(inner) if json_like(inner) else inner
            return masked if masked is not inner else body
        form = _multipart(body)
        if form is not None:
            # a credential-named field masked whole; any other part masked as a body of its own (a JSON or
            # form part with credentials inside)
            values = [REDACTED.encode() if self._query_secret(name) else self.body(value)
                      for _, name, value in form.parts]
            if all(new is value for new, (_, _, value) in zip(values, form.parts)):
                return body
            return form.join(values)
        return body

    def _form(self, body: bytes) -> bytes:
        if not _may_name_a_secret(body, _FORM_PARTS, _FORM_ANY):
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
        headers, path = self.headers(req.headers), self.path(req.path)
        body = self.coded_body(req.body, content_encoding_of(req.headers))
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

    def request_and_answer(self, req: CapturedRequest) -> CapturedRequest:
        """`request`, and the production answer a capture record carries (meta production_body: `traffic
        convert` writes it back) masked by keys and by the request's secret values, as the capture proxy masks
        it. Only for writers of that field: a replay never stores it."""
        answer = req.meta.get("production_body")
        if answer is None:
            return self.request(req)
        secrets = self.secret_values(req.headers, req.path, req.body)
        if isinstance(answer, str):
            masked: Any = mask_values(self.body(answer.encode()).decode("utf-8", "replace"), secrets)
        else:
            masked = copy.deepcopy(answer)  # the record read is left as it was (integers of any size kept)
            self.mask_doc(masked)
            masked = mask_values_in_doc(masked, secrets)
        return self.request(replace(req, meta={**req.meta, "production_body": masked}))

    def secret_values(self, headers: tuple[tuple[str, str], ...], path: str, body: bytes,
                      doc: Any = PARSE) -> tuple[str, ...]:
        """The values the request's secrets hold (secret headers, with a scheme's token and each cookie's value
        on their own; credential query parameters; credential JSON keys or form fields; the scenario's JSON
        paths), longest first: an answer that repeats one (an echo, a debug field) is masked by value
        (`mask_values`), since its own keys need not say what it is. `doc`: the body parsed already, unmasked."""
        found: set[str] = set()
        coding = content_encoding_of(headers) if body else None
        if coding and (doc is MISSING or doc is PARSE):  # parsed as JSON already: not coded
            plain = _decoded(body, coding)  # what the coded body says (the caller's doc is of the coded bytes)
            if plain is not None:
                body, doc = plain, PARSE
        for k, v in headers:
            if self.header_is_secret(k):
                found.add(v.strip())
                words = v.split()
                if len(words) == 2:  # a scheme and its token ("Bearer ...")
                    found.add(words[1])
                    if words[0].lower() == "basic":  # and Basic's user:password, as a server decodes it
                        found.update(_basic_credentials(words[1]))
                # a cookie's own values only where they look like tokens: "theme=dark" must not mask "dark"
                found.update(c for c in (part.partition("=")[2].strip() for part in v.split(";")) if _token_like(c))
        if "?" in path:
            for k, v in parse_qsl(urlsplit(path).query, keep_blank_values=True):
                if self._query_secret(k):
                    found.update((v, quote(v, safe=""), quote_plus(v)))  # an echoed URL keeps its %-escapes
        if json_like(body):
            if self.may_mask_json(body):
                if doc is PARSE:
                    doc = _parse_body(body)
                if doc is not MISSING:
                    for p in self.config.json_paths:
                        found.update(str(v) for v in find_all(doc, p) if isinstance(v, (str, int, float)))
                    found.update(str(node[k]) for node, k in _secret_entries(doc))
                elif (lines := _json_lines(body)) is not None:
                    for line in lines:
                        found.update(self.secret_values((), "", line))
        elif body and _FORM.match(body):
            if _may_name_a_secret(body, _FORM_PARTS, _FORM_ANY):
                found.update(v for k, v in parse_qsl(body.decode("ascii", "replace"), keep_blank_values=True)
                             if self._query_secret(k))
        elif body.startswith(_BOM):
            if json_like(body[3:]):
                found.update(self.secret_values((), "", body[3:]))
        elif (form := _multipart(body)) is not None:
            for _, name, value in form.parts:
                if self._query_secret(name):
                    found.add(value.decode("utf-8", "replace").strip())
                else:
                    found.update(self.secret_values((), "", value))
        return masking_order(found)

    def text(self, text: str, extra_secrets: tuple[str, ...] = ()) -> str:
        """Masks known secret values (e.g. the test credentials sent) in free text such as response excerpts."""
        return mask_values(text, masking_order(extra_secrets))


MIN_SECRET_CHARS = 4  # shorter values would mask ordinary words and numbers of an answer
_MAX_DECODED = 1 << 24  # a coded request body is decoded up to this size to be masked (past it: as it came)


def content_encoding_of(headers: Iterable[tuple[str, str]]) -> str | None:
    """A request's Content-Encoding header (None: its body is as sent)."""
    for k, v in headers:
        if len(k) == 16 and k.lower() == "content-encoding":
            return v
    return None


def _decoded(body: bytes, content_encoding: str) -> bytes | None:
    """A coded request body decoded (None: it cannot be, or it is past _MAX_DECODED)."""
    from ..content_encoding import decode_body  # its codecs load on use: most captures have no coded body

    plain, failed, _ = decode_body(content_encoding, body, _MAX_DECODED)
    return None if failed is not None else plain


_BOM = b"\xef\xbb\xbf"
# a multipart form's part: its headers, then its value up to the line break before the next boundary
_PART_NAME = re.compile(rb'content-disposition:[^\r\n]*?\bname="([^"\r\n]*)"', re.IGNORECASE)


def _json_lines(body: bytes) -> list[bytes] | None:
    """The lines of a JSON-lines body (NDJSON: two or more, each a JSON object or array), or None."""
    lines = body.split(b"\n")
    values = [line for line in lines if line.strip()]
    if len(values) < 2 or not all(json_like(line) for line in values):
        return None
    return lines


class _Multipart(NamedTuple):
    delimiter: bytes  # "--" and the boundary
    newline: bytes  # the form's line break
    tail: bytes  # after the closing delimiter: "--" and what follows it
    parts: list[tuple[bytes, str, bytes]]  # (the line break after the delimiter, the part's headers and their
    #                                        blank line; its field name; its value), in order

    def join(self, values: list[bytes]) -> bytes:
        """The form again, each part's value replaced by `values`' (the same delimiter and line breaks)."""
        return b"".join(self.delimiter + head + value + self.newline
                        for (head, _, _), value in zip(self.parts, values)) + self.delimiter + self.tail


def _multipart(body: bytes) -> _Multipart | None:
    """A multipart form, or None where the body is not one: it starts with its delimiter line (`--` and the
    boundary). Anything else (an image, an audio clip) is not scanned."""
    if not body.startswith(b"--"):
        return None
    first, sep, _ = body.partition(b"\n")
    delimiter = first.rstrip(b"\r")
    if not sep or len(delimiter) < 3 or b" " in delimiter.strip():
        return None
    chunks = body.split(delimiter)
    parts = []
    for chunk in chunks[1:-1]:  # before the first delimiter: nothing; after the last: "--"
        head_end = chunk.find(b"\r\n\r\n")
        width = 4
        if head_end < 0:
            head_end, width = chunk.find(b"\n\n"), 2
        if head_end < 0:
            return None
        head = chunk[: head_end + width]
        m = _PART_NAME.search(head)
        value = chunk[head_end + width:]
        value = value[:-2] if value.endswith(b"\r\n") else value[:-1] if value.endswith(b"\n") else value
        parts.append((head, m.group(1).decode("utf-8", "replace") if m else "", value))
    if not parts:
        return None
    return _Multipart(delimiter, b"\r\n" if first.endswith(b"\r") else b"\n", chunks[-1], parts)


def masking_order(values: Iterable[str]) -> tuple[str, ...]:
    """The values worth masking (MIN_SECRET_CHARS or more, not REDACTED itself), each once, longest first: a
    value inside a longer one, masked first, would leave the rest of the longer one in the text."""
    return tuple(sorted({v for v in values if len(v) >= MIN_SECRET_CHARS and v != REDACTED}, key=len, reverse=True))


def _basic_credentials(token: str) -> tuple[str, ...]:
    """A Basic credential's user:password and its password, decoded (none where it is not base64)."""
    try:
        text = base64.b64decode(token, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return ()
    return (text, text.partition(":")[2])


def _token_like(value: str) -> bool:
    """Long enough, and mixing letters with digits or symbols: a session id, not a preference."""
    return len(value) >= 12 and not value.isalpha()


def mask_values(text: str, values: tuple[str, ...]) -> str:
    """Text (not JSON: `mask_values_in_doc`) with every occurrence of the values masked."""
    for v in values:
        if v in text:
            text = text.replace(v, REDACTED)
    return text


def mask_values_in_doc(node: Any, values: tuple[str, ...]) -> Any:
    """A JSON value with the secret values masked where its strings hold them, and where a number is one:
    the document stays valid JSON (a masked number becomes the string). Returns the node (masked in place,
    but for a top-level string or number)."""
    if not values:
        return node
    if isinstance(node, str):
        return mask_values(node, values)
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return REDACTED if str(node) in values else node
    if isinstance(node, dict):
        for k, v in node.items():
            node[k] = mask_values_in_doc(v, values)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            node[i] = mask_values_in_doc(v, values)
    return node


def _secret_entries(node: object) -> Iterator[tuple[dict[str, Any], str]]:
    """(object, key) of every credential-named key that holds a string or a number (not a boolean), anywhere in
    a JSON value; what is under other keys is searched in turn."""
    if isinstance(node, dict):
        for k, v in node.items():
            if isinstance(k, str) and is_secret_name(k) and isinstance(v, (str, int, float)) \
                    and not isinstance(v, bool):
                yield node, k
            else:
                yield from _secret_entries(v)
    elif isinstance(node, list):
        for v in node:
            yield from _secret_entries(v)


def _mask_secret_keys(node: object) -> int:
    entries = [(obj, k) for obj, k in _secret_entries(node) if obj[k] != REDACTED]
    for obj, k in entries:
        obj[k] = REDACTED
    return len(entries)
