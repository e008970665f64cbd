"""A worker of a distributed replay (`harness worker`): it takes its shard from the master, replays it on the
shared clock, keeps its legs in a spool file, sends the master only what it watches live, and ships the
file once its shard is done.

One method per phase of `ReplayWorker._replay`; the message handlers (`_on_*`) run in Locust's greenlets
and only record what arrived in `WorkerState`.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import gevent
import gevent.event
import gevent.queue
from locust.env import Environment
from locust.event import Events
from locust.exception import StopUser

from . import messages
from .dispatcher import Dispatcher, DispatchPlan, DispatchStats, batch_rows
from .recorder import Recorder
from .runner import freeze_gc, locust_stats, thaw_gc
from .sequential import PairErrorCount
from .spool import LegSpool, from_ipc, read_spool, to_ipc
from .web_ui import ReplayOnce, replay_user_class

__all__ = ["ReplayWorker", "SHIP_WINDOW", "ACK_TIMEOUT_S"]

SHIP_WINDOW = 2  # spool chunks a worker may have sent before the master acknowledges one
ACK_TIMEOUT_S = 120.0


@dataclass
class WorkerState:
    """What the master has told this worker so far, and the replay's parts once they exist."""

    assignment: messages.Assignment | None = None
    plan: DispatchPlan | None = None
    start_epoch: float | None = None
    dispatcher: Dispatcher | None = None
    spool: LegSpool | None = None
    pair_count: PairErrorCount | None = None
    keep_workdir: bool = False  # the master did not take every leg: the spool file stays


