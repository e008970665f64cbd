"""Runs a dispatch plan inside Locust (library mode, headless or with its web UI).

Locust provides the runner, the event hooks, the stats and the web UI; the dispatcher provides the
open-loop paired schedule. One replay user runs per process (per worker in master/worker mode, where
each takes an interleaved shard of the schedule); every leg fires Locust's request event, so Locust's
own stats and UI show the replay as it goes.
"""
from __future__ import annotations

import gc
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from .dispatcher import DispatchPlan, DispatchStats
from .recorder import Recorder, Sinks
from .sequential import PairErrorWatch, StopRule

if TYPE_CHECKING:
    import numpy as np

__all__ = ["ReplayOptions", "ReplayOutcome", "run_replay", "locust_stats"]

Sampler = Callable[[], list[dict[str, Any]]]


@dataclass(frozen=True)
class ReplayOptions:
    web_ui: bool = False
    web_host: str = "127.0.0.1"
    web_port: int = 8089
    progress_every_s: float = 5.0
    flush_interval_s: float = 0.5
    sample_every_s: float = 0.5
    start_delay_s: float = 0.3


@dataclass
class ReplayOutcome:
    stats: DispatchStats
    legs_recorded: int
    sink_failures: int
    last_sink_error: str | None
    interrupted: str | None = None
    lag_p50_ms: float | None = None
    lag_p99_ms: float | None = None
    wall_s: float = 0.0
    notes: list[str] = field(default_factory=list)


def run_replay(plan: DispatchPlan, sinks: Sinks, options: ReplayOptions = ReplayOptions(),
               sampler: Sampler | None = None, log: Callable[[str], None] = print,
               stop_rule: StopRule | None = None) -> ReplayOutcome:
    # Imported here: locust patches the standard library with gevent on import.
    import gevent
    from locust import User, constant, task
    from locust.env import Environment
    from locust.event import Events
    from locust.exception import StopUser

    from .dispatcher import Dispatcher, schedule_rows
    from .web_ui import STOPPED_FROM_UI, ReplayOnce, on_ui_stop, start_web_ui

    recorder = Recorder(sinks, flush_interval_s=options.flush_interval_s)
    env_holder: dict[str, Any] = {}

    dispatcher = Dispatcher(plan, recorder, on_leg=locust_stats(env_holder) if options.web_ui else None)
    if stop_rule is not None:
        recorder.leg_listeners.append(PairErrorWatch(stop_rule, lambda reason: _stop_early(dispatcher, recorder, reason, log),
                                                     versions=len(plan.targets)))
    gc_state = freeze_gc()

    start_epoch = time.time() + options.start_delay_s

    def replay() -> None:
        rows, total = schedule_rows(plan.schedule_path)
        dispatcher.run(start_epoch, rows, total)

    once = ReplayOnce(replay)
    done = once.finished

    class PairedReplayUser(User):
        wait_time = constant(0)

        @task
        def replay(self) -> None:
            once.user_body()
            raise StopUser()

    env = Environment(user_classes=[PairedReplayUser], events=Events(), host=plan.targets[0].url)
    env_holder["env"] = env
    runner = env.create_local_runner()

    interrupted: list[str] = []

    def interrupt(name: str) -> bool:
        if done.is_set() or interrupted:
            return False
        interrupted.append(name)
        dispatcher.stop(f"interrupted by {name}")
        log(f"{name}: stopping; legs already completed are being saved")
        return True

    web_ui = start_web_ui(env, options.web_host, options.web_port) if options.web_ui else None
    if web_ui is not None:
        on_ui_stop(web_ui, lambda: interrupt(STOPPED_FROM_UI))
        log(f"Locust web UI: http://{options.web_host}:{options.web_port}")
    handlers = [gevent.signal_handler(s, lambda s: interrupt(signal.Signals(s).name), s)
                for s in (signal.SIGINT, signal.SIGTERM)]
    recorder.start()
    samplers = [gevent.spawn(_sample_loop, sampler, recorder, options.sample_every_s)] if sampler else []
    progress = gevent.spawn(_progress_loop, dispatcher, options.progress_every_s, log)
    t0 = time.time()
    try:
        runner.start(1, spawn_rate=1)
        done.wait()
        gevent.sleep(0)
    finally:
        shut_down(runner, [progress, *samplers], sampler, recorder, handlers, web_ui)
        thaw_gc(gc_state)
    if once.error is not None:
        raise once.error  # after everything recorded so far was flushed
    lags = sorted(dispatcher.stats.recent_lag_ms)
    outcome = ReplayOutcome(
        stats=dispatcher.stats, legs_recorded=recorder.legs_recorded, sink_failures=recorder.sink_failures,
        last_sink_error=recorder.last_sink_error, interrupted=interrupted[0] if interrupted else None,
        lag_p50_ms=_q(lags, 0.50), lag_p99_ms=_q(lags, 0.99), wall_s=time.time() - t0, notes=list(recorder.notes))
    _progress_line(dispatcher, log, final=True)
    return outcome


