"""The master of a distributed replay: it waits for its workers, hands each its shard of the schedule ahead
of the send times, watches what they report, notices a lost worker, and alone writes results.duckdb.

One method per phase of `ReplayMaster.run`; the message handlers (`_on_*`) run in Locust's greenlets
and only record what arrived in `MasterState`.
"""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import gevent
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from locust.env import Environment
from locust.event import Events
from locust.exception import StopUser

from ..errors import ReplayError
from ..frames import exit_described
from . import messages
from .dispatcher import SCHEDULE_COLUMNS, DispatchPlan, DispatchStats
from .recorder import Recorder, Sinks
from .runner import ReplayOptions, ReplayOutcome, Sampler, _q, _sample_loop, freeze_gc, shut_down, thaw_gc
from .sequential import PairErrorWatch, StopRule
from .spool import from_ipc, read_spool, to_ipc
from .web_ui import STOPPED_FROM_UI, on_ui_stop, replay_user_class, start_web_ui

__all__ = ["ReplayMaster", "ROWS_PER_MESSAGE", "LEAD_S"]

ROWS_PER_MESSAGE = 500
LEAD_S = 3.0  # how far ahead of its send time a row is handed to its worker
# A --processes worker that exited without its report: the report may still be on its way over the socket.
EXITED_GRACE_S = 2.0


@dataclass
class MasterState:
    """What the master knows of its workers (keyed by Locust client id) and of the replay."""

    clients: list[str] = field(default_factory=list)  # the workers, in shard order
    ready: dict[str, messages.WorkerReady] = field(default_factory=dict)
    done: dict[str, messages.WorkerReport] = field(default_factory=dict)
    received: dict[str, int] = field(default_factory=dict)  # legs shipped so far
    given_up: set[str] = field(default_factory=set)  # lost workers: whatever they still send is ignored
    lost: dict[int, int] = field(default_factory=dict)  # shard index -> rows sent to it
    sent_to: list[int] = field(default_factory=list)  # rows sent, per shard
    total: int = 0  # rows in the schedule
    legs_seen: int = 0
    # Every leg's send lag, as float32 chunks (8 MB a million pairs): the outcome's quantiles cover the whole run.
    lag_chunks: list[np.ndarray] = field(default_factory=list)
    errors_by_worker: dict[str, int] = field(default_factory=dict)  # errors so far, as each last reported them
    start_epoch: float | None = None
    stop_feeding: bool = False
    stopped_early: str | None = None
    interrupted: str | None = None
    replay_over: bool = False


