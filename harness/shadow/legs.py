"""One answer of live shadow traffic -> one leg row, with the columns and the judgement a replay's leg has
(harness.replay.leg.LEG_SCHEMA): error kind, output validation against the scenario's schemas, the
extracted prediction and confidence, the detectors, a redacted excerpt of the answer."""
from __future__ import annotations

from typing import Any

from ..compat import OutputValidator
from ..error_kinds import status_kind
from ..content_encoding import decode_body
from ..protocols.rows import row_check
from ..jsonpath import MISSING
from ..protocols import OutputRead, answers_output, read_output
from ..replay.leg import LEG_SCHEMA
from ..scenario import Scenario
from ..traffic.jsonl_reader import compact_text
from ..traffic.redaction import PARSE, Redactor, mask_values, mask_values_in_doc

__all__ = ["LegBuilder", "LEG_NAMES", "leg_records"]

LEG_NAMES = tuple(LEG_SCHEMA.names)
EXCERPT_CHARS = 2000  # as the replay's output_json
_NOT_READ = OutputRead(streamed=None)  # type: ignore[arg-type]  # a leg whose answer was not read: all null


class LegBuilder:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._validator = OutputValidator(scenario.output.schema, scenario.output.route_schemas)
        self._redactor = Redactor(scenario.traffic.redact)
        self._protocol = {v: scenario.target_for(v).protocol for v in scenario.versions}
        # the readers that look at the answer's headers: only for them are they gathered by name
        self.reads_headers = {v: p in ("kserve_v2_grpc", "openai") or scenario.output.detectors.fallback_configured
                               for v, p in self._protocol.items()}

    def leg(self, request_id: str, version: str, route: str, intended: float, sent: float, done: float,
            status: int | None, error: str | None, headers: tuple[tuple[str, str], ...], body: bytes,
            size: int, max_bytes: int, arrivals: Any = (), batch_size: int | None = None,
            secrets: tuple[str, ...] | None = (), method: str | None = None) -> dict[str, Any]:
        return self.leg_and_doc(request_id, version, route, intended, sent, done, status, error, headers, body,
                                size, max_bytes, arrivals, batch_size, secrets, method)[0]

    def leg_and_doc(self, request_id: str, version: str, route: str, intended: float, sent: float, done: float,
                    status: int | None, error: str | None, headers: tuple[tuple[str, str], ...], body: bytes,
                    size: int, max_bytes: int, arrivals: Any = (), batch_size: int | None = None,
                    secrets: tuple[str, ...] | None = (), method: str | None = None) -> tuple[dict[str, Any], Any]:
        """The leg row, and the answer's JSON value as parsed for it, masked (MISSING: the answer is not JSON;
        PARSE: it was not parsed), so that the capture record of the same answer need not parse it again.
        `error`: connect | timeout | reset when there was no complete answer; `body` the answer up to
        `max_bytes` + 1 bytes (more: too_large); `arrivals` (body bytes so far, wall time) at each read, which
        times a stream's tokens as a replay's reads do (from the leg's send); `batch_size`: the rows the request
        asked for, where answers are read row by row (output.rows), checked as a replay checks them; `secrets`
        the request's secret values (Redactor.secret_values): a live request carries real credentials, and an
        answer that repeats one is masked by value (None: they are unknown, and the leg keeps no excerpt);
        `method` the request's: a HEAD's or an OPTIONS' answer is judged by its status alone (answers_output)."""
        body_doc: Any = PARSE
        kind: str | None = error
        detail: str | None = None
        schema_valid: bool | None = None
        schema_errors: str | None = None
        out: OutputRead | None = None
        excerpt: str | None = None
        encoding = next((v for k, v in headers if k.lower() == "content-encoding"), None)
        decoded: int | None = None
        if error is None and status is not None:
            kind = status_kind(status)
            undecodable = False
            if size <= max_bytes and encoding:  # read as a client reads it (replay: content_encoding.decode_answer)
                body, failed, why = decode_body(encoding, body, max_bytes)
                if failed is not None:  # a 5xx stays a 5xx, with why its body is unreadable
                    undecodable = True
                    kind, detail = kind if kind is not None and failed == "bad_encoding" else failed, why
            decoded = len(body)
            if size > max_bytes:
                kind, detail = "too_large", f"answer of {size} bytes is over replay.max_response_bytes ({max_bytes})"
            elif undecodable:
                pass  # nothing readable: the leg is its error
            elif not answers_output(method):
                pass  # no model output to read: its status is the leg
            else:
                lower = {k.lower(): v for k, v in headers} if self.reads_headers[version] else None
                try:
                    out = read_output(self._protocol[version], status, body, self.scenario.output.prediction,
                                      self.scenario.output.confidence, headers=lower,
                                      arrivals=[(n, (t - sent) * 1000.0) for n, t in arrivals],
                                      detectors=self.scenario.output.detectors, rows=self.scenario.output.rows)
                    if out.row_labels is not None or out.row_error is not None:
                        kind, detail = row_check(batch_size, out, kind, detail)
                    if 200 <= status < 300:
                        if out.invalid_json:
                            kind, detail = "invalid_json", detail or out.invalid_reason
                            if self._validator.active:
                                schema_valid, schema_errors = False, "answer is not JSON"
                        else:
                            if out.model_error:
                                kind, detail = "model_error", out.model_error
                            if self._validator.active:
                                schema_valid, schema_errors = self._validator.validate(route, out.doc)
                                if schema_valid is False:
                                    kind = kind or "schema"
                    if body and secrets is not None:
                        excerpt = self._excerpt(out, body, secrets)
                        body_doc = MISSING if out.streamed or out.doc is MISSING else out.doc
                except Exception as exc:  # noqa: BLE001 - a reader's bug must not lose the leg: it is recorded
                    out, excerpt, schema_valid, schema_errors, body_doc = None, None, None, None, PARSE
                    kind, detail = "client", f"the answer could not be read: {type(exc).__name__}: {exc}"[:300]
        elif error is not None:
            detail = {"connect": "connection refused or unreachable", "timeout": "no answer within replay.timeout_s",
                      "reset": "connection closed before the end of the answer"}.get(error, error)
        o = out if out is not None else _NOT_READ
        # one dict display in LEG_SCHEMA's order (tests/test_shadow_recorder.py holds it to the schema)
        row: dict[str, Any] = {
            "request_id": request_id, "version": version, "order_idx": 0, "intended_at": intended, "sent_at": sent,
            "done_at": done, "send_lag_ms": (sent - intended) * 1000.0, "latency_ms": (done - intended) * 1000.0,
            "service_ms": (done - sent) * 1000.0, "status_code": status, "error_kind": kind, "error_detail": detail,
            "response_bytes": size, "schema_valid": schema_valid, "schema_errors": schema_errors,
            "prediction": o.prediction, "confidence": o.confidence, "model_version": o.model_version,
            "output_json": excerpt, "time_to_first_token_ms": o.time_to_first_token_ms,
            "prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens, "worker": "shadow",
            "streamed": o.streamed, "inter_token_ms_mean": o.inter_token_ms_mean,
            "inter_token_ms_p95": o.inter_token_ms_p95, "token_chunks": o.token_chunks,
            "finish_reason": o.finish_reason, "abstained": o.abstained, "cited": o.cited,
            "fallback_model": o.fallback_model, "tool_calls_valid": o.tool_calls_valid, "row_count": o.row_count,
            "row_labels": o.row_labels, "row_scores": o.row_scores, "row_invalid": o.row_invalid,
            "content_encoding": encoding,
            "decoded_bytes": decoded}
        return row, body_doc

    def _excerpt(self, out: OutputRead, body: bytes, secrets: tuple[str, ...]) -> str:
        """Masked whole, then cut (a cut JSON text could not be parsed to find its secrets). The document
        is masked in place, after validation and extraction have read it."""
        doc = out.doc
        if doc is MISSING:
            return mask_values(self._redactor.body(body, MISSING).decode("utf-8", "replace"), secrets)[:EXCERPT_CHARS]
        raw = None
        if out.streamed:  # an assembled document: its keys are not in the body's bytes as such
            raw = compact_text(doc)
        if self._redactor.may_mask_json(raw.encode() if raw is not None else body) and self._redactor.mask_doc(doc):
            raw = None
        if secrets:
            doc = mask_values_in_doc(doc, secrets)
            raw = None
        if raw is None:
            raw = compact_text(doc)
        # a lone surrogate (a JSON \ud800 escape) cannot be stored as UTF-8: replaced, as a body's bad bytes are
        return raw[:EXCERPT_CHARS].encode("utf-8", "replace").decode("utf-8")


def leg_records(builder: LegBuilder, max_bytes: int) -> Any:
    """A legs writer's conversion of (version, shadow id, route, arrival, Answer) -> one leg row."""
    def convert(item: tuple[str, str, str, float, Any]) -> list[dict[str, Any]]:
        version, rid, route, arrived, a = item
        return [builder.leg(rid, version, route, arrived, a.sent_at, a.done_at, a.status, a.error, a.headers,
                            a.body, a.size, max_bytes, a.arrivals)]

    return convert