def locust_stats(env_holder: dict[str, Any]) -> Callable[[str, str, float, int, str | None], None]:
    """Each leg into Locust's stats, for its web UI: type = version, name = route. Only with --web-ui:
    nothing else reads them (every leg is in results.duckdb), and they were a tenth of a leg's CPU.
    Straight into the stats, not through events.request: the hook's dispatch cost as much again, and
    nothing else listens in a replay's own Environment."""

    def on_leg(version: str, route: str, latency_ms: float, size: int, error: str | None) -> None:
        stats = env_holder["env"].runner.stats
        stats.log_request(version, route, latency_ms, size)
        if error is not None:
            stats.log_error(version, route, error)

    return on_leg


GC_THRESHOLD = (5000, 20, 1000)
SWITCH_INTERVAL_S = 0.0002


def freeze_gc() -> tuple[Any, ...]:
    """Before a replay: collect once, then move every object alive now (modules, Locust, the store) out of the
    collector's reach (gc.freeze), and collect the young generations less often: each collection stops the
    loop for 1-3 ms (a full one over everything loaded here took 125 ms), a stall in the send schedule.
    With the default thresholds (700, 10, 10) at 1,000 pairs/s, lag p99 was 3-11 ms; with these 1.7-2 ms.
    The GIL's switch interval drops from 5 ms to 0.2 ms: the recorder's sinks run in a thread (the store's
    DuckDB inserts themselves where no writer process holds the file), and a thread holding the GIL can keep
    the send loop waiting for up to the whole interval."""
    previous = (gc.get_threshold(), sys.getswitchinterval())
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    return previous


def thaw_gc(state: tuple[Any, ...]) -> None:
    gc.unfreeze()
    gc.set_threshold(*state[0])
    sys.setswitchinterval(state[1])


def shut_down(runner: Any, greenlets: list[Any], sampler: Sampler | None, recorder: Recorder, handlers: list[Any],
              web_ui: Any) -> None:
    """The end of every replay, local or master: stop Locust, take a last resource sample, flush every
    buffered row, release the signal handlers and the web UI."""
    runner.quit()
    for g in greenlets:
        g.kill()
    if sampler is not None:
        recorder.add_resources(sampler())
    recorder.stop()
    for h in handlers:
        h.cancel()
    # A stopped libev watcher leaves its signal at SIG_DFL while Python still records its own handler: put
    # Python's back, or a Ctrl-C while the run is judged kills the process unseen (exit 130, no summary.json).
    for s in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(s)
        if handler is not None:
            signal.signal(s, handler)
    if web_ui is not None:
        web_ui.stop()


def _stop_early(dispatcher: Any, recorder: Recorder, reason: str, log: Callable[[str], None]) -> None:
    recorder.add_event("stopped_early", reason)
    log(f"stopping early: {reason}")
    dispatcher.stop(f"stopped early: {reason}", by_test=True)


def _q(sorted_values: Sequence[float] | np.ndarray, q: float) -> float | None:
    """The q-quantile of sorted values (a list, or a numpy array on the master)."""
    if len(sorted_values) == 0:
        return None
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def _sample_loop(sampler: Sampler, recorder: Recorder, every_s: float) -> None:
    import gevent

    while True:
        recorder.add_resources(sampler())
        gevent.sleep(every_s)


def _progress_loop(dispatcher: Any, every_s: float, log: Callable[[str], None]) -> None:
    import gevent

    while True:
        gevent.sleep(every_s)
        _progress_line(dispatcher, log)


def _progress_line(dispatcher: Any, log: Callable[[str], None], final: bool = False) -> None:
    s = dispatcher.stats
    if s.started_at is None:
        return
    elapsed = max(time.time() - s.started_at, 1e-9)
    pct = 100.0 * s.dispatched / s.total if s.total else 100.0
    prefix = "done:" if final else "progress:"
    log(f"{prefix} sent {s.dispatched}/{s.total} pairs ({pct:.0f} %), {s.dispatched / elapsed:.1f} pairs/s, "
        f"{_lag_text(s.recent_lag_ms, s.completed_legs, final)}, errors {s.errors}, "
        f"skipped (in-flight limit) {s.skipped_in_flight}, in flight {s.in_flight}")


def _lag_text(lags_ms: Sequence[float], completed_legs: int, final: bool) -> str:
    """While the replay runs: the recent send lag. At the end: the whole run's, interpolated as the
    summary's quantile_cont over the legs table is, so the last line and the run's note give one figure;
    when the early legs' lags were dropped to bound memory, no figure rather than a partial one."""
    if not final:
        recent = sorted(lags_ms[-_RECENT_LEGS:])
        if not recent:
            return "send lag p99 -"
        return f"send lag p99 (last {len(recent):,} legs) {recent[int(0.99 * (len(recent) - 1))]:.1f} ms"
    if not lags_ms or len(lags_ms) < completed_legs:
        return "send lag p99 (whole run) in the summary"
    values = sorted(lags_ms)
    pos = 0.99 * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return f"send lag p99 (whole run) {values[lo] + (values[hi] - values[lo]) * (pos - lo):.1f} ms"


_RECENT_LEGS = 2000