class ReplayMaster:
    def __init__(self, plan: DispatchPlan, sinks: Sinks, options: ReplayOptions, *, sampler: Sampler | None,
                 log: Callable[[str], None], processes: int = 0, expect_workers: int | None = None,
                 bind_host: str = "127.0.0.1", bind_port: int = 5557, worker_timeout_s: float = 60.0,
                 stop_rule: StopRule | None = None) -> None:
        self.n_workers = expect_workers or processes
        if self.n_workers < 1:
            raise ValueError("master mode needs at least one worker")
        self.plan, self.options, self.sampler, self.log = plan, options, sampler, log
        self.processes, self.bind_host, self.worker_timeout_s = processes, bind_host, worker_timeout_s
        self.recorder = Recorder(sinks, flush_interval_s=options.flush_interval_s)
        self.stats = DispatchStats()
        self.state = MasterState()
        self.watch = (PairErrorWatch(stop_rule, self._stop_early, versions=len(plan.targets))
                      if stop_rule is not None else None)
        _tolerate_silent_workers(worker_timeout_s)
        self.env = Environment(user_classes=[replay_user_class(_no_replay)], events=Events(), host=plan.targets[0].url)
        self.runner = self.env.create_master_runner(master_bind_host=bind_host, master_bind_port=bind_port)
        self.port = self.runner.master_bind_port if hasattr(self.runner, "master_bind_port") else bind_port
        self.web_ui = start_web_ui(self.env, options.web_host, options.web_port) if options.web_ui else None
        self.children: list[subprocess.Popen[bytes]] = []
        self.handlers: list[Any] = []
        self.samplers: list[Any] = []
        self.gc_state: tuple[int, ...] | None = None
        self.last_progress = 0.0

    def run(self) -> ReplayOutcome:
        self._start_workers()
        t0 = time.time()
        self.recorder.start()
        if self.sampler:
            self.samplers.append(gevent.spawn(_sample_loop, self.sampler, self.recorder, self.options.sample_every_s))
        try:
            deadline = time.time() + self.worker_timeout_s
            self._wait_for_workers(deadline)
            pf = pq.ParquetFile(self.plan.schedule_path)
            self.state.total = pf.metadata.num_rows
            self._assign_shards()
            self.runner.start(self.n_workers, spawn_rate=self.n_workers)
            self._wait_for_replay_users(deadline + self.worker_timeout_s)
            self.gc_state = freeze_gc()
            self.stats.total = self.state.total
            self._feed_rows(pf)
            self._wait_for_reports()
        finally:
            self._shut_down()
        self._raise_worker_failure()
        return self._outcome(t0)

    # ------------------------------------------------------------------------------------ phases

    def _start_workers(self) -> None:
        """Message handlers, the interrupts (web UI Stop, SIGINT, SIGTERM), and the --processes workers."""
        for name, handler in ((messages.READY, self._on_ready), (messages.BATCH, self._on_batch),
                              (messages.LEGS, self._on_legs), (messages.DONE, self._on_done)):
            self.runner.register_message(name, handler)
        if self.web_ui is not None:
            # Locust then tells the workers to stop their users: the STOP sent first is what ends their
            # replays (see ReplayOnce).
            on_ui_stop(self.web_ui, lambda: self._interrupt(STOPPED_FROM_UI))
            self.log(f"Locust web UI: http://{self.options.web_host}:{self.options.web_port}")
        self.handlers = [gevent.signal_handler(s, lambda s: self._interrupt(signal.Signals(s).name), s)
                         for s in (signal.SIGINT, signal.SIGTERM)]
        for _ in range(self.processes):
            self.children.append(subprocess.Popen([sys.executable, "-m", "harness", "worker", "--master-host",
                                                   "127.0.0.1", "--master-port", str(self.port)],
                                                  stdin=subprocess.DEVNULL))

    def _wait_for_workers(self, deadline: float) -> None:
        self.log(f"master on {self.bind_host}:{self.port}: waiting for {self.n_workers} worker(s)")
        while self.runner.worker_count < self.n_workers:
            if time.time() > deadline:
                raise TimeoutError(f"only {self.runner.worker_count} of {self.n_workers} workers connected within "
                                   f"{self.worker_timeout_s:g} s")
            gevent.sleep(0.1)

    def _assign_shards(self) -> None:
        n, total = self.n_workers, self.state.total
        self.state.clients = sorted(self.runner.clients.keys())[:n]
        self.state.sent_to = [0] * n
        plan = messages.plan_to_message(self.plan)
        for i, cid in enumerate(self.state.clients):
            assignment = messages.Assignment(
                plan=plan, shard_index=i, shard_count=n, total=len(range(i, total, n)), worker=f"worker-{i}",
                watch_pairs=self.watch is not None, warmup=self.watch.warmup if self.watch else 0,
                locust_stats=self.web_ui is not None)
            self.runner.send_message(messages.PLAN, assignment.to_message(), client_id=cid)

    def _wait_for_replay_users(self, deadline: float) -> None:
        """The clock starts once every worker's replay user runs, so nobody starts late."""
        while len(self.state.ready) < self.n_workers:
            if any(d.error for d in self.state.done.values()):
                # a worker could not start its replay: the others are stopped before sending anything,
                # and the run fails with its error (_raise_worker_failure)
                self.state.stop_feeding = True
                self.runner.send_message(messages.STOP, None)
                break
            if time.time() > deadline:
                raise TimeoutError(f"only {len(self.state.ready)} of {self.n_workers} workers started their replay user")
            gevent.sleep(0.05)

    def _feed_rows(self, pf: pq.ParquetFile) -> None:
        """Each worker's shard (row i to worker i mod n), LEAD_S ahead of the send times."""
        state = self.state
        self.last_progress = time.time()
        for batch in pf.iter_batches(batch_size=ROWS_PER_MESSAGE * self.n_workers, columns=SCHEDULE_COLUMNS):
            if state.stop_feeding:
                break
            due = batch.column("offset_s")[0].as_py() / self.plan.speed
            if state.start_epoch is None and due > LEAD_S:
                state.start_epoch = self._start_clock()
            if state.start_epoch is not None and state.start_epoch + due - time.time() > LEAD_S:
                gevent.sleep(state.start_epoch + due - time.time() - LEAD_S)
            shard = batch.column("order_idx").to_numpy() % self.n_workers
            for i, cid in enumerate(state.clients):
                part = batch.filter(pa.array(shard == i))
                if part.num_rows:
                    self.runner.send_message(messages.ROWS, to_ipc(part),  # type: ignore[arg-type]  # msgpack sends bytes
                                             client_id=cid)
                    state.sent_to[i] += part.num_rows
            if state.start_epoch is not None:
                self._progress_now_and_then()
        if state.start_epoch is None:
            state.start_epoch = self._start_clock()
        for cid in state.clients:
            self.runner.send_message(messages.ROWS_END, None, client_id=cid)

    def _start_clock(self) -> float:
        # Once the first LEAD_S of every shard is with its worker: the first rows' hand-over (Arrow
        # encoding here, decoding there) does not compete with the first sends.
        epoch = time.time() + self.options.start_delay_s
        self.runner.send_message(messages.START, {"start_epoch": epoch})
        self.stats.started_at = epoch
        return epoch

    def _wait_for_reports(self) -> None:
        """Every worker's report, or notice that it is gone: missing to Locust (no heartbeat for the worker
        timeout), or, for the master's own --processes children, exited without a report."""
        state = self.state
        exited_at: dict[str, float] = {}
        while len(state.done) < self.n_workers:
            gevent.sleep(0.2)
            exited = self._exited_children()
            for i, cid in enumerate(state.clients):
                if cid in state.done or i in state.lost:
                    continue
                client = self.runner.clients.get(cid)
                ready = state.ready.get(cid)
                code = exited.get(ready.pid) if ready is not None and ready.pid is not None else None
                if code is not None:
                    exited_at.setdefault(cid, time.monotonic())
                if client is None or client.state == "missing":
                    self._give_up(i, cid)
                elif code is not None and time.monotonic() - exited_at[cid] > EXITED_GRACE_S:
                    self._give_up(i, cid, f"{exit_described(code)} before its report")
            if len(state.done) + len(state.lost) >= self.n_workers:
                break
            self._progress_now_and_then()

    def _exited_children(self) -> dict[int, int]:
        """pid -> exit status of the --processes workers that have exited."""
        return {c.pid: code for c in self.children if (code := c.poll()) is not None}

    def _give_up(self, i: int, cid: str, why: str = "stopped responding") -> None:
        state = self.state
        state.lost[i] = state.sent_to[i]
        state.given_up.add(cid)
        recovered = _recover_spool(state.ready.get(cid, messages.WorkerReady()), state.received.get(cid, 0),
                                   self.recorder)
        self.recorder.add_event("worker_lost", json.dumps({"index": i, "shard_count": self.n_workers,
                                                           "rows_sent": state.sent_to[i],
                                                           "legs_recovered": recovered, "why": why}))
        self.log(f"worker-{i} {why}: its unfinished shard is counted as lost"
                 + (f" ({recovered} legs recovered from its spool file)" if recovered else ""))

    def _shut_down(self) -> None:
        self.state.replay_over = True
        shut_down(self.runner, self.samplers, self.sampler, self.recorder, self.handlers, self.web_ui)
        if self.gc_state is not None:
            thaw_gc(self.gc_state)
        for child in self.children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()

    def _raise_worker_failure(self) -> None:
        """As in one process: the run fails with the replay's error, after what was recorded is flushed."""
        failed = [f"worker-{i}: {report.error}" for i, cid in enumerate(self.state.clients)
                  if (report := self.state.done.get(cid)) is not None and report.error]
        if failed:
            raise ReplayError("a worker's replay failed: " + "; ".join(failed))

    def _outcome(self, t0: float) -> ReplayOutcome:
        state, stats = self.state, self.stats
        failures: list[tuple[int, str | None]] = []  # legs a worker kept that did not reach results.duckdb
        for i, cid in enumerate(state.clients):
            d = state.done.get(cid)
            if d is None:
                continue
            missing = d.legs_spooled - state.received.get(cid, 0)
            if missing > 0:
                failures.append((1, f"worker-{i}: {missing} of its {d.legs_spooled} legs did not reach the "
                                    f"master (they stay in its spool file on its machine)"))
            stats.dispatched += d.dispatched
            stats.errors += d.errors
            stats.skipped_in_flight += d.skipped_in_flight
            stats.ended_by = stats.ended_by or d.ended_by
            if d.sink_failures:
                failures.append((d.sink_failures, d.last_sink_error))
        if state.stopped_early:
            stats.stopped_early = stats.ended_by = f"stopped early: {state.stopped_early}"
        lags = np.sort(np.concatenate(state.lag_chunks)) if state.lag_chunks else np.empty(0, np.float32)
        recorder = self.recorder
        outcome = ReplayOutcome(stats=stats, legs_recorded=recorder.legs_recorded,
                                sink_failures=recorder.sink_failures + sum(n for n, _ in failures),
                                last_sink_error=next((e for _, e in failures if e), recorder.last_sink_error),
                                interrupted=state.interrupted, lag_p50_ms=_q(lags, 0.5), lag_p99_ms=_q(lags, 0.99),
                                wall_s=time.time() - t0)
        if state.lost:
            outcome.notes.append(f"{len(state.lost)} worker(s) lost: "
                                 + ", ".join(f"worker-{i}" for i in sorted(state.lost)))
        # interpolated as the summary's quantile_cont over the legs table: one figure for the whole run
        _master_progress(self.log, state.legs_seen, len(self.plan.targets), state.total, state.start_epoch or t0,
                         float(np.quantile(lags, 0.99)) if len(lags) else 0.0, stats.errors, final=True)
        return outcome

    def _progress_now_and_then(self) -> None:
        if time.time() - self.last_progress >= self.options.progress_every_s:
            self.last_progress = time.time()
            state = self.state
            _master_progress(self.log, state.legs_seen, len(self.plan.targets), state.total,
                             state.start_epoch or time.time(), _recent_p99(state.lag_chunks),
                             sum(state.errors_by_worker.values()))

    # ------------------------------------------------------------------------------------ stopping

    def _stop_early(self, reason: str) -> None:
        self.state.stopped_early = reason
        self.state.stop_feeding = True
        self.recorder.add_event("stopped_early", reason)
        self.runner.send_message(messages.STOP, None)
        self.log(f"stopping early: {reason}")

    def _interrupt(self, name: str) -> bool:
        if self.state.replay_over or self.state.interrupted:
            return False
        self.state.interrupted = name
        self.state.stop_feeding = True
        self.runner.send_message(messages.STOP, None)
        self.log(f"{name}: stopping workers; legs already completed are being saved")
        return True

    # ------------------------------------------------------------------------------------ messages

    def _on_ready(self, environment: Any, msg: Any) -> None:
        self.state.ready[msg.node_id] = messages.WorkerReady.from_message(msg.data)

    def _on_batch(self, environment: Any, msg: Any) -> None:
        live = msg.data.get("live")
        if live:
            state = self.state
            state.legs_seen += live["legs"]
            lag = from_ipc(live["lags"]).column(0).to_numpy(zero_copy_only=False).astype(np.float32)
            state.lag_chunks.append(lag[~np.isnan(lag)])
            state.errors_by_worker[msg.node_id] = live.get("errors", 0)
            if self.watch is not None and "pairs" in live:
                self.watch.add(*live["pairs"])
        self.recorder.add_events(msg.data.get("events", []))

    def _on_legs(self, environment: Any, msg: Any) -> None:
        if msg.node_id in self.state.given_up:
            return
        try:
            table = from_ipc(msg.data)
        except Exception as exc:  # noqa: BLE001 - never raised into Locust's listener; the shortfall is counted
            self.recorder.sink_failures += 1
            self.recorder.last_sink_error = f"legs from a worker could not be read: {type(exc).__name__}: {exc}"[:500]
        else:
            self.recorder.add_leg_table(table)
            self.recorder.flush()  # written before the acknowledgement: the worker's next chunk waits for it
            self.state.received[msg.node_id] = self.state.received.get(msg.node_id, 0) + table.num_rows
        self.runner.send_message(messages.LEGS_ACK, None, client_id=msg.node_id)

    def _on_done(self, environment: Any, msg: Any) -> None:
        self.state.done[msg.node_id] = messages.WorkerReport.from_message(msg.data)


