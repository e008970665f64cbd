"""Open-loop, paired dispatch of a replay schedule.

Each scheduled request has an intended send time, start + offset / speed. The dispatcher sleeps until
then (a timerfd where Linux has one: gevent's own timers wake up to 1.3 ms late) and starts both legs of
the pair back to back, in an order balanced over the schedule (`first_leg`), whatever is already in flight: a stalled target cannot slow
the schedule down, so a stall shows in the latencies (no coordinated omission). Latency is measured from
the intended time; service time from the actual send. A request that finds `max_in_flight` pairs in
flight is not sent and is recorded as skipped with that reason.

Each target's legs go through its transport (harness.replay.transport; http and https:
harness.replay.http_transport, exchanges driven by the loop's callbacks, one non-blocking send each, so
the two legs leave microseconds apart). Finished legs queue for one finisher greenlet, which reads,
validates and records them and steps aside whenever the next send is due, and every 2 ms for the sockets:
reading answers never delays the schedule, nor the reads of the streams still open.
"""
from __future__ import annotations

import collections
import ctypes
import hashlib
import itertools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping

import gevent
import gevent.event
from gevent.hub import Waiter
import pyarrow.parquet as pq

from ..compat import OutputValidator
from ..error_kinds import HARNESS_ERROR
from ..jsonpath import MISSING
from ..protocols import OutputRead, answers_output, read_output
from ..scenario import DetectorConfig, RowsConfig
from ..send_headers import expand_env
from ..traffic.jsonl_reader import compact_text
from ..traffic.redaction import REDACTED, Redactor
from ..content_encoding import decode_answer
from ..protocols.rows import row_check
from .leg import LEG_SCHEMA
from .recorder import Recorder
from .transport import Limits, Transport, open_transport
from .wire import RequestHead

__all__ = ["Dispatcher", "DispatchPlan", "TargetPlan", "DispatchStats", "expand_env", "schedule_rows", "batch_rows",
           "SCHEDULE_COLUMNS"]

SCHEDULE_COLUMNS = ["order_idx", "request_id", "offset_s", "method", "path", "route", "headers_json", "body",
                    "batch_size"]

HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
                        "host", "content-length", "proxy-authenticate", "proxy-authorization"})
OUTPUT_EXCERPT_CHARS = 2000


def first_leg(order_idx: int) -> int:
    """Which of the two orders the pair at `order_idx` is sent in: the top bit of a Fibonacci hash of its
    place in the schedule (the Weyl sequence order_idx * golden ratio mod 1), not its parity. On a fast
    target the leg sent first has a head start of a few microseconds; by parity, a capture whose records
    alternate between two tenants would send one version first for every request of each tenant, and an
    A/A run would hold on a tenant "15 % slower". The sequence is balanced within 2 % over 500 pairs on
    every residue class of periods up to 16 (tests/test_replay.py)."""
    return ((int(order_idx) * 0x9E3779B97F4A7C15) >> 63) & 1


@dataclass(frozen=True)
class TargetPlan:
    version: str
    url: str
    protocol: str
    headers: Mapping[str, str | None]  # overrides, already expanded; None removes the header
    tls: Mapping[str, Any] | None = None  # https: see harness.replay.tls (file paths must exist where it runs)


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
    rows: RowsConfig | None = None

    def __post_init__(self) -> None:
        # A plan sent to workers travels as JSON (plan_to_message): the detectors arrive as a mapping.
        if isinstance(self.detectors, Mapping):
            object.__setattr__(self, "detectors", DetectorConfig(**self.detectors))
        if isinstance(self.rows, Mapping):
            object.__setattr__(self, "rows", RowsConfig(**self.rows))


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
    # why sending ended before the schedule did (a time budget, an interrupt, the sequential test): the
    # reason the unsent requests are skipped with
    ended_by: str | None = None
    # only when the sequential test stopped the replay: evidence that BLOCKs (gates.verdict)
    stopped_early: str | None = None


_LEG_COLUMNS = ("request_id", "version", "order_idx", "intended_at", "sent_at", "done_at", "send_lag_ms", "latency_ms",
                "service_ms", "status_code", "error_kind", "error_detail", "response_bytes", "schema_valid",
                "schema_errors", "prediction", "confidence", "model_version", "output_json", "time_to_first_token_ms",
                "prompt_tokens", "completion_tokens", "worker", "streamed", "inter_token_ms_mean", "inter_token_ms_p95",
                "token_chunks", "finish_reason", "abstained", "cited", "fallback_model", "tool_calls_valid",
                "row_count", "row_labels", "row_scores", "row_invalid",
                "content_encoding", "decoded_bytes")
