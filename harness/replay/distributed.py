"""Scale-out with Locust's own master/worker mode.

The master (this process) reads the schedule once and streams each worker its interleaved shard
(row i goes to worker i mod n) as Arrow record batches over Locust's message channel, a few seconds
ahead of the send times (the first few seconds' rows before the shared clock starts);
both legs of a pair are sent by the same worker. While they replay, workers send the master only what it
watches live (legs done, send lags, pair errors for the early stop) and keep their legs in a spool file
(spool.py); each ships its file once its shard is done, and the master alone writes results.duckdb, so
every leg lands exactly once. A worker that disappears (no heartbeat for the worker timeout, 60 s: a
worker starved of the CPU for a few seconds is waited for) is noted with the size of its unfinished shard;
when it ran on the master's machine, the legs in its spool file are recovered; the master finishes and
writes the results anyway.

`--processes N` starts N local workers (`harness worker`) against a master on 127.0.0.1; for several
machines, start `harness run ... --master --expect-workers N` and `harness worker --master-host H`.
"""
from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from ..errors import ReplayError
from .dispatcher import SCHEDULE_COLUMNS, DispatchPlan, TargetPlan
from .recorder import Recorder, Sinks
from .sequential import PairErrorCount, PairErrorWatch, StopRule
from .spool import LegSpool, from_ipc, read_spool, to_ipc
from .runner import ReplayOptions, ReplayOutcome, Sampler, _q

__all__ = ["run_replay_master", "run_worker", "plan_to_message", "plan_from_message"]

ROWS_PER_MESSAGE = 500
LEAD_S = 3.0  # how far ahead of its send time a row is handed to its worker
SHIP_WINDOW = 2  # spool chunks a worker may have sent before the master acknowledges one
ACK_TIMEOUT_S = 120.0


def plan_to_message(plan: DispatchPlan) -> dict[str, Any]:
    d = asdict(plan)
    d["schedule_path"] = None
    d["schema_text"] = plan.schema.read_text() if plan.schema else None
    d["route_schema_texts"] = {r: p.read_text() for r, p in plan.route_schemas.items()}
    d["schema"] = None
    d["route_schemas"] = {}
    d["targets"] = [asdict(t) for t in plan.targets]
    return d


def plan_from_message(d: dict[str, Any], workdir: Path) -> DispatchPlan:
    d = dict(d)
    schema_text = d.pop("schema_text")
    route_texts = d.pop("route_schema_texts")
    schema = None
    if schema_text is not None:
        schema = workdir / "schema.json"
        schema.write_text(schema_text)
    routes = {}
    for i, (route, text) in enumerate(route_texts.items()):
        p = workdir / f"route-schema-{i}.json"
        p.write_text(text)
        routes[route] = p
    d["targets"] = tuple(TargetPlan(**t) for t in d["targets"])
    d["secrets"] = tuple(d.get("secrets", ()))
    return DispatchPlan(**{**d, "schedule_path": Path("/nonexistent"), "schema": schema, "route_schemas": routes})


def _user_class(body: Callable[[Any], None]) -> type:
    from locust import User, constant, task

    class PairedReplayUser(User):
        wait_time = constant(0)

        @task
        def replay(self) -> None:
            body(self)

    return PairedReplayUser


