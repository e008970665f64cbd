"""`harness shadow SCENARIO --listen HOST:PORT`: live shadow traffic into a run folder like a replay's.

While it runs, the proxy (proxy.py) hands every exchange to the recorder process (channel.py,
recorder.py), which writes the requests as a capture (`shadow_traffic.jsonl.gz` in the run folder,
redacted) and the legs to a spool. At the end (SIGINT/SIGTERM, --duration, --max-requests)
results.py makes the results database and the outputs from them as for a replay; `harness report`,
gates and the schedule work on it unchanged, and `harness run` can replay shadow_traffic.jsonl.gz later.

Every `snapshot_every_s` (30 s) a snapshot of the run so far is made in a separate process
(snapshot.py) from whole-flush prefixes of the capture and the spool, and moved into the run folder:
`harness report RUN` works while the shadow runs, on a consistent snapshot (status incomplete until
the end).
"""
from __future__ import annotations

import asyncio
import json
import logging
import shutil
import signal
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from .. import __version__
from ..capture.http11 import KEEPALIVE_TIMEOUT_S
from ..capture.proxy import parse_listen, run_loop
from ..errors import VERDICT_EXIT, ScenarioError, UsageError
from ..run import RunResult, _setup_log, check_out_root, check_targets, make_run_dir, resource_monitor
from ..send_headers import header_overrides
from ..scenario import Scenario
from .channel import RecorderChannel
from .probe import Probe
from .proxy import ShadowApp, ShadowStats
from .resources import ResourceSpool, read_resources
from .results import build_results, publish

__all__ = ["run_shadow", "CAPTURE_NAME"]

CAPTURE_NAME = "shadow_traffic.jsonl.gz"
IN_FLIGHT_DROP = "not mirrored: copies in flight at replay.max_in_flight"
log = logging.getLogger("harness")


def run_shadow(scenario: Scenario, listen: str, out_root: Path, *, duration_s: float | None = None,
               max_requests: int | None = None, snapshot_every_s: float = 30.0,
               keepalive_timeout_s: float = KEEPALIVE_TIMEOUT_S, keep_serving: bool = False,
               echo: Callable[[str], None] = print) -> RunResult:
    """`keep_serving`: at the run's end by --duration or --max-requests the run folder is written while the
    proxy goes on answering from the baseline (nothing mirrored or recorded) until SIGINT/SIGTERM: a proxy
    in production's data path must not close its listener because a shadow run ended."""
    if scenario.replay.mode != "paired" or "candidate" not in scenario.versions:
        raise ScenarioError(f"{scenario.source}: harness shadow needs replay.mode: paired and a candidate target")
    grpc = [v for v in scenario.versions if scenario.target_for(v).protocol == "kserve_v2_grpc"]
    if grpc:  # the live proxy speaks HTTP/1.1 to its users and targets
        raise ScenarioError(f"{scenario.source}: targets.{grpc[0]}: harness shadow proxies HTTP only; gRPC targets "
                            "(protocol kserve_v2_grpc) are replayed with harness run")
    header_overrides(scenario)  # an unset ${VAR} in the test credentials is a usage error before anything starts
    try:
        host, port = parse_listen(listen)
    except ValueError as exc:
        raise UsageError(f"harness shadow: {exc}") from None
    if snapshot_every_s < 0:
        raise UsageError("harness shadow: --snapshot-every must be >= 0 (0: no snapshots)")
    if keepalive_timeout_s < 0:
        raise UsageError("harness shadow: --keepalive-timeout must be >= 0 (0: never)")
    # The baseline answers the users: it must be up. The candidate may be down: that is recorded, not fatal.
    check_out_root(out_root)
    check_targets(replace(scenario, replay=replace(scenario.replay, mode="baseline-only")))
    run_dir = make_run_dir(out_root, scenario.name)
    handler, say = _setup_log(run_dir, echo)
    work = run_dir / ".work"
    work.mkdir()
    try:
        say(f"harness {__version__}: live shadow {scenario.name}, run folder {run_dir}")
        capture_path = run_dir / CAPTURE_NAME
        legs_path = work / "legs.jsonl"
        monitor = resource_monitor(scenario, {})
        monitor.find_processes()
        resources = ResourceSpool(monitor, work / "resources.jsonl")
        live = _Live(scenario, run_dir, capture_path, legs_path,
                     snapshot_every_s if scenario.source is not None else 0.0, say, keepalive_timeout_s, resources)

        def finish(stats: ShadowStats, stopped_by: str, recorded: dict[str, Any] | None) -> dict[str, Any]:
            say(f"shadow: {stats.requests} requests answered from the baseline, {stats.mirrored} mirrored, "
                f"{stats.not_allowed} not allowed, dropped: {dict(stats.dropped) or 0}; stopped by {stopped_by}")
            summary = build_results(scenario, run_dir / ".final", run_id=run_dir.name, capture_path=capture_path,
                                    capture_recorded=capture_path, legs_path=legs_path, drops=stats.drop_reasons,
                                    replay_event=_replay_event(stats, stopped_by, recorded), status="complete",
                                    reason=f"live shadow, stopped by {stopped_by}",
                                    resources=read_resources(resources.path), resource_events=resources.events())
            publish(run_dir / ".final", run_dir)
            say(f"verdict {summary['verdict']}; report {run_dir / 'gate_report.html'}")
            return summary

        summary = run_loop(live.serve(host, port, duration_s, max_requests, finish, keep_serving))
        return RunResult(run_dir=run_dir, verdict=summary["verdict"],
                         exit_code=VERDICT_EXIT[summary["verdict"]], summary=summary)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        log.removeHandler(handler)
        handler.close()