def _no_replay(user: Any) -> None:
    raise StopUser()


def _tolerate_silent_workers(timeout_s: float) -> None:
    """A worker is missing, to Locust, after 3 s without a heartbeat, and once every worker is missing Locust stops
    the test. A replaying worker on a loaded machine can be starved of the CPU for that long and then carry on:
    the run waits for it for `timeout_s` (the loss check goes by Locust's missing state)."""
    import locust.runners

    locust.runners.HEARTBEAT_LIVENESS = max(locust.runners.HEARTBEAT_LIVENESS,
                                            round(timeout_s / locust.runners.HEARTBEAT_INTERVAL))


def _recover_spool(ready: messages.WorkerReady, skip: int, recorder: Recorder) -> int:
    """The legs a lost worker kept in its spool file, past the `skip` it had shipped, when the file is on
    this machine; its folder is removed after (the worker could not)."""
    path = Path(ready.spool or "/nonexistent")
    if ready.host != socket.gethostname() or not path.is_file():
        return 0
    n = 0
    for table in read_spool(path, skip=skip):
        recorder.add_leg_table(table)
        recorder.flush()
        n += table.num_rows
    if path.parent.name.startswith("harness-worker-"):
        shutil.rmtree(path.parent, ignore_errors=True)
    return n


def _recent_p99(chunks: list[np.ndarray], n: int = 2000) -> float:
    """Lag p99 of the last `n` legs reported (the progress line's, as in one process)."""
    recent: list[np.ndarray] = []
    have = 0
    for chunk in reversed(chunks):
        recent.append(chunk)
        have += len(chunk)
        if have >= n:
            break
    values = np.sort(np.concatenate(recent[::-1])[-n:]) if recent else np.empty(0, np.float32)
    return _q(values, 0.99) or 0.0


def _master_progress(log: Callable[[str], None], legs: int, per_pair: int, total: int, start_epoch: float,
                     lag_p99_ms: float, errors: int, final: bool = False) -> None:
    pairs = legs // max(per_pair, 1)
    elapsed = max(time.time() - start_epoch, 1e-9)
    log(f"{'done:' if final else 'progress:'} {pairs}/{total} pairs recorded ({100 * pairs / max(total, 1):.0f} %), "
        f"{pairs / elapsed:.1f} pairs/s, send lag p99 ({'whole run' if final else 'last 2,000 legs'}) "
        f"{lag_p99_ms:.1f} ms, errors {errors}")