def run_replay_master(plan: DispatchPlan, sinks: Sinks, options: ReplayOptions, *, sampler: Sampler | None,
                      log: Callable[[str], None], processes: int = 0, expect_workers: int | None = None,
                      bind_host: str = "127.0.0.1", bind_port: int = 5557, worker_timeout_s: float = 60.0,
                      stop_rule: StopRule | None = None) -> ReplayOutcome:
    import gevent
    import pyarrow.parquet as pq
    from locust.env import Environment
    from locust.event import Events
    from locust.exception import StopUser

    from .dispatcher import DispatchStats
    from .runner import _sample_loop, freeze_gc, shut_down, thaw_gc
    from .web_ui import STOPPED_FROM_UI, on_ui_stop, start_web_ui

    n_workers = expect_workers or processes
    if n_workers < 1:
        raise ValueError("master mode needs at least one worker")
    recorder = Recorder(sinks, flush_interval_s=options.flush_interval_s)

    def never(user: Any) -> None:
        raise StopUser()

    _tolerate_silent_workers(worker_timeout_s)
    env = Environment(user_classes=[_user_class(never)], events=Events(), host=plan.targets[0].url)
    runner = env.create_master_runner(master_bind_host=bind_host, master_bind_port=bind_port)
    port = runner.master_bind_port if hasattr(runner, "master_bind_port") else bind_port
    web_ui = start_web_ui(env, options.web_host, options.web_port) if options.web_ui else None
    children: list[subprocess.Popen[bytes]] = []
    for _ in range(processes):
        children.append(subprocess.Popen([sys.executable, "-m", "harness", "worker", "--master-host", "127.0.0.1",
                                          "--master-port", str(port)], stdin=subprocess.DEVNULL))
    stats = DispatchStats()
    done: dict[str, dict[str, Any]] = {}
    # Every leg's send lag, as float32 chunks (8 MB a million pairs): the outcome's quantiles cover the whole
    # run.
    lag_chunks: list[np.ndarray] = []
    errors_by_worker: dict[str, int] = {}  # errors so far, as each worker last reported them
    legs_seen = [0]
    watch: PairErrorWatch | None = None
    received: dict[str, int] = {}  # legs shipped so far, per worker
    given_up: set[str] = set()  # lost workers: whatever they still send is ignored

    def on_batch(environment: Any, msg: Any) -> None:
        live = msg.data.get("live")
        if live:
            legs_seen[0] += live["legs"]
            lag = from_ipc(live["lags"]).column(0).to_numpy(zero_copy_only=False).astype(np.float32)
            lag_chunks.append(lag[~np.isnan(lag)])
            errors_by_worker[msg.node_id] = live.get("errors", 0)
            if watch is not None and "pairs" in live:
                watch.add(*live["pairs"])
        recorder.add_events(msg.data.get("events", []))

    def on_legs(environment: Any, msg: Any) -> None:
        if msg.node_id in given_up:
            return
        try:
            table = from_ipc(msg.data)
        except Exception as exc:  # noqa: BLE001 - never raised into Locust's listener; the shortfall is counted
            recorder.sink_failures += 1
            recorder.last_sink_error = f"legs from a worker could not be read: {type(exc).__name__}: {exc}"[:500]
        else:
            recorder.add_leg_table(table)
            recorder.flush()  # written before the acknowledgement: the worker's next chunk waits for it
            received[msg.node_id] = received.get(msg.node_id, 0) + table.num_rows
        runner.send_message("harness_legs_ack", None, client_id=msg.node_id)

    def on_done(environment: Any, msg: Any) -> None:
        done[msg.node_id] = msg.data

    ready: dict[str, dict[str, Any]] = {}

    def on_ready(environment: Any, msg: Any) -> None:
        ready[msg.node_id] = msg.data or {}

    runner.register_message("harness_ready", on_ready)
    runner.register_message("harness_batch", on_batch)
    runner.register_message("harness_legs", on_legs)
    runner.register_message("harness_done", on_done)
    interrupted: list[str] = []
    stop_feeding = [False]
    stopped_early: list[str] = []

    def stop_early(reason: str) -> None:
        stopped_early.append(reason)
        stop_feeding[0] = True
        recorder.add_event("stopped_early", reason)
        runner.send_message("harness_stop", None)
        log(f"stopping early: {reason}")

    if stop_rule is not None:
        watch = PairErrorWatch(stop_rule, stop_early, versions=len(plan.targets))

    replay_over = [False]

    def interrupt(name: str) -> bool:
        if replay_over[0] or interrupted:
            return False
        interrupted.append(name)
        stop_feeding[0] = True
        runner.send_message("harness_stop", None)
        log(f"{name}: stopping workers; legs already completed are being saved")
        return True

    if web_ui is not None:
        # Locust then tells the workers to stop their users: the harness_stop sent first is what ends
        # their replays (see ReplayOnce).
        on_ui_stop(web_ui, lambda: interrupt(STOPPED_FROM_UI))
        log(f"Locust web UI: http://{options.web_host}:{options.web_port}")
    handlers = [gevent.signal_handler(s, lambda s: interrupt(signal.Signals(s).name), s)
                for s in (signal.SIGINT, signal.SIGTERM)]
    t0 = time.time()
    recorder.start()
    samplers = [gevent.spawn(_sample_loop, sampler, recorder, options.sample_every_s)] if sampler else []
    lost: dict[int, int] = {}
    gc_state: tuple[int, ...] | None = None
    try:
        deadline = time.time() + worker_timeout_s
        log(f"master on {bind_host}:{port}: waiting for {n_workers} worker(s)")
        while runner.worker_count < n_workers:
            if time.time() > deadline:
                raise TimeoutError(f"only {runner.worker_count} of {n_workers} workers connected within "
                                   f"{worker_timeout_s:g} s")
            gevent.sleep(0.1)
        clients = sorted(runner.clients.keys())[:n_workers]
        pf = pq.ParquetFile(plan.schedule_path)
        total = pf.metadata.num_rows
        message = plan_to_message(plan)
        for i, cid in enumerate(clients):
            runner.send_message("harness_plan", {"plan": message, "shard_index": i,
                                                 "shard_count": n_workers, "total": len(range(i, total, n_workers)),
                                                 "worker": f"worker-{i}", "watch_pairs": watch is not None,
                                                 "warmup": watch.warmup if watch else 0,
                                                 "locust_stats": web_ui is not None},
                                client_id=cid)
        runner.start(n_workers, spawn_rate=n_workers)
        # The clock starts once every worker's replay user runs, so nobody starts late.
        while len(ready) < n_workers:
            if any(d.get("error") for d in done.values()):
                # a worker could not start its replay: the others are stopped before sending anything,
                # and the run fails with its error (below)
                stop_feeding[0] = True
                runner.send_message("harness_stop", None)
                break
            if time.time() > deadline + worker_timeout_s:
                raise TimeoutError(f"only {len(ready)} of {n_workers} workers started their replay user")
            gevent.sleep(0.05)
        gc_state = freeze_gc()
        stats.total = total
        sent_to = [0] * n_workers
        start_epoch: float | None = None

        def start_clock() -> float:
            # Once the first LEAD_S of every shard is with its worker: the first rows' hand-over (Arrow
            # encoding here, decoding there) does not compete with the first sends.
            epoch = time.time() + options.start_delay_s
            runner.send_message("harness_start", {"start_epoch": epoch})
            stats.started_at = epoch
            return epoch

        def progress() -> None:
            _master_progress(log, legs_seen[0], len(plan.targets), total, start_epoch,  # type: ignore[arg-type]
                             _recent_p99(lag_chunks), sum(errors_by_worker.values()))

        last_progress = time.time()
        for batch in pf.iter_batches(batch_size=ROWS_PER_MESSAGE * n_workers, columns=SCHEDULE_COLUMNS):
            if stop_feeding[0]:
                break
            due = batch.column("offset_s")[0].as_py() / plan.speed
            if start_epoch is None and due > LEAD_S:
                start_epoch = start_clock()
            if start_epoch is not None and start_epoch + due - time.time() > LEAD_S:
                gevent.sleep(start_epoch + due - time.time() - LEAD_S)
            shard = batch.column("order_idx").to_numpy() % n_workers
            for i, cid in enumerate(clients):
                part = batch.filter(pa.array(shard == i))
                if part.num_rows:
                    runner.send_message("harness_rows", to_ipc(part), client_id=cid)
                    sent_to[i] += part.num_rows
            if start_epoch is not None and time.time() - last_progress >= options.progress_every_s:
                last_progress = time.time()
                progress()
        if start_epoch is None:
            start_epoch = start_clock()
        for cid in clients:
            runner.send_message("harness_rows_end", None, client_id=cid)
        # Wait for every worker's report, or notice that it is gone.
        while len(done) < n_workers:
            gevent.sleep(0.2)
            for i, cid in enumerate(clients):
                client = runner.clients.get(cid)
                if cid not in done and i not in lost and (client is None or client.state == "missing"):
                    lost[i] = sent_to[i]
                    given_up.add(cid)
                    recovered = _recover_spool(ready.get(cid, {}), received.get(cid, 0), recorder)
                    recorder.add_event("worker_lost", json.dumps({"index": i, "shard_count": n_workers,
                                                                  "rows_sent": sent_to[i],
                                                                  "legs_recovered": recovered}))
                    log(f"worker-{i} stopped responding: its unfinished shard is counted as lost"
                        + (f" ({recovered} legs recovered from its spool file)" if recovered else ""))
            if len(done) + len(lost) >= n_workers:
                break
            if time.time() - last_progress >= options.progress_every_s:
                last_progress = time.time()
                progress()
    finally:
        replay_over[0] = True
        shut_down(runner, samplers, sampler, recorder, handlers, web_ui)
        if gc_state is not None:
            thaw_gc(gc_state)
        for child in children:
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
    failed = [f"worker-{i}: {done[cid]['error']}" for i, cid in enumerate(clients) if done.get(cid, {}).get("error")]
    if failed:  # as in one process: the run fails with the replay's error, after what was recorded is flushed
        raise ReplayError("a worker's replay failed: " + "; ".join(failed))
    outcome_failures: list[tuple[int, str | None]] = []  # legs a worker kept that did not reach results.duckdb
    for i, cid in enumerate(clients):
        d = done.get(cid)
        if d is None:
            continue
        missing = d.get("legs_spooled", 0) - received.get(cid, 0)
        if missing > 0:
            outcome_failures.append((1, f"worker-{i}: {missing} of its {d['legs_spooled']} legs did not reach the "
                                        f"master (they stay in its spool file on its machine)"))
        stats.dispatched += d["dispatched"]
        stats.errors += d["errors"]
        stats.skipped_in_flight += d["skipped_in_flight"]
        stats.stopped_early = stats.stopped_early or d.get("stopped_early")
        if d.get("sink_failures"):
            outcome_failures.append((d["sink_failures"], d.get("last_sink_error")))
    if stopped_early:
        stats.stopped_early = f"stopped early: {stopped_early[0]}"
    lags = np.sort(np.concatenate(lag_chunks)) if lag_chunks else np.empty(0, np.float32)
    outcome = ReplayOutcome(stats=stats, legs_recorded=recorder.legs_recorded,
                            sink_failures=recorder.sink_failures + sum(n for n, _ in outcome_failures),
                            last_sink_error=next((e for _, e in outcome_failures if e), recorder.last_sink_error),
                            interrupted=interrupted[0] if interrupted else None,
                            lag_p50_ms=_q(lags, 0.5), lag_p99_ms=_q(lags, 0.99),
                            wall_s=time.time() - t0)
    if lost:
        outcome.notes.append(f"{len(lost)} worker(s) lost: " + ", ".join(f"worker-{i}" for i in sorted(lost)))
    # interpolated as the summary's quantile_cont over the legs table: one figure for the whole run
    _master_progress(log, legs_seen[0], len(plan.targets), total, start_epoch,
                     float(np.quantile(lags, 0.99)) if len(lags) else 0.0, stats.errors, final=True)
    return outcome