# Legs are handed to the recorder as tuples in LEG_SCHEMA's order (no dict per leg): keep the two in step.
assert _LEG_COLUMNS == tuple(LEG_SCHEMA.names), "dispatcher leg tuple out of step with LEG_SCHEMA"
_NO_OUTPUT = (None,) * 13  # streamed ... row_invalid of a leg without an answer
_HEAD_CACHE_MAX = 4096
_YIELD_S = 0.0001  # the finisher steps aside when the next send is due within this
_SEAL_STEP_S = 0.0005  # and the recorder's seal steps within this
# The finisher reads finished legs for at most _FINISH_SLICE_S at a time, then lets the loop read the sockets:
# it waits until the loop has nothing ready (at most _FINISH_WAIT_S), or, with legs waiting longer than
# _FINISH_BEHIND_S, for one turn of the loop. A stream's arrival times are the kernel's, so a read a few ms
# late costs nothing; a read late by more than the gap between two tokens joins them into one arrival.
_FINISH_SLICE_S = 0.002
_FINISH_WAIT_S = 0.02
_FINISH_BEHIND_S = 1.0
_NEVER = float("inf")
# Connections each target's pool opens before the first send (transports that can: HttpTransport.warm): as
# many as pairs the schedule sends in its first _WARM_WINDOW_S, at most _WARM_MAX, and no more than fit in the
# time left before the first send at _WARM_COST_S each (a TLS handshake, client and target side on one machine).
_WARM_WINDOW_S = 0.02
_WARM_MAX = 32
_WARM_COST_S = 0.003


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


