"""Open-loop, paired dispatch of a replay schedule.

Each scheduled request has an intended send time, start + offset / speed. The dispatcher sleeps until
then and spawns one greenlet per leg, both legs of a pair back to back, whatever is already in flight:
a stalled target cannot slow the schedule down, so a stall shows in the latencies (no coordinated
omission). Latency is measured from the intended time; service time from the actual send. A request
that finds `max_in_flight` pairs in flight is not sent and is recorded as skipped with that reason.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import gevent
import gevent.pool
import pyarrow.parquet as pq

from ..compat import OutputValidator
from ..jsonpath import MISSING
from ..protocols import OutputRead, read_output
from ..scenario import DetectorConfig
from ..traffic.redaction import REDACTED, Redactor
from .http_client import TargetClient
from .recorder import Recorder

__all__ = ["Dispatcher", "DispatchPlan", "TargetPlan", "DispatchStats", "expand_env", "schedule_rows", "SCHEDULE_COLUMNS"]

SCHEDULE_COLUMNS = ["order_idx", "request_id", "offset_s", "method", "path", "route", "headers_json", "body"]

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
                        "host", "content-length", "proxy-authenticate", "proxy-authorization"})
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
OUTPUT_EXCERPT_CHARS = 2000


def expand_env(value: str, environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ

    def sub(m: re.Match[str]) -> str:
        if m.group(1) not in env:
            raise KeyError(m.group(1))
        return env[m.group(1)]

    return _ENV.sub(sub, value)


@dataclass(frozen=True)
class TargetPlan:
    version: str
    url: str
    protocol: str
    headers: Mapping[str, str | None]  # overrides, already expanded; None removes the header


@dataclass(frozen=True)
class DispatchPlan:
    schedule_path: Path
    targets: tuple[TargetPlan, ...]
    speed: float
    timeout_s: float
    connect_timeout_s: float
    max_in_flight: int
    max_response_bytes: int
    prediction_path: str
    confidence_path: str
    schema: Path | None
    route_schemas: Mapping[str, Path]
    max_duration_s: float | None
    worker: str = "local"
    secrets: tuple[str, ...] = ()  # values sent to targets (test credentials) to mask in stored excerpts
    detectors: DetectorConfig | None = None

    def __post_init__(self) -> None:
        # A plan sent to workers travels as JSON (plan_to_message): the detectors arrive as a mapping.
        if isinstance(self.detectors, Mapping):
            object.__setattr__(self, "detectors", DetectorConfig(**self.detectors))


@dataclass
class DispatchStats:
    total: int = 0
    dispatched: int = 0
    completed_legs: int = 0
    errors: int = 0
    skipped_in_flight: int = 0
    in_flight: int = 0
    recent_lag_ms: list[float] = field(default_factory=list)
    started_at: float | None = None
    stopped_early: str | None = None


class Dispatcher:
    def __init__(self, plan: DispatchPlan, recorder: Recorder,
                 on_leg: Callable[[str, str, float, int, BaseException | None], None] | None = None) -> None:
        self.plan = plan
        self.recorder = recorder
        self.on_leg = on_leg
        self.stats = DispatchStats()
        self._stop = False
        self._validator = OutputValidator(plan.schema, plan.route_schemas)
        self._redactor = Redactor()
        self._clients = {t.version: TargetClient(t.url, timeout_s=plan.timeout_s,
                                                 connect_timeout_s=plan.connect_timeout_s,
                                                 concurrency=max(plan.max_in_flight, 1),
                                                 max_response_bytes=plan.max_response_bytes)
                         for t in plan.targets}
        self._legs = gevent.pool.Group()

    def stop(self, reason: str) -> None:
        if not self._stop:
            self._stop = True
            self.stats.stopped_early = reason

    def run(self, start_epoch: float, rows: Iterable[dict[str, Any]], total: int) -> DispatchStats:
        """Dispatch `rows` (in send order); start_epoch is shared by all workers so their shards interleave."""
        plan = self.plan
        self.stats.total = total
        self.stats.started_at = start_epoch
        anchor_epoch, anchor_perf = time.time(), time.perf_counter()
        deadline = start_epoch + plan.max_duration_s if plan.max_duration_s else None
        try:
            for row in rows:
                if self._stop:
                    break
                intended = start_epoch + row["offset_s"] / plan.speed
                if deadline is not None and intended > deadline:
                    self.stop(f"replay.max_duration_s ({plan.max_duration_s:g} s) reached")
                    break
                wait = intended - (anchor_epoch + time.perf_counter() - anchor_perf)
                # gevent's timer wakes ~0.7 ms late (p99 1.2 ms): sleep to just before the send time, then
                # yield until it (benchmarks/lag_floor.py measured p99 lag 1.93 -> 0.58 ms at 250 pairs/s)
                if wait > 0.0015:
                    gevent.sleep(wait - 0.0015)
                while intended - (anchor_epoch + time.perf_counter() - anchor_perf) > 0:
                    gevent.sleep(0)
                if self._stop:
                    break
                if self.stats.in_flight >= plan.max_in_flight:
                    self.stats.skipped_in_flight += 1
                    self.recorder.add_event("skipped_in_flight_limit", row["request_id"])
                    continue
                self._spawn_pair(row, intended)
            self._legs.join(timeout=plan.timeout_s + 5)
        finally:
            for c in self._clients.values():
                c.close()
        return self.stats

    def _spawn_pair(self, row: dict[str, Any], intended: float) -> None:
        headers = self._send_headers(json.loads(row["headers_json"]))
        self.stats.dispatched += 1
        self.stats.in_flight += 1
        pending = [len(self.plan.targets)]
        # Alternate which leg leaves first, so neither version is systematically the later one.
        targets = self.plan.targets if row["order_idx"] % 2 == 0 else self.plan.targets[::-1]
        for target in targets:
            hdrs = self._apply_overrides(headers, target.headers)
            self._legs.spawn(self._leg, row, target, hdrs, intended, pending)

    @staticmethod
    def _send_headers(captured: list[list[str]]) -> list[tuple[str, str]]:
        return [(k, v) for k, v in captured if k.lower() not in HOP_BY_HOP and v != REDACTED and not k.startswith(":")]

    @staticmethod
    def _apply_overrides(headers: list[tuple[str, str]], overrides: Mapping[str, str | None]) -> list[tuple[str, str]]:
        if not overrides:
            return headers
        lower = {k.lower() for k in overrides}
        out = [(k, v) for k, v in headers if k.lower() not in lower]
        out += [(k, v) for k, v in overrides.items() if v is not None]
        return out

    def _leg(self, row: dict[str, Any], target: TargetPlan, headers: list[tuple[str, str]], intended: float,
             pending: list[int]) -> None:
        sent = time.time()
        result = self._clients[target.version].send(row["method"], row["path"], headers, row["body"] or b"")
        done = time.time()
        pending[0] -= 1
        if pending[0] == 0:
            self.stats.in_flight -= 1
        lag_ms = (sent - intended) * 1000.0
        out = read_output(target.protocol, result.status or 0, result.body, self.plan.prediction_path,
                          self.plan.confidence_path, headers=result.headers, arrivals=result.arrivals or (),
                          detectors=self.plan.detectors) if result.status is not None and result.error_kind != "too_large" else None
        kind, detail = result.error_kind, result.error_detail
        if out is not None and out.truncated_stream and kind is None:
            kind, detail = "truncated_stream", "the event stream ended without `data: [DONE]`"
        schema_valid: bool | None = None
        schema_errors: str | None = None
        excerpt: str | None = None
        if out is not None and result.status is not None and 200 <= result.status < 300 and kind != "truncated_stream":
            if out.invalid_json:
                kind = kind or "invalid_json"
                schema_valid, schema_errors = (False, "answer is not JSON") if self._validator.active else (None, None)
            elif self._validator.active:
                schema_valid, schema_errors = self._validator.validate(row["route"], out.doc)
                if schema_valid is False:
                    kind = kind or "schema"
        if result.body:
            excerpt = self._excerpt(out, result.body)
        self.stats.completed_legs += 1
        if kind is not None and kind != "schema":
            self.stats.errors += 1
        lags = self.stats.recent_lag_ms
        if len(lags) >= 100_000:  # keep the newest half: the progress line reports recent lag, not the first minute's
            del lags[:50_000]
        lags.append(lag_ms)
        self.recorder.add_leg({
            "request_id": row["request_id"], "version": target.version, "order_idx": row["order_idx"],
            "intended_at": intended, "sent_at": sent, "done_at": done, "send_lag_ms": lag_ms,
            "latency_ms": (done - intended) * 1000.0, "service_ms": (done - sent) * 1000.0,
            "status_code": result.status, "error_kind": kind, "error_detail": detail,
            "response_bytes": result.response_bytes, "schema_valid": schema_valid, "schema_errors": schema_errors,
            "prediction": out.prediction if out else None, "confidence": out.confidence if out else None,
            "model_version": out.model_version if out else None, "output_json": excerpt,
            "time_to_first_token_ms": out.time_to_first_token_ms if out else None,
            "prompt_tokens": out.prompt_tokens if out else None,
            "completion_tokens": out.completion_tokens if out else None, "worker": self.plan.worker,
            **_stream_and_detector_columns(out),
        })
        if self.on_leg is not None:
            exc = RuntimeError(f"{kind}: {detail or ''}") if kind else None
            self.on_leg(target.version, row["route"], (done - intended) * 1000.0, result.response_bytes, exc)

    def _excerpt(self, out: Any, body: bytes) -> str:
        if out is not None and out.doc is not MISSING:
            text = _fit_json(out.doc, OUTPUT_EXCERPT_CHARS)
        else:
            text = body[:OUTPUT_EXCERPT_CHARS * 2].decode("utf-8", "replace")
        masked = self._redactor.body(text.encode()).decode("utf-8", "replace")
        return self._redactor.text(masked[:OUTPUT_EXCERPT_CHARS], self.plan.secrets)


def _stream_and_detector_columns(out: OutputRead | None) -> dict[str, Any]:
    if out is None:
        return {}
    return {"streamed": out.streamed, "inter_token_ms_mean": out.inter_token_ms_mean,
            "inter_token_ms_p95": out.inter_token_ms_p95, "token_chunks": out.token_chunks,
            "finish_reason": out.finish_reason, "abstained": out.abstained, "cited": out.cited,
            "fallback_model": out.fallback_model, "tool_calls_valid": out.tool_calls_valid}


def _fit_json(doc: Any, limit: int) -> str:
    """The document as compact JSON, kept valid JSON when it is longer than `limit`: long strings are cut to
    a prefix plus a digest of the whole (so equal strings stay equal and different ones stay different)
    before the text is cut, so the output diff can still compare the answer's structure."""
    text = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    for keep in (200, 40, 8):
        if len(text) <= limit:
            break
        text = json.dumps(_shorten(doc, keep), separators=(",", ":"), ensure_ascii=False)
    return text


def _shorten(node: Any, keep: int) -> Any:
    if isinstance(node, str):
        if len(node) <= keep + 16:
            return node
        return f"{node[:keep]}…#{hashlib.sha1(node.encode('utf-8', 'replace')).hexdigest()[:12]}"
    if isinstance(node, dict):
        return {k: _shorten(v, keep) for k, v in node.items()}
    if isinstance(node, list):
        return [_shorten(v, keep) for v in node]
    return node


def schedule_rows(path: Path, shard_index: int = 0, shard_count: int = 1) -> tuple[Iterator[dict[str, Any]], int]:
    """Rows of one interleaved shard of schedule.parquet (row i goes to shard i mod count), streamed."""
    pf = pq.ParquetFile(path)
    n = pf.metadata.num_rows

    def rows() -> Iterator[dict[str, Any]]:
        for batch in pf.iter_batches(batch_size=4096, columns=SCHEDULE_COLUMNS):
            for row in batch.to_pylist():
                if row["order_idx"] % shard_count == shard_index:
                    yield row

    return rows(), len(range(shard_index, n, shard_count))
