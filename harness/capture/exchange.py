"""One request and the upstream's answer, as the proxy, the middleware and the logger sink saw them, and
how it becomes a capture record: sampled, redacted, its bodies cut at the capture limit.

The record is the capture record format (captured_traffic/README.md) with the production answer as
metadata, which the JSONL reader turns back into the production reference:

    production_status, production_latency_ms, production_bytes, production_body (a JSON value or a
    string, cut at the limit), production_error (why there is no answer: connect, timeout, ...),
    body_truncated / production_body_truncated with body_bytes (the size that was forwarded)
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from ..jsonpath import MISSING
from ..content_encoding import decode_body
from ..protocols.json_protocol import loads
from ..scenario import RedactConfig, SegmentSpec
from ..traffic.convert import to_capture_record
from ..traffic.record import CapturedRequest, json_like
from ..traffic.redaction import PARSE, Redactor, content_encoding_of, mask_values, mask_values_in_doc
from ..traffic.segments import SegmentEvaluator

__all__ = ["Exchange", "ExchangeRecords", "SampleRule", "DEFAULT_MAX_BODY_BYTES", "header_text"]

DEFAULT_MAX_BODY_BYTES = 1 << 20


def header_text(raw: Iterable[tuple[bytes, bytes]]) -> tuple[tuple[str, str], ...]:
    """Headers as a server read them (bytes) -> str, as HTTP defines them (latin-1: every byte is a character)."""
    return tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in raw)


@dataclass(slots=True)
class Exchange:
    ts: float  # arrival, epoch seconds
    method: str
    path: str  # with the query string
    headers: tuple[tuple[str, str], ...]
    body: bytes
    status: int | None = None
    latency_ms: float | None = None
    response_headers: tuple[tuple[str, str], ...] = ()
    response_body: bytes = b""
    response_bytes: int = 0
    error: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    # the answer's JSON value parsed and masked already (a shadow run's leg parsed it; MISSING: not JSON)
    response_doc: Any = PARSE
    # the request's secret values (Redactor.secret_values), and its body's JSON value (request_doc, unmasked;
    # MISSING: not JSON), where the caller has them already
    secrets: tuple[str, ...] | None = None
    request_doc: Any = PARSE


@dataclass(frozen=True)
class SampleRule:
    """Keep a `fraction` of the requests (seeded draws, one per request in arrival order), and in any case
    the first `min_per_segment` of each value of the `segment` (rare segments keep enough to judge)."""

    fraction: float = 1.0
    seed: int = 0
    segment: SegmentSpec | None = None
    min_per_segment: int = 0


class ExchangeRecords:
    """Exchange -> zero or one capture record. Called by the writer thread only (the sampler's state)."""

    def __init__(self, redact: RedactConfig | None = None, sample: SampleRule | None = None,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.redactor = Redactor(redact or RedactConfig())
        self.sample = sample = sample or SampleRule()
        self.max_body_bytes = max_body_bytes
        self._rng = random.Random(sample.seed)
        self._segments = SegmentEvaluator((sample.segment,)) if sample.segment is not None else None
        self._seen: dict[str | None, int] = {}
        self.sampled_out = 0

    def __call__(self, ex: Exchange) -> Iterator[dict[str, Any]]:
        # The body is parsed once here; sampling, redaction and the record all read that parse.
        doc = request_doc(ex.body) if ex.request_doc is PARSE else ex.request_doc
        if not self._keep(ex, doc):
            self.sampled_out += 1
            return
        r = self.redactor
        # read before the body is masked: an answer that repeats one of them is masked by value
        secrets = ex.secrets if ex.secrets is not None else r.secret_values(ex.headers, ex.path, ex.body, doc)
        coding = content_encoding_of(ex.headers) if doc is MISSING and ex.body else None  # JSON is not coded
        body = r.coded_body(ex.body, coding, doc)  # masks doc in place: it goes no further
        if len(body) > self.max_body_bytes:
            # cut after redaction: a cut JSON body could no longer be parsed to mask its secrets
            req = CapturedRequest("capture", 0, ex.ts, ex.method, r.path(ex.path), r.headers(ex.headers),
                                  body[: self.max_body_bytes], _doc=MISSING)
        else:
            req = CapturedRequest("capture", 0, ex.ts, ex.method, r.path(ex.path), r.headers(ex.headers), body,
                                  _doc=doc)
        rec = to_capture_record(req)
        if len(body) > self.max_body_bytes:
            rec["body_truncated"] = True
            rec["body_bytes"] = len(ex.body)
        rec.update(ex.meta)
        if ex.status is not None:
            rec["production_status"] = ex.status
        if ex.latency_ms is not None:
            rec["production_latency_ms"] = round(ex.latency_ms, 3)
        if ex.error is not None:
            rec["production_error"] = ex.error
        if ex.status is not None:
            rec["production_bytes"] = ex.response_bytes
            rec.update(self._answer(ex, secrets))
        yield rec

    def _keep(self, ex: Exchange, doc: Any) -> bool:
        # One draw per request whatever the outcome: the same traffic and seed keep the same requests.
        drawn = self._rng.random() < self.sample.fraction
        if self._segments is None or self.sample.min_per_segment <= 0:
            return drawn
        req = CapturedRequest("capture", 0, ex.ts, ex.method, ex.path, ex.headers, ex.body, _doc=doc)
        value = self._segments.values(req).get(self._segments.names[0])
        seen = self._seen.get(value, 0)
        if seen < self.sample.min_per_segment or drawn:
            self._seen[value] = seen + 1
            return True
        return False

    def _answer(self, ex: Exchange, secrets: tuple[str, ...]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        encoding = None
        for k, v in ex.response_headers:
            name = k.lower()
            if name == "content-type":
                out["production_content_type"] = v
            elif name == "content-encoding":
                encoding = v
        body = ex.response_body
        if not body:
            return out
        if len(body) > self.max_body_bytes or ex.response_bytes > len(body) or ex.error is not None:
            # A cut answer (at the capture limit, or by an upstream that failed mid-way: `error`) cannot be
            # parsed, so its secrets could not be masked: it is left out.
            out["production_body_truncated"] = True
            return out
        # Kept decoded, as a client reads it: compressed bytes stored as text are unreadable, and lightly
        # compressed ones carry the answer's secrets past the redactor. One that cannot be decoded is left
        # out, with why.
        body, failed, why = decode_body(encoding, body, self.max_body_bytes)
        if failed is not None:
            out["production_body_error"] = why
            return out
        doc = ex.response_doc
        if doc is PARSE:
            doc = _parse(body)
            if doc is not MISSING and self.redactor.may_mask_json(body):
                self.redactor.mask_doc(doc)
        if doc is not MISSING:
            out["production_body"] = mask_values_in_doc(doc, secrets)
        else:
            out["production_body"] = mask_values(self.redactor.body(body, MISSING).decode("utf-8", "replace"), secrets)
        return out


def request_doc(body: bytes) -> Any:
    """A request body's JSON value where it is a JSON object or array, else MISSING."""
    return _parse(body) if json_like(body) else MISSING


def _parse(body: bytes) -> Any:
    """Any JSON value (exact integers, as the answer readers read them), or MISSING."""
    try:
        return loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return MISSING
