"""One answer of live shadow traffic -> one leg row, with the columns and the judgement a replay's leg has
(harness.replay.leg.LEG_SCHEMA): error kind, output validation against the scenario's schemas, the
extracted prediction and confidence, the detectors, a redacted excerpt of the answer."""
from __future__ import annotations

import json
from typing import Any

from ..compat import OutputValidator
from ..jsonpath import MISSING
from ..protocols import OutputRead, read_output
from ..replay.leg import LEG_SCHEMA
from ..scenario import Scenario
from ..traffic.redaction import Redactor

__all__ = ["LegBuilder", "LEG_NAMES"]

LEG_NAMES = tuple(LEG_SCHEMA.names)
EXCERPT_CHARS = 2000  # as the replay's output_json


class LegBuilder:
    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._validator = OutputValidator(scenario.output.schema, scenario.output.route_schemas)
        self._redactor = Redactor(scenario.traffic.redact)
        self._protocol = {v: scenario.target_for(v).protocol for v in scenario.versions}

    def leg(self, request_id: str, version: str, route: str, intended: float, sent: float, done: float,
            status: int | None, error: str | None, headers: tuple[tuple[str, str], ...], body: bytes,
            size: int, max_bytes: int) -> dict[str, Any]:
        """`error`: connect | timeout | reset when there was no complete answer; `body` the answer up to
        `max_bytes` + 1 bytes (more: too_large)."""
        kind: str | None = error
        detail: str | None = None
        schema_valid: bool | None = None
        schema_errors: str | None = None
        out: OutputRead | None = None
        excerpt: str | None = None
        if error is None and status is not None:
            kind = "http_5xx" if status >= 500 else "http_4xx" if status >= 400 else None
            if size > max_bytes:
                kind, detail = "too_large", f"answer of {size} bytes is over replay.max_response_bytes ({max_bytes})"
            else:
                lower = {k.lower(): v for k, v in headers}
                try:
                    out = read_output(self._protocol[version], status, body, self.scenario.output.prediction,
                                      self.scenario.output.confidence, headers=lower,
                                      detectors=self.scenario.output.detectors)
                    if 200 <= status < 300:
                        if out.invalid_json:
                            kind = "invalid_json"
                            if self._validator.active:
                                schema_valid, schema_errors = False, "answer is not JSON"
                        elif self._validator.active:
                            schema_valid, schema_errors = self._validator.validate(route, out.doc)
                            if schema_valid is False:
                                kind = "schema"
                    if body:
                        excerpt = self._excerpt(out, body)
                except Exception as exc:  # noqa: BLE001 - a reader's bug must not lose the leg: it is recorded
                    out, excerpt, schema_valid, schema_errors = None, None, None, None
                    kind, detail = "client", f"the answer could not be read: {type(exc).__name__}: {exc}"[:300]
        elif error is not None:
            detail = {"connect": "connection refused or unreachable", "timeout": "no answer within replay.timeout_s",
                      "reset": "connection closed before the end of the answer"}.get(error, error)
        row: dict[str, Any] = dict.fromkeys(LEG_NAMES)
        row.update(request_id=request_id, version=version, order_idx=0, intended_at=intended, sent_at=sent,
                   done_at=done, send_lag_ms=(sent - intended) * 1000.0, latency_ms=(done - intended) * 1000.0,
                   service_ms=(done - sent) * 1000.0, status_code=status, error_kind=kind, error_detail=detail,
                   response_bytes=size, schema_valid=schema_valid, schema_errors=schema_errors, output_json=excerpt,
                   worker="shadow")
        if out is not None:
            row.update(prediction=out.prediction, confidence=out.confidence, model_version=out.model_version,
                       time_to_first_token_ms=out.time_to_first_token_ms, prompt_tokens=out.prompt_tokens,
                       completion_tokens=out.completion_tokens, streamed=out.streamed,
                       inter_token_ms_mean=out.inter_token_ms_mean, inter_token_ms_p95=out.inter_token_ms_p95,
                       token_chunks=out.token_chunks, finish_reason=out.finish_reason, abstained=out.abstained,
                       cited=out.cited, fallback_model=out.fallback_model, tool_calls_valid=out.tool_calls_valid)
        return row

    def _excerpt(self, out: OutputRead | None, body: bytes) -> str:
        # masked whole, then cut: a cut JSON text could not be parsed to find its secrets
        if out is not None and out.doc is not MISSING:
            raw = json.dumps(out.doc, separators=(",", ":"), ensure_ascii=False).encode()
        else:
            raw = body
        return self._redactor.body(raw).decode("utf-8", "replace")[:EXCERPT_CHARS]