class ReplayWorker:
    def __init__(self, master_host: str, master_port: int, log: Callable[[str], None] = print) -> None:
        self.log = log
        self.state = WorkerState()
        self.plan_ready = gevent.event.Event()
        self.started = gevent.event.Event()
        self.rows_q: gevent.queue.Queue[Any] = gevent.queue.Queue()
        self.acks: gevent.queue.Queue[None] = gevent.queue.Queue()
        self.workdir = Path(tempfile.mkdtemp(prefix="harness-worker-"))
        self.once = ReplayOnce(self._replay, on_error=self._failed_to_start)
        self.env = Environment(user_classes=[replay_user_class(self._user_body)], events=Events())
        self.runner = self.env.create_worker_runner(master_host, master_port)

    def run(self) -> int:
        for name, handler in ((messages.PLAN, self._on_plan), (messages.START, self._on_start),
                              (messages.ROWS, self._on_rows), (messages.ROWS_END, self._on_end),
                              (messages.STOP, self._on_stop), (messages.LEGS_ACK, self._on_legs_ack)):
            self.runner.register_message(name, handler)
        # A worker ignores SIGINT: the master decides when to stop, and a Ctrl-C in the terminal reaches both.
        gevent.signal_handler(signal.SIGINT, lambda: None)
        try:
            self.runner.greenlet.join()
        finally:
            if not self.state.keep_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
        return 0

    def _user_body(self, user: Any) -> None:
        self.once.user_body()
        raise StopUser()

    # ------------------------------------------------------------------------------------ phases

    def _replay(self) -> None:
        self.plan_ready.wait()
        assignment, plan = self.state.assignment, self.state.plan
        assert assignment is not None and plan is not None  # set with plan_ready
        recorder, dispatcher = self._prepare(assignment, plan)
        spool = self.state.spool
        assert spool is not None
        gc_state = freeze_gc()
        # Ready only once everything slow to create exists: the master starts the clock after this.
        ready = messages.WorkerReady(spool=str(spool.path), host=socket.gethostname(), pid=os.getpid())
        self.runner.send_message(messages.READY, ready.to_message())
        self.started.wait()
        start_epoch = self.state.start_epoch
        assert start_epoch is not None  # set with started
        # Workers flush in turn: at the same moment, their flushes and the target left no core for sending.
        recorder.start(offset_s=assignment.shard_index * recorder.flush_interval_s / assignment.shard_count)
        error: str | None = None
        try:
            dispatcher.run(start_epoch, self._rows(), assignment.total)
        except Exception as exc:  # noqa: BLE001 - reported to the master, which fails the run with it
            error = f"{type(exc).__name__}: {exc}"[:500]
            self.log(f"replay failed: {error}")
        finally:
            recorder.stop()
            thaw_gc(gc_state)
            spool.close()
            # shipped even when the replay failed: what was recorded is kept
            self.state.keep_workdir = not _ship_spool(self.runner, spool.path, self.acks, self.log)
        self._report(dispatcher.stats, spool.rows, recorder, error)

    def _prepare(self, assignment: messages.Assignment, plan: DispatchPlan) -> tuple[Recorder, Dispatcher]:
        """The spool file, the recorder that writes to it, and the dispatcher."""
        state = self.state
        state.spool = LegSpool(self.workdir / "legs.arrows")
        state.pair_count = PairErrorCount(len(plan.targets), assignment.warmup) if assignment.watch_pairs else None
        # Not in the thread pool: send_message belongs to the loop (_keep_legs puts the file write there).
        recorder = Recorder({"legs": self._keep_legs, "events": self._send("events"),
                             "resources": self._send("resources")}, use_threadpool=False)
        if state.pair_count is not None:
            recorder.leg_listeners.append(state.pair_count)
        # Locust's stats only feed the master's web UI (the workers report them to it every 3 s)
        state.dispatcher = Dispatcher(plan, recorder,
                                      on_leg=locust_stats({"env": self.env}) if assignment.locust_stats else None)
        return recorder, state.dispatcher

    def _rows(self) -> Iterator[Any]:
        while True:
            chunk = self.rows_q.get()
            if chunk is None:
                return
            yield from batch_rows(from_ipc(chunk))

    def _keep_legs(self, table: Any) -> None:
        state = self.state
        assert state.spool is not None and state.dispatcher is not None
        gevent.get_hub().threadpool.apply(state.spool.write, (table,))
        live: dict[str, Any] = {"legs": table.num_rows, "lags": to_ipc(table.select(["send_lag_ms"])),
                                "errors": state.dispatcher.stats.errors}
        if state.pair_count is not None:
            live["pairs"] = state.pair_count.take()
        self.runner.send_message(messages.BATCH, {"live": live})

    def _send(self, kind: str) -> Callable[[Any], None]:
        def sink(table: Any) -> None:
            self.runner.send_message(messages.BATCH, {kind: table.to_pylist()})
        return sink

    def _report(self, stats: DispatchStats, legs_spooled: int, recorder: Recorder | None, error: str | None) -> None:
        report = messages.WorkerReport(
            dispatched=stats.dispatched, errors=stats.errors, skipped_in_flight=stats.skipped_in_flight,
            ended_by=stats.ended_by, legs_spooled=legs_spooled,
            sink_failures=recorder.sink_failures if recorder else 0,
            last_sink_error=recorder.last_sink_error if recorder else None, error=error)
        self.runner.send_message(messages.DONE, report.to_message())

    def _failed_to_start(self, exc: BaseException) -> None:
        # before its replay ran (the plan, the spool file): the master is told at once, not left waiting
        error = f"{type(exc).__name__}: {exc}"[:500]
        self.log(f"replay failed: {error}")
        self._report(DispatchStats(), 0, None, error)

    # ------------------------------------------------------------------------------------ messages

    def _on_plan(self, environment: Any, msg: Any) -> None:
        assignment = messages.Assignment.from_message(msg.data)
        self.state.assignment = assignment
        self.state.plan = replace(messages.plan_from_message(assignment.plan, self.workdir), worker=assignment.worker)
        self.plan_ready.set()

    def _on_start(self, environment: Any, msg: Any) -> None:
        self.state.start_epoch = msg.data["start_epoch"]
        self.started.set()

    def _on_rows(self, environment: Any, msg: Any) -> None:
        self.rows_q.put(msg.data)

    def _on_end(self, environment: Any, msg: Any) -> None:
        self.rows_q.put(None)

    def _on_stop(self, environment: Any, msg: Any) -> None:
        if self.state.dispatcher is not None:
            self.state.dispatcher.stop("interrupted on the master")
        self.rows_q.put(None)

    def _on_legs_ack(self, environment: Any, msg: Any) -> None:
        self.acks.put(None)


def _ship_spool(runner: Any, path: Path, acks: Any, log: Callable[[str], None]) -> bool:
    """Every leg in the spool file to the master, in chunks, at most SHIP_WINDOW unacknowledged. False when
    the master stopped acknowledging: the file is then kept."""
    shipped = outstanding = 0
    try:
        for table in read_spool(path):
            while outstanding >= SHIP_WINDOW:
                acks.get(timeout=ACK_TIMEOUT_S)
                outstanding -= 1
            runner.send_message(messages.LEGS, to_ipc(table))
            outstanding += 1
            shipped += table.num_rows
        while outstanding:
            acks.get(timeout=ACK_TIMEOUT_S)
            outstanding -= 1
    except gevent.queue.Empty:
        log(f"the master acknowledged no legs for {ACK_TIMEOUT_S:g} s: {shipped} legs sent, the rest stay in {path}")
        return False
    return True