def _tolerate_silent_workers(timeout_s: float) -> None:
    """A worker is missing, to Locust, after 3 s without a heartbeat, and once every worker is missing Locust stops
    the test. A replaying worker on a loaded machine can be starved of the CPU for that long and then carry on:
    the run waits for it for `timeout_s` (the loss check below goes by Locust's missing state)."""
    import locust.runners

    locust.runners.HEARTBEAT_LIVENESS = max(locust.runners.HEARTBEAT_LIVENESS,
                                            round(timeout_s / locust.runners.HEARTBEAT_INTERVAL))


def _recover_spool(ready_info: dict[str, Any], skip: int, recorder: Recorder) -> int:
    """The legs a lost worker kept in its spool file, past the `skip` it had shipped, when the file is on
    this machine; its folder is removed after (the worker could not)."""
    path = Path(ready_info.get("spool") or "/nonexistent")
    if ready_info.get("host") != socket.gethostname() or not path.is_file():
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


def run_worker(master_host: str, master_port: int, log: Callable[[str], None] = print) -> int:
    import gevent
    import gevent.event
    import gevent.queue
    from locust.env import Environment
    from locust.event import Events
    from locust.exception import StopUser

    from .dispatcher import Dispatcher, DispatchStats, batch_rows
    from .runner import freeze_gc, locust_stats, thaw_gc
    from .web_ui import ReplayOnce

    state: dict[str, Any] = {}
    plan_ready = gevent.event.Event()
    started = gevent.event.Event()
    rows_q: gevent.queue.Queue[Any] = gevent.queue.Queue()
    acks: gevent.queue.Queue[None] = gevent.queue.Queue()
    workdir = Path(tempfile.mkdtemp(prefix="harness-worker-"))
    env_holder: dict[str, Any] = {}

    def replay() -> None:
        plan_ready.wait()
        runner = env_holder["runner"]
        plan: DispatchPlan = state["plan"]

        def send(kind: str) -> Callable[[Any], None]:
            def sink(table: Any) -> None:
                runner.send_message("harness_batch", {kind: table.to_pylist()})
            return sink

        spool = LegSpool(workdir / "legs.arrows")
        pair_count = PairErrorCount(len(plan.targets), state.get("warmup", 0)) if state["watch_pairs"] else None
        hub = gevent.get_hub()

        def keep_legs(table: Any) -> None:
            hub.threadpool.apply(spool.write, (table,))
            live: dict[str, Any] = {"legs": table.num_rows, "lags": to_ipc(table.select(["send_lag_ms"])),
                                    "errors": dispatcher.stats.errors}
            if pair_count is not None:
                live["pairs"] = pair_count.take()
            runner.send_message("harness_batch", {"live": live})

        # Not in the thread pool: send_message belongs to the loop (keep_legs puts the file write there).
        recorder = Recorder({"legs": keep_legs, "events": send("events"), "resources": send("resources")},
                            use_threadpool=False)
        if pair_count is not None:
            recorder.leg_listeners.append(pair_count)

        # Locust's stats only feed the master's web UI (the workers report them to it every 3 s)
        dispatcher = Dispatcher(plan, recorder, on_leg=locust_stats(env_holder) if state["locust_stats"] else None)
        state["dispatcher"] = dispatcher
        gc_state = freeze_gc()
        # Ready only once everything slow to create exists: the master starts the clock after this.
        runner.send_message("harness_ready", {"spool": str(spool.path), "host": socket.gethostname()})
        started.wait()
        # Workers flush in turn: at the same moment, their flushes and the target left no core for sending.
        recorder.start(offset_s=state["shard_index"] * recorder.flush_interval_s / state["shard_count"])

        def rows() -> Any:
            while True:
                chunk = rows_q.get()
                if chunk is None:
                    return
                yield from batch_rows(from_ipc(chunk))

        error: str | None = None
        try:
            dispatcher.run(state["start_epoch"], rows(), state["total"])
        except Exception as exc:  # noqa: BLE001 - reported to the master, which fails the run with it
            error = f"{type(exc).__name__}: {exc}"[:500]
            log(f"replay failed: {error}")
        finally:
            recorder.stop()
            thaw_gc(gc_state)
            spool.close()
            # shipped even when the replay failed: what was recorded is kept
            state["keep_workdir"] = not _ship_spool(runner, spool.path, acks, log)
        send_done(dispatcher.stats, spool.rows, recorder, error)

    def send_done(stats: Any, legs_spooled: int, recorder: Recorder | None, error: str | None) -> None:
        env_holder["runner"].send_message("harness_done", {
            "dispatched": stats.dispatched, "errors": stats.errors, "skipped_in_flight": stats.skipped_in_flight,
            "stopped_early": stats.stopped_early, "legs_spooled": legs_spooled,
            "sink_failures": recorder.sink_failures if recorder else 0,
            "last_sink_error": recorder.last_sink_error if recorder else None, "error": error})

    def failed_to_start(exc: BaseException) -> None:
        # before its replay ran (the plan, the spool file): the master is told at once, not left waiting
        error = f"{type(exc).__name__}: {exc}"[:500]
        log(f"replay failed: {error}")
        send_done(DispatchStats(), 0, None, error)

    once = ReplayOnce(replay, on_error=failed_to_start)

    def body(user: Any) -> None:
        once.user_body()
        raise StopUser()

    env = Environment(user_classes=[_user_class(body)], events=Events())
    env_holder["env"] = env
    runner = env.create_worker_runner(master_host, master_port)
    env_holder["runner"] = runner

    def on_plan(environment: Any, msg: Any) -> None:
        d = msg.data
        state["plan"] = replace(plan_from_message(d["plan"], workdir), worker=d["worker"])
        state["total"] = d["total"]
        state["shard_index"], state["shard_count"] = d["shard_index"], d["shard_count"]
        state["watch_pairs"] = d.get("watch_pairs", False)
        state["warmup"] = int(d.get("warmup", 0))
        state["locust_stats"] = d.get("locust_stats", True)
        plan_ready.set()

    def on_start(environment: Any, msg: Any) -> None:
        state["start_epoch"] = msg.data["start_epoch"]
        started.set()

    def on_rows(environment: Any, msg: Any) -> None:
        rows_q.put(msg.data)

    def on_end(environment: Any, msg: Any) -> None:
        rows_q.put(None)

    def on_stop(environment: Any, msg: Any) -> None:
        if "dispatcher" in state:
            state["dispatcher"].stop("interrupted on the master")
        rows_q.put(None)

    runner.register_message("harness_plan", on_plan)
    runner.register_message("harness_start", on_start)
    runner.register_message("harness_rows", on_rows)
    runner.register_message("harness_rows_end", on_end)
    runner.register_message("harness_stop", on_stop)
    runner.register_message("harness_legs_ack", lambda environment, msg: acks.put(None))
    # A worker ignores SIGINT: the master decides when to stop, and a Ctrl-C in the terminal reaches both.
    gevent.signal_handler(signal.SIGINT, lambda: None)
    try:
        runner.greenlet.join()
    finally:
        if not state.get("keep_workdir"):
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _ship_spool(runner: Any, path: Path, acks: Any, log: Callable[[str], None]) -> bool:
    """Every leg in the spool file to the master, in chunks, at most SHIP_WINDOW unacknowledged. False when
    the master stopped acknowledging: the file is then kept."""
    import gevent.queue

    shipped = outstanding = 0
    try:
        for table in read_spool(path):
            while outstanding >= SHIP_WINDOW:
                acks.get(timeout=ACK_TIMEOUT_S)
                outstanding -= 1
            runner.send_message("harness_legs", to_ipc(table))
            outstanding += 1
            shipped += table.num_rows
        while outstanding:
            acks.get(timeout=ACK_TIMEOUT_S)
            outstanding -= 1
    except gevent.queue.Empty:
        log(f"the master acknowledged no legs for {ACK_TIMEOUT_S:g} s: {shipped} legs sent, the rest stay in {path}")
        return False
    return True