def _replay_event(stats: ShadowStats, stopped_by: str | None, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """`recorded`: the recorder's counts at the end (what it could not build or write)."""
    event = {"mode": "live shadow", "wall_s": time.time() - stats.started_at, "dispatched": stats.mirrored,
             "requests": stats.requests, "not_allowed": stats.not_allowed, "dropped": dict(stats.dropped),
             "candidate_errors": dict(stats.candidate_errors),
             "skipped_in_flight": stats.dropped.get(IN_FLIGHT_DROP, 0), "interrupted": None,
             "stopped_by": stopped_by, "sink_failures": 0}
    if recorded is not None:
        event["recorder"] = recorded
    return event


class _Live:
    def __init__(self, scenario: Scenario, run_dir: Path, capture_path: Path, legs_path: Path,
                 snapshot_every_s: float, say: Callable[[str], None], keepalive_timeout_s: float,
                 resources: ResourceSpool) -> None:
        self.scenario, self.run_dir, self.say = scenario, run_dir, say
        self.resources = resources
        self.capture_path, self.legs_path = capture_path, legs_path
        self.snapshot_every_s = snapshot_every_s
        self.keepalive_timeout_s = keepalive_timeout_s

    async def serve(self, host: str, port: int, duration_s: float | None, max_requests: int | None,
                    finish: Callable[[ShadowStats, str, dict[str, Any] | None], dict[str, Any]],
                    keep_serving: bool) -> dict[str, Any]:
        """Serves until the run's end, then `finish` makes the run folder from what was recorded. With
        `keep_serving` and an end by duration or max-requests, the proxy answers on, from the baseline alone,
        while `finish` runs (in a thread: the serving loop stays free) and until SIGINT/SIGTERM."""
        scenario, say = self.scenario, self.say
        stop = asyncio.Event()
        shadow: ShadowApp | None = None

        def dropped(item: tuple[Any, ...], reason: str) -> None:
            if shadow is not None:
                shadow.stats.drop(item[1], reason)  # item[1]: the shadow id

        channel = RecorderChannel(dropped)
        await channel.start(scenario, self.capture_path, self.legs_path)
        shadow = ShadowApp(scenario, channel, max_requests, stop, self.keepalive_timeout_s)
        probe = Probe.from_env()
        if probe is not None:
            probe.start()
            for obj, name in ((channel, "send"), (shadow, "request"), (shadow, "answered")):
                probe.wrap(obj, name)
        stopped_by = ["max-requests"]
        signalled = asyncio.Event()
        snapshots: asyncio.Task[None] | None = None
        sampling: asyncio.Task[None] | None = None
        recorded: dict[str, Any] | None = None
        serving = False
        try:
            bound = await shadow.start(host, port)
            say(f"listening on http://{host}:{bound}: baseline {scenario.target_for('baseline').url} answers, "
                f"candidate {scenario.target_for('candidate').url} gets a copy")
            if not shadow.copies_carry_credentials:
                say("note: the copies carry none of the users' credentials (Authorization, cookies, API keys are left "
                    "out of them); a candidate that needs some gets test ones from targets.candidate.headers or "
                    "replay.headers")
            sys.stdout.flush()
            loop = asyncio.get_running_loop()

            def stop_by(reason: str) -> None:
                if not stop.is_set():
                    stopped_by[0] = reason
                stop.set()

            def on_signal(name: str) -> None:
                signalled.set()
                stop_by(name)

            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, on_signal, signal.Signals(sig).name)
            if duration_s is not None:
                loop.call_later(duration_s, stop_by, "duration")
            if self.snapshot_every_s > 0:
                snapshots = asyncio.create_task(self._snapshots(shadow, channel))
            sampling = asyncio.create_task(self.resources.run())
            await stop.wait()
            serving = keep_serving and not signalled.is_set()
        finally:
            for task in (snapshots, sampling):
                if task is not None:
                    task.cancel()
                    await asyncio.gather(task, return_exceptions=True)
            if sampling is not None:
                await asyncio.to_thread(self.resources.sample)  # the last one, as a replay's end takes one
            await shadow.close(scenario.replay.timeout_s + 1.0, serving=serving)
            recorded = await channel.close()
            if probe is not None:
                probe.stop()
        if recorded is None:
            say("shadow: the recorder process did not finish in time; what it wrote is kept")
        else:
            for what in ("capture", "legs"):
                w = recorded[what]
                if w["error"] or w["dropped"]:
                    say(f"shadow: {what} writer: dropped {w['dropped']}{'; ' + w['error'] if w['error'] else ''}")
            if recorded["dropped"]:
                say(f"shadow: recorder: dropped {recorded['dropped']}")
        if channel.dropped:
            say(f"shadow: not recorded (the recorder's channel): {channel.dropped}")
        if not serving:
            return finish(shadow.stats, stopped_by[0], recorded)
        try:
            say(f"shadow: the run ended ({stopped_by[0]}); still answering from the baseline, nothing mirrored, "
                "until SIGINT/SIGTERM (--keep-serving)")
            summary = await asyncio.to_thread(finish, shadow.stats, stopped_by[0], recorded)
            await signalled.wait()
        finally:
            await shadow.stop_serving()
        return summary

    async def _snapshots(self, shadow: ShadowApp, channel: RecorderChannel) -> None:
        while True:
            await asyncio.sleep(self.snapshot_every_s)
            cut = await channel.barrier()
            if cut is None:
                self.say("shadow: the recorder did not answer; no snapshot this time")
                continue
            args = {"run_dir": str(self.run_dir), "scenario": str(self.scenario.source), **cut,
                    "capture_recorded": str(self.capture_path), "drops": dict(shadow.stats.drop_reasons),
                    "replay_event": _replay_event(shadow.stats, None),
                    "resources": str(self.resources.path),
                    # off the serving loop: the first call reads the kernel log (dmesg)
                    "resource_events": await asyncio.to_thread(self.resources.events),
                    "reason": f"live shadow still running (snapshot at {time.strftime('%H:%M:%S', time.gmtime())} UTC)"}
            args_path = self.run_dir / ".work" / "snapshot.json"
            args_path.write_text(json.dumps(args))
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "harness.shadow.snapshot",
                                                        str(args_path), stdout=asyncio.subprocess.DEVNULL,
                                                        stderr=asyncio.subprocess.PIPE)
            try:
                _, err = await proc.communicate()
            except asyncio.CancelledError:
                proc.kill()
                await proc.wait()
                raise
            if proc.returncode != 0:
                last = (err.decode(errors="replace").strip().splitlines() or ["?"])[-1]
                self.say(f"shadow: snapshot failed ({last}); the run goes on")