class _PreciseClock:
    """Sleeps until a time on the monotonic clock to about 0.1 ms. gevent's timers ride on epoll's
    millisecond timeout and wake 0-1.3 ms late; a timerfd (Linux) becomes readable on time and wakes the
    loop through its file descriptor. Without timerfd: sleep to 1.5 ms before, then yield until the time."""

    def __init__(self) -> None:
        self._fd = -1
        self._watcher: Any = None
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            create, settime = libc.timerfd_create, libc.timerfd_settime
            fd = create(time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)  # TFD_NONBLOCK, TFD_CLOEXEC
            if fd < 0:
                return
        except (OSError, AttributeError):
            return
        self._fd = fd
        self._settime = settime
        self._spec = _Itimerspec()
        self._hub = gevent.get_hub()
        # highest libev priority: among the watchers ready in one loop turn, the send schedule goes first
        self._watcher = self._hub.loop.io(fd, 1, True, 2)

    def sleep_until(self, deadline: float, stopped: Callable[[], bool]) -> None:
        while True:  # long gaps: plain sleeps, so that a stop is noticed within 0.25 s
            wait = deadline - time.monotonic()
            if wait <= 0.003 or stopped():
                break
            gevent.sleep(min(wait - 0.002, 0.25))
        if stopped():
            return
        if self._fd < 0:
            wait = deadline - time.monotonic()
            if wait > 0.0015:
                gevent.sleep(wait - 0.0015)
            while deadline - time.monotonic() > 0:
                gevent.sleep(0)
            return
        if deadline - time.monotonic() <= 0.00002:
            return
        sec = int(deadline)
        spec = self._spec
        spec.it_value.tv_sec, spec.it_value.tv_nsec = sec, int((deadline - sec) * 1e9)
        if self._settime(self._fd, 1, ctypes.byref(spec), None) != 0:  # TFD_TIMER_ABSTIME
            gevent.sleep(max(deadline - time.monotonic(), 0))
            return
        self._hub.wait(self._watcher)
        try:
            os.read(self._fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.close()
            self._watcher = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


class Dispatcher:
    def __init__(self, plan: DispatchPlan, recorder: Recorder,
                 on_leg: Callable[[str, str, float, int, str | None], None] | None = None,
                 transports: Mapping[str, Transport] | None = None) -> None:
        """`transports`: a transport per target version (tests: transport.MockTransport); by default each
        target's URL picks its own (transport.open_transport)."""
        self.plan = plan
        self.recorder = recorder
        self.on_leg = on_leg
        self.stats = DispatchStats()
        self._stop = False
        self._validator = OutputValidator(plan.schema, plan.route_schemas)
        self._redactor = Redactor()
        if transports is None:
            limits = Limits(plan.timeout_s, plan.connect_timeout_s, plan.max_response_bytes)
            transports = {t.version: _transport_for(t, limits) for t in plan.targets}
        self._transports = transports
        # A transport that sends at a time it is given (`lead_s`: the gRPC process, on its own timer) is handed
        # each pair ahead of its intended time, several pairs a wake; the send loop's own lateness then stays
        # out of the legs' send lag. Only when every target's transport does, so that the legs of a pair leave
        # together.
        self._lead_s = min((float(getattr(t, "lead_s", 0.0)) for t in transports.values()), default=0.0)
        for transport in transports.values():  # optional: a transport with a process of its own to start (gRPC)
            wait_started = getattr(transport, "wait_started", None)
            if wait_started is not None:
                wait_started()
        # per target: (target, its transport, its index); both orders, for first_leg to choose from
        forward = tuple((t, transports[t.version], i) for i, t in enumerate(plan.targets))
        self._orders = (forward, forward[::-1])
        self._finished: collections.deque[tuple[Any, ...]] = collections.deque()  # legs waiting for the finisher
        self._finish_wake = gevent.event.Event()
        self._next_send = _NEVER  # monotonic time of the next intended send, for the finisher
        self._sent = gevent.event.Event()  # set once the due send has left (the finisher waits on it)
        self._heads: dict[str, tuple[RequestHead, ...]] = {}  # headers_json -> one checked head per target
        self._legs_running = 0
        self._legs_idle = gevent.event.Event()
        self._legs_idle.set()
        self._pace = recorder.pace = lambda: self.make_way(_SEAL_STEP_S)

    def stop(self, reason: str, *, by_test: bool = False) -> None:
        """Send nothing more. `by_test`: the sequential test found the candidate's excess beyond doubt, which
        decides the verdict; any other stop (replay.max_duration_s, an interrupt) only ends the sending."""
        if not self._stop:
            self._stop = True
            self.stats.ended_by = reason
            if by_test:
                self.stats.stopped_early = reason

    def _stopped(self) -> bool:
        return self._stop

    def run(self, start_epoch: float, rows: Iterable[dict[str, Any]], total: int) -> DispatchStats:
        """Dispatch `rows` (in send order); start_epoch is shared by all workers so their shards interleave."""
        plan = self.plan
        self.stats.total = total
        self.stats.started_at = start_epoch
        # Intended times are epoch seconds (what the legs record); waits run on the monotonic clock.
        to_mono = time.monotonic() - time.time()
        deadline = start_epoch + plan.max_duration_s if plan.max_duration_s else None
        clock = _PreciseClock()
        lead = self._lead_s  # rows are handed over between lead/2 and lead before their time
        for transport in self._transports.values():
            transport.prepare()  # a failure is kept: each leg records it
        rows = self._warm(iter(rows), start_epoch)
        finisher = gevent.spawn(self._finish_loop)
        try:
            for row in rows:
                if self._stop:
                    break
                intended = start_epoch + row["offset_s"] / plan.speed
                if deadline is not None and intended > deadline:
                    self.stop(f"replay.max_duration_s ({plan.max_duration_s:g} s) reached")
                    break
                if intended + to_mono - lead > time.monotonic():
                    self._next_send = intended + to_mono - lead / 2
                    clock.sleep_until(self._next_send, self._stopped)
                if self._stop:
                    break
                if self.stats.in_flight >= plan.max_in_flight:
                    self.stats.skipped_in_flight += 1
                    self.recorder.add_event("skipped_in_flight_limit", row["request_id"])
                    self._sent_due()
                    continue
                self._spawn_pair(row, intended)
                self._sent_due()
            self._sent_due()
            self._legs_idle.wait(timeout=plan.timeout_s + 5)
        finally:
            self._sent_due()
            clock.close()
            for transport in self._transports.values():
                transport.close()  # what is still open ends as a timeout, into the finisher's queue
            finisher.kill()
            self._drain()
        return self.stats

    def _warm(self, rows: Iterator[dict[str, Any]], start_epoch: float) -> Iterator[dict[str, Any]]:
        """Open each target's first connections while the loop waits for the first send (the handshakes run
        on the loop as callbacks meanwhile); returns the rows, the ones looked at included."""
        plan = self.plan
        warmers = [w for w in (getattr(t, "warm", None) for t in self._transports.values()) if w is not None]
        ahead: list[dict[str, Any]] = []
        if not warmers:
            return rows
        for row in rows:
            ahead.append(row)
            if ((row["offset_s"] - ahead[0]["offset_s"]) / plan.speed > _WARM_WINDOW_S
                    or len(ahead) > _WARM_MAX):
                break
        if not ahead:
            return rows
        first = ahead[0]["offset_s"]
        early = sum(1 for r in ahead if (r["offset_s"] - first) / plan.speed <= _WARM_WINDOW_S)
        fit = int((start_epoch + first / plan.speed - time.time()) / (_WARM_COST_S * len(warmers)))
        n = min(early, _WARM_MAX, plan.max_in_flight, fit)
        if n > 0:
            for warm in warmers:
                warm(n)
        return itertools.chain(ahead, rows)

    def _spawn_pair(self, row: dict[str, Any], intended: float) -> None:
        key = row["headers_json"]
        heads = self._heads.get(key)
        if heads is None:  # parsed and checked once per distinct header set, not per leg
            if len(self._heads) >= _HEAD_CACHE_MAX:
                self._heads.clear()
            headers = self._send_headers(json.loads(key))
            heads = self._heads[key] = tuple(RequestHead(self._apply_overrides(headers, t.headers))
                                             for t in self.plan.targets)
        if not self._lead_s:
            # The wait ran on the monotonic clock, which the wall clock (the intended times) drifts from by
            # microseconds over a run, and the timer returns up to 20 us early: no leg leaves before its time.
            early = intended - time.time()
            if 0 < early < 0.001:
                while time.time() < intended:
                    pass
        self.stats.dispatched += 1
        self.stats.in_flight += 1
        order = self._orders[first_leg(row["order_idx"])]
        pending = [len(order)]
        self._legs_running += len(order)
        self._legs_idle.clear()
        # Both legs start now, in this order, neither waiting for the other's answer: a leg's send is one
        # non-blocking write, so the first leg's write is all that separates the two sends (pair skew).
        body = row["body"] or b""
        for target, transport, i in order:
            if self._lead_s:  # handed over early: a leg that never leaves (not sendable) ends at its time
                token = (row, target, intended, max(time.time(), intended), pending)
                transport.start(row["method"], row["path"], heads[i], body, self._leg_done, token,  # type: ignore[call-arg]
                                at=intended)
            else:
                token = (row, target, intended, time.time(), pending)
                transport.start(row["method"], row["path"], heads[i], body, self._leg_done, token)

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

    def _leg_done(self, token: tuple[Any, ...], result: Any, done: float) -> None:
        """A leg's answer (or failure) is in; runs in the hub (a transport's callback), so it only queues."""
        pending = token[4]
        pending[0] -= 1
        if pending[0] == 0:
            self.stats.in_flight -= 1
        self._finished.append((token, result, done))
        self._finish_wake.set()

    def _sent_due(self) -> None:
        self._next_send = _NEVER
        if not self._sent.is_set():
            self._sent.set()

    def make_way(self, budget_s: float = _YIELD_S) -> None:
        """Called by work on the loop between small steps: when the next send is due within `budget_s`, wait
        until it has left, so that the step after this cannot delay it."""
        if self._next_send != _NEVER and self._next_send - time.monotonic() < budget_s:
            self._sent.clear()
            self._sent.wait()  # once: right after a send the whole gap to the next one is free

    def _finish_loop(self) -> None:
        queue, wake = self._finished, self._finish_wake
        loop = gevent.get_hub().loop
        while True:
            end = time.monotonic() + _FINISH_SLICE_S
            while queue:
                self.make_way()
                self._finish_one(*queue.popleft())
                if queue and time.monotonic() >= end:
                    _let_reads_in(loop, queue[0][2])
                    end = time.monotonic() + _FINISH_SLICE_S
            wake.clear()
            wake.wait()

    def _drain(self) -> None:
        while self._finished:
            self._finish_one(*self._finished.popleft())

    def _finish_one(self, token: tuple[Any, ...], result: Any, done: float) -> None:
        row, target, intended, sent, _ = token
        if result.sent_at is not None:  # the call left later than start(), from another process (gRPC)
            sent = result.sent_at
        try:
            self._finish_leg(row, target, intended, sent, done, result)
        except Exception as exc:  # noqa: BLE001 - a listener's or hook's bug: the finisher must go on with the rest
            self.recorder.add_event("leg_processing_error", f"{row['request_id']} {target.version}: "
                                    f"{type(exc).__name__}: {exc}"[:500])
        finally:
            self._legs_running -= 1
            if self._legs_running == 0:
                self._legs_idle.set()

    def _finish_leg(self, row: dict[str, Any], target: TargetPlan, intended: float, sent: float, done: float,
                    result: Any) -> None:
        plan = self.plan
        # after the leg's end time: latency is receiving the answer, not inflating it (in steps that let sends go first)
        result = decode_answer(result, plan.max_response_bytes, self._pace)
        status = result.status
        kind, detail = result.error_kind, result.error_detail
        schema_valid: bool | None = None
        schema_errors: str | None = None
        excerpt: str | None = None
        out: OutputRead | None = None
        try:
            if status is not None and kind != "too_large" and answers_output(row.get("method")):
                out = read_output(target.protocol, status, result.body, plan.prediction_path, plan.confidence_path,
                                  headers=result.headers, arrivals=result.arrivals or (), detectors=plan.detectors,
                                  rows=plan.rows)
            if out is not None and out.truncated_stream and kind is None:
                kind, detail = "truncated_stream", "the event stream ended without `data: [DONE]`"
            if out is not None and out.model_error and kind is None and 200 <= status < 300:
                kind, detail = "model_error", out.model_error
            if out is not None and (out.row_labels is not None or out.row_error is not None):
                kind, detail = row_check(row.get("batch_size"), out, kind, detail)
            if out is not None and 200 <= status < 300 and kind != "truncated_stream":
                if out.invalid_json:
                    if kind is None:
                        kind, detail = "invalid_json", detail or out.invalid_reason
                    schema_valid, schema_errors = (False, "answer is not JSON") if self._validator.active else (None, None)
                elif self._validator.active:
                    schema_valid, schema_errors = self._validator.validate(row["route"], out.doc)
                    if schema_valid is False:
                        kind = kind or "schema"
            if result.body:
                excerpt = self._excerpt(out, result.body)
        except Exception as exc:  # noqa: BLE001 - a reader's bug must not lose the leg: it is recorded as such
            out, excerpt, schema_valid, schema_errors = None, None, None, None
            kind, detail = HARNESS_ERROR, f"the answer could not be read: {type(exc).__name__}: {exc}"[:300]
        stats = self.stats
        stats.completed_legs += 1
        if kind is not None and kind != "schema":
            stats.errors += 1
        lag_ms = (sent - intended) * 1000.0
        latency_ms = (done - intended) * 1000.0
        lags = stats.recent_lag_ms
        if len(lags) >= 100_000:  # keep the newest half: the progress line reports recent lag, not the first minute's
            del lags[:50_000]
        lags.append(lag_ms)
        if out is None:
            tail: tuple[Any, ...] = (None, None, None, None, None, None, None, plan.worker, *_NO_OUTPUT)
        else:
            tail = (out.prediction, out.confidence, out.model_version, excerpt, out.time_to_first_token_ms,
                    out.prompt_tokens, out.completion_tokens, plan.worker, out.streamed, out.inter_token_ms_mean,
                    out.inter_token_ms_p95, out.token_chunks, out.finish_reason, out.abstained, out.cited,
                    out.fallback_model, out.tool_calls_valid, out.row_count, out.row_labels, out.row_scores,
                    out.row_invalid)
        if out is None and excerpt is not None:
            tail = (None, None, None, excerpt, *tail[4:])
        self.recorder.add_leg_values((
            row["request_id"], target.version, row["order_idx"], intended, sent, done, lag_ms, latency_ms,
            (done - sent) * 1000.0, status, kind, detail, result.response_bytes, schema_valid, schema_errors, *tail,
            (result.headers or {}).get("content-encoding"), result.decoded_bytes))
        if self.on_leg is not None:
            self.on_leg(target.version, row["route"], latency_ms, result.response_bytes,
                        f"{kind}: {detail or ''}" if kind else None)

    def _excerpt(self, out: Any, body: bytes) -> str:
        if out is not None and out.doc is not MISSING:
            if len(body) <= OUTPUT_EXCERPT_CHARS and body[:1] in (b"{", b"["):
                # A short JSON answer is its own excerpt: no re-serialising (the redaction below parses it
                # only where a key may name a credential).
                raw = self._redactor.body(body)
                try:
                    return self._redactor.text(raw.decode("utf-8")[:OUTPUT_EXCERPT_CHARS], self.plan.secrets)
                except UnicodeDecodeError:
                    pass
            text = _fit_json(out.doc, OUTPUT_EXCERPT_CHARS)
        else:
            text = body[:OUTPUT_EXCERPT_CHARS * 2].decode("utf-8", "replace")
        masked = self._redactor.body(text.encode()).decode("utf-8", "replace")
        return self._redactor.text(masked[:OUTPUT_EXCERPT_CHARS], self.plan.secrets)


def _let_reads_in(loop: Any, oldest_done: float) -> None:
    """Step aside for the sockets: until the loop has nothing ready to read (an idle watcher runs only then),
    at most _FINISH_WAIT_S; when the oldest leg waiting finished over _FINISH_BEHIND_S ago, for one turn of the
    loop only (what is ready is read, then the next slice), so a loop that never goes idle cannot starve the
    finisher. gevent.sleep(0) would not do: the loop runs the callbacks it queues for up to 50 in a row
    before it looks at the sockets again."""
    waiter = Waiter()
    behind = time.time() - oldest_done > _FINISH_BEHIND_S
    watchers = [loop.timer(0.0 if behind else _FINISH_WAIT_S)] + ([] if behind else [loop.idle()])
    for w in watchers:
        w.start(waiter.switch, None)
    try:
        waiter.get()
    finally:
        for w in watchers:
            w.stop()
            w.close()


def _transport_for(target: TargetPlan, limits: Limits) -> Transport:
    if target.protocol == "kserve_v2_grpc":  # gRPC legs: harness.replay.grpc_transport
        from .grpc_transport import GrpcClient  # noqa: PLC0415 - grpcio loads only for gRPC targets

        return GrpcClient(target.url, timeout_s=limits.timeout_s, connect_timeout_s=limits.connect_timeout_s,
                          max_response_bytes=limits.max_response_bytes, tls=target.tls)
    return open_transport(target.url, limits, target.tls)


def _fit_json(doc: Any, limit: int) -> str:
    """The document as compact JSON, kept valid JSON when it is longer than `limit`: long strings are cut to
    a prefix plus a digest of the whole (so equal strings stay equal and different ones stay different),
    then long arrays and objects keep their first items plus a marker with the count and a digest of the
    rest (a 10,000-number answer), so the output diff can still compare the answer's structure."""
    text = compact_text(doc)  # the answer as parsed from JSON: no circular reference, nothing but JSON types
    for keep, items in ((200, None), (40, None), (8, 64), (8, 16), (8, 4), (8, 1)):
        if len(text) <= limit:
            return text
        text = compact_text(_shorten(doc, keep, items))
    if len(text) <= limit:
        return text
    # Still too long (thousands of keys at the top level): a valid JSON string that says so.
    return json.dumps(f"…{len(text)} characters #{_digest(text)}", ensure_ascii=False)


def _digest(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False,
                                                           default=str)
    return hashlib.sha1(text.encode("utf-8", "replace")).hexdigest()[:12]


def _shorten(node: Any, keep: int, items: int | None = None) -> Any:
    if isinstance(node, str):
        if len(node) <= keep + 16:
            return node
        return f"{node[:keep]}…#{_digest(node)}"
    if isinstance(node, dict):
        pairs = list(node.items())
        out = {k: _shorten(v, keep, items) for k, v in pairs[:items]}
        if items is not None and len(pairs) > items:
            out["…"] = f"+{len(pairs) - items} keys #{_digest(dict(pairs[items:]))}"
        return out
    if isinstance(node, list):
        head = [_shorten(v, keep, items) for v in node[:items]]
        if items is not None and len(node) > items:
            head.append(f"…+{len(node) - items} items #{_digest(node[items:])}")
        return head
    return node


def schedule_rows(path: Path) -> tuple[Iterator[dict[str, Any]], int]:
    """The rows of schedule.parquet, streamed."""
    pf = pq.ParquetFile(path)

    def rows() -> Iterator[dict[str, Any]]:
        # The next batch is read in gevent's thread pool while this one is sent: decoding a row group
        # (Arrow releases the GIL) took the loop 5-10 ms.
        batches = pf.iter_batches(batch_size=256, columns=SCHEDULE_COLUMNS)
        pool = gevent.get_hub().threadpool
        ahead = pool.spawn(next, batches, None)
        while True:
            batch = ahead.get()
            if batch is None:
                return
            ahead = pool.spawn(next, batches, None)
            yield from batch_rows(batch)

    return rows(), pf.metadata.num_rows


def batch_rows(batch: Any) -> Iterator[dict[str, Any]]:
    """A schedule batch's rows as dicts, made column by column (RecordBatch.to_pylist builds them row by
    row, a stall of milliseconds in the send loop every batch)."""
    columns = [batch.column(name).to_pylist() for name in SCHEDULE_COLUMNS]
    for values in zip(*columns):
        yield dict(zip(SCHEDULE_COLUMNS, values))
