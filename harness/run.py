"""One replay, end to end: check -> prepare traffic -> replay into the store -> outputs.

This is the only module that knows every stage; each stage only reads what the previous one wrote.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import urlsplit

from . import __version__
from .aa_reference import read_aa_reference
from .crash import attach_log
from .error_kinds import HARNESS_ERROR_TOLERANCE
from .errors import VERDICT_EXIT, HarnessError, ScenarioError, StoreError, TargetUnreachable, TrafficError, UsageError
from .gate_config import unseen_gate_values
from .monitor import ResourceMonitor, TargetProcess
from .scenario import Scenario
from .send_headers import credential_values, expand_env, header_overrides
from .store import RunMeta, RunStore
from .traffic.http_fields import header_problem
from .traffic.prepare import prepare_traffic

if TYPE_CHECKING:
    from .replay.dispatcher import DispatchPlan
    from .traffic.prepare import PreparedTraffic

__all__ = ["run_scenario", "RunResult", "make_run_dir", "check_out_root", "check_targets", "check_send_headers",
           "resource_monitor"]

log = logging.getLogger("harness")


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    verdict: str
    exit_code: int
    summary: dict


def _write_probe(folder: Path) -> None:
    """A full disk or a read-only --out fails here, before any target is sent anything."""
    probe = folder / f".write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"\0" * 65536)
    finally:
        probe.unlink(missing_ok=True)


def _unwritable(out_root: Path, exc: OSError) -> StoreError:
    return StoreError(f"{out_root}: cannot write the run folder there: {exc.strerror or exc}")


def check_out_root(out_root: Path) -> None:
    """--out can hold a run folder (for live shadow, which checks its targets before it makes one): a bad
    --out or a full disk sends nothing to them, not even the check's handshake or HEAD /."""
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        _write_probe(out_root)
    except OSError as exc:
        raise _unwritable(out_root, exc) from None


def make_run_dir(out_root: Path, name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        for i in range(1, 1000):
            run_dir = out_root / (f"{name}-{stamp}" if i == 1 else f"{name}-{stamp}-{i}")
            try:
                run_dir.mkdir()  # atomic: two runs starting in the same second get different folders
                break
            except FileExistsError:
                continue
        _write_probe(run_dir)
    except OSError as exc:
        raise _unwritable(out_root, exc) from None
    return run_dir


def check_targets(scenario: Scenario, timeout_s: float = 2.0) -> dict[str, tuple[str, str]]:
    """Each target accepts a connection and its port speaks what the URL says (harness.replay.wire_probe:
    plain HTTP/1.1, HTTP/2 for gRPC, TLS); an https (grpcs) one completes a TLS handshake as the replay will
    do it (certificate, name, client certificate); else TargetUnreachable naming the cause (exit 4).
    Returns, per version, the certificate pinned for a grpcs target with tls.verify false (PEM, name)."""
    from .replay.tls import check_tls_pinned
    from .replay.wire_probe import probe_grpc, probe_http

    ends = []
    for version in scenario.versions:
        target = scenario.target_for(version)
        parts = urlsplit(target.url)
        secure = parts.scheme in ("https", "grpcs")
        ends.append((version, target, parts, secure, parts.hostname or "127.0.0.1",
                     parts.port or (443 if secure else 80)))
    # Every target accepts a connection before any is sent a byte: a down candidate costs the baseline nothing.
    for version, target, _, _, host, port in ends:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                pass
        except OSError as exc:
            raise TargetUnreachable(f"{version} target {target.url} is unreachable: {exc.strerror or exc}") from None
    pins: dict[str, tuple[str, str]] = {}
    for version, target, parts, secure, host, port in ends:
        if secure:
            named = "baseline" if scenario.replay.mode == "aa" else version  # A/A: the candidate leg is the baseline
            problem, pinned = check_tls_pinned(host, port, target.tls, timeout_s, f"targets.{named}.tls",
                                               pin=parts.scheme == "grpcs")
            if problem is not None:
                raise TargetUnreachable(f"{version} target {target.url}: TLS: {problem}")
            if pinned is not None:
                pins[version] = pinned
            continue
        problem = probe_grpc(host, port, timeout_s) if parts.scheme == "grpc" else probe_http(host, port, timeout_s)
        if problem is not None:
            raise TargetUnreachable(f"{version} target {target.url}: {problem}")
    return pins


def check_send_headers(scenario: Scenario) -> None:
    """The headers the scenario itself adds (replay.headers, targets.*.headers, replay.accept_encoding), checked
    as the capture's are: a name or value no request can carry is one error now, not a failed leg per request.
    A value is checked as sent (`${VAR}` expanded), never quoted: it may be a credential."""
    sources = [("replay.headers", scenario.replay.headers),
               *((f"targets.{v}.headers", scenario.targets[v].headers) for v in scenario.targets),
               ("replay.accept_encoding", {"Accept-Encoding": scenario.replay.accept_encoding})]
    for where, headers in sources:
        for name, value in headers.items():
            try:
                sent = expand_env(value) if value is not None else ""
            except KeyError:  # unset: header_overrides names it (validate checks the value as written)
                sent = value or ""
            problem = header_problem(name, sent)
            if problem is not None:
                raise ScenarioError(f"{scenario.source or scenario.name}: {where}: {problem}")


def _accept_encoding(setting: str, overrides: dict[str, str | None]) -> dict[str, str]:
    """replay.accept_encoding as a header override (none for `captured`, or where headers set it already)."""
    if setting == "captured" or any(k.lower() == "accept-encoding" for k in overrides):
        return {}
    return {"Accept-Encoding": setting}


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).parent)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _setup_log(run_dir: Path, echo: Callable[[str], None]) -> tuple[logging.Handler, Callable[[str], None]]:
    handler = logging.FileHandler(run_dir / "harness.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    def say(msg: str) -> None:
        log.info(msg)
        echo(msg)

    return handler, say


def run_scenario(scenario: Scenario, out_root: Path, *, echo: Callable[[str], None] = print,
                 web_ui: bool = False, web_port: int = 8089, progress_every_s: float = 5.0,
                 pids: dict[str, int] | None = None, processes: int = 0, master: bool = False,
                 expect_workers: int | None = None, master_bind_host: str = "127.0.0.1",
                 master_bind_port: int | None = None) -> RunResult:
    from .outputs import build_outputs
    from .replay.runner import ReplayOptions

    # Everything that can be checked is checked before the first request leaves.
    overrides = header_overrides(scenario)
    check_send_headers(scenario)
    if web_ui:
        _check_port_free("--web-port", "127.0.0.1", web_port, "the web UI")
    if master and master_bind_port:
        _check_port_free("--master-bind-port", master_bind_host, master_bind_port, "the Locust master")
    aa_ref = read_aa_reference(scenario.replay.aa_reference) if scenario.replay.aa_reference else None
    if not scenario.traffic.path.exists():
        raise TrafficError(f"{scenario.traffic.path}: capture file not found")
    run_dir = make_run_dir(out_root, scenario.name)
    handler, say = _setup_log(run_dir, echo)
    work = run_dir / ".work"
    store: RunStore | None = None
    nothing_recorded = False
    announced = False
    try:
        # The folder is named once it is sure to be kept (after the targets' check below): a run that ends
        # before that removes it, and the console must not send anyone looking for it.
        say(f"harness {__version__}: scenario {scenario.name}, mode {scenario.replay.mode}")
        same_target = scenario.self_comparison()
        if same_target:
            say(f"warning: {same_target}")
        prepared = prepare_traffic(scenario, work)
        nothing = prepared.nothing_to_replay()
        if nothing is not None:  # an input error (a typo in replay.allow, a window past the capture), not a HOLD
            raise TrafficError(f"{scenario.source or scenario.name}: {nothing}")
        unseen = unseen_gate_values(scenario.gates, prepared.segment_values(
            {k for g in scenario.gates for k in (g.segment or {})}))
        if unseen:  # such a gate could only end inconclusive, after the whole replay
            raise ScenarioError(f"{scenario.source or scenario.name}: {unseen[0]}")
        say(f"traffic: {prepared.records_read} records read, {prepared.replayed} to replay, "
            f"{sum(prepared.skipped.values())} skipped, {prepared.bad_records} bad; captured span "
            f"{prepared.span_s:.0f} s at speed {scenario.traffic.speed:g} -> about "
            f"{prepared.span_s / scenario.traffic.speed:.0f} s")
        for warning in prepared.warnings:
            say(f"traffic: warning: {warning}")
        store = RunStore(run_dir / "results.duckdb")
        store.create(_run_meta(run_dir.name, scenario, prepared), prepared.schedule_path, prepared.skipped_path,
                     prepared.bad_path)
        if aa_ref is not None:  # judged from this folder alone, whatever happens to the A/A folder later
            store.add_event("aa_reference", json.dumps(aa_ref))
        store.add_event("traffic", json.dumps({
            "records_read": prepared.records_read, "loops": scenario.traffic.loops, "format": prepared.capture_format,
            "span_s": prepared.span_s}))
        for warning in prepared.warnings:  # in the summary's notes too: the report says why the run took so long
            store.add_event("note", f"Traffic: {warning}")
        plan = _dispatch_plan(scenario, prepared.schedule_path, overrides)
        for t in plan.targets:
            if t.tls and t.tls.get("verify") is False:
                say(f"warning: {t.version} target {t.url}: TLS certificates are not verified (tls.verify: false)")
                store.add_event("tls_unverified", t.version)
        # The targets last: an input error found above sends them nothing, not even this check's HEAD /.
        pins = check_targets(scenario)
        if pins:  # the replay's processes trust the certificates pinned just now, without fetching them again
            plan = replace(plan, targets=tuple(
                replace(t, tls={**(t.tls or {}), "pinned_certificate": pins[t.version][0],
                                "pinned_name": pins[t.version][1]}) if t.version in pins else t
                for t in plan.targets))
        say(f"run folder {run_dir}")
        announced = True
        monitor = resource_monitor(scenario, pids or {})
        monitor.find_processes()
        options = ReplayOptions(web_ui=web_ui, web_port=web_port, progress_every_s=progress_every_s)
        stop_rule = _AllowanceStop(scenario) if scenario.replay.stop_early else None
        store.recording(True)
        try:
            if processes > 1 or master:
                from .replay.distributed import run_replay_master

                outcome = run_replay_master(plan, store.sinks(), options, sampler=monitor.sample, log=say,
                                            processes=processes if not master else 0,
                                            expect_workers=expect_workers if master else processes,
                                            bind_host=master_bind_host, bind_port=master_bind_port or _free_port(),
                                            stop_rule=stop_rule)
            else:
                from .replay.runner import run_replay
                from .store_child import writing_in_child

                writing = store
                with writing_in_child(writing, lambda note: _note(writing, say, note)) as child_sinks:
                    outcome = run_replay(plan, child_sinks, options, sampler=monitor.sample, log=say, stop_rule=stop_rule)
        finally:
            store.recording(False)  # what follows (a crashed run's provisional judgement too) may use every core
        for note in [*monitor.notes, *outcome.notes]:
            store.add_event("note", note)
        store.add_event("resource_sources", json.dumps(monitor.sources()))
        status, reason = _finish_requests(store, outcome)
        store.add_event("replay", json.dumps({
            "lag_p50_ms": outcome.lag_p50_ms, "lag_p99_ms": outcome.lag_p99_ms, "lag_bound_ms": scenario.replay.lag_bound_ms,
            "wall_s": outcome.wall_s, "sink_failures": outcome.sink_failures, "last_sink_error": outcome.last_sink_error,
            "dispatched": outcome.stats.dispatched, "skipped_in_flight": outcome.stats.skipped_in_flight,
            "interrupted": outcome.interrupted, "stopped_early": outcome.stats.stopped_early,
            "ended_by": outcome.stats.ended_by}))
        store.finish(status, reason)
        store.close()
        store = None
        summary = build_outputs(run_dir)
        say(f"verdict {summary['verdict']}; report {run_dir / 'gate_report.html'}")
        code = 4 if status != "complete" else VERDICT_EXIT[summary["verdict"]]
        return RunResult(run_dir=run_dir, verdict=summary["verdict"], exit_code=code, summary=summary)
    except BaseException as exc:
        bug = not isinstance(exc, (HarnessError, KeyboardInterrupt, SystemExit))
        if store is not None:
            try:
                store.finish("failed", f"{type(exc).__name__}: {exc}"[:500])
                store.close()
            except Exception:  # noqa: BLE001 - the original error is the one to report
                pass
        log.error("run failed: %s: %s", type(exc).__name__, exc, exc_info=exc if bug else None)
        if bug:  # the CLI names this harness.log; the folder is kept for it
            attach_log(exc, run_dir / "harness.log", written=True)
        # Nothing was sent before the pre-run check of the targets: no half-made run folder is left.
        nothing_recorded = not bug and (isinstance(exc, TargetUnreachable) or not (run_dir / "results.duckdb").exists())
        if not nothing_recorded and not announced:  # kept, e.g. for its harness.log: say where it is
            say(f"run folder {run_dir}")
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
        log.removeHandler(handler)
        handler.close()
        if nothing_recorded:  # e.g. a bad record with on_bad_record: fail: no half-made run folder is left
            shutil.rmtree(run_dir, ignore_errors=True)


def _note(store: RunStore, say: Callable[[str], None], note: str) -> None:
    say(f"note: {note}")
    store.add_event("note", note)


def _run_meta(run_id: str, scenario: Scenario, prepared: PreparedTraffic) -> RunMeta:
    return RunMeta(
        run_id=run_id, scenario=scenario.name, scenario_sha256=scenario.sha256,
        config_json=json.dumps(scenario.stored_config(), default=str), capture_path=str(scenario.traffic.path),
        capture_sha256=prepared.capture_sha256, harness_version=__version__, git_commit=_git_commit(),
        baseline_url=scenario.target_for("baseline").url,
        candidate_url=scenario.target_for("candidate").url if "candidate" in scenario.versions else None,
        mode=scenario.replay.mode, speed=scenario.traffic.speed, segments=prepared.segment_names)


def _dispatch_plan(scenario: Scenario, schedule_path: Path,
                   overrides: dict[str, dict[str, str | None]]) -> DispatchPlan:
    """What the replay sends, where and how; the header overrides' values are the secrets kept out of the legs."""
    from .replay.dispatcher import DispatchPlan, TargetPlan

    secrets = credential_values(overrides)
    targets = tuple(TargetPlan(version=v, url=scenario.target_for(v).url, protocol=scenario.target_for(v).protocol,
                               headers={**_accept_encoding(scenario.replay.accept_encoding, overrides[v]),
                                        **overrides[v]},
                               tls=scenario.target_for(v).tls) for v in scenario.versions)
    return DispatchPlan(
        schedule_path=schedule_path, targets=targets, speed=scenario.traffic.speed,
        timeout_s=scenario.replay.timeout_s, connect_timeout_s=scenario.replay.connect_timeout_s,
        max_in_flight=scenario.replay.max_in_flight, max_response_bytes=scenario.replay.max_response_bytes,
        prediction_path=scenario.output.prediction, confidence_path=scenario.output.confidence,
        schema=scenario.output.schema, route_schemas=scenario.output.route_schemas,
        max_duration_s=scenario.replay.max_duration_s, secrets=secrets, detectors=scenario.output.detectors,
        rows=scenario.output.rows)


class _AllowanceStop:
    """The early stop (replay.stop_early): an anytime-valid e-process on the paired error excess against
    the allowance of the scenario's error-rate gate (`maximum_increase`, or an absolute `maximum`, which an
    excess beyond it alone already breaks), so that a candidate within its allowance is stopped at most
    alpha of the time. Warm-up pairs are not counted (`warmup`, read by the watch)."""

    def __init__(self, scenario: Scenario) -> None:
        self.alpha = scenario.analysis.alpha
        self.warmup = scenario.traffic.warmup_requests
        gate = next((g for g in scenario.gates if g.metric == "error_rate" and g.segment is None
                     and g.severity == "blocking" and g.direction == "max"), None)
        self.allowance = gate.threshold if gate else 0.0
        self.against = (f"the {gate.name} gate's allowance of {100 * gate.threshold:g} points" if gate
                        else "the baseline's (no blocking error_rate gate: allowance 0)")

    def __call__(self, pairs: int, b: int, c: int) -> str | None:
        from .analysis.stats import eprocess_paired_excess

        result = eprocess_paired_excess(pairs, b, c, self.allowance, alpha=self.alpha)
        if not result.reject:
            return None
        return (f"after {pairs} pairs the candidate's error excess is beyond {self.against} "
                f"({c} candidate-only vs {b} baseline-only errors; e-value {result.e_value:.0f} >= 1/alpha = "
                f"{1 / self.alpha:.0f}, valid at any stopping time)")


def _check_port_free(flag: str, host: str, port: int, who: str) -> None:
    """A taken port, found before the run folder is made: Locust's web server binds in the background (it
    logged a traceback and the run went on without the UI asked for), and its master's bind raised one."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the servers themselves do
        try:
            s.bind((host, port))
        except OSError as exc:
            raise UsageError(f"{flag} {port}: {who} cannot listen on {host}:{port} ({exc.strerror}); "
                             "choose another port") from None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def resource_monitor(scenario: Scenario, pids: dict[str, int]) -> ResourceMonitor:
    """The resource monitor of a run's targets (an A/A run's one server once)."""
    targets = []
    seen_urls = set()
    for v in scenario.versions:
        t = scenario.target_for(v)
        if t.url in seen_urls:  # A/A: one server, sampled once
            continue
        seen_urls.add(t.url)
        targets.append(TargetProcess(version=v, url=t.url, pid=pids.get(v, t.pid), pid_file=t.pid_file,
                                     metrics_url=t.metrics_url, metric_name=t.memory_metric,
                                     oom_counter=t.oom_counter))
    return ResourceMonitor(targets)


def _finish_requests(store: RunStore, outcome: object) -> tuple[str, str | None]:
    """Requests that were scheduled but not sent move from `requests` to `skipped`, each with its reason,
    so that captured = replayed + skipped + bad and legs = 2 x requests hold at the end of every run."""
    lost = [json.loads(d) for d in store.event_details("worker_lost")]
    store.move_unsent_to_skipped(_unsent_reason(outcome),
                                 lost_shards=[(int(x["shard_count"]), int(x["index"])) for x in lost])
    interrupted = getattr(outcome, "interrupted", None)
    stopped = getattr(outcome.stats, "ended_by", None)  # type: ignore[attr-defined]
    if interrupted:
        return "incomplete", f"interrupted by {interrupted}"
    if getattr(outcome, "sink_failures", 0) and getattr(outcome, "last_sink_error", None):
        return "incomplete", f"results could not all be written: {outcome.last_sink_error}"  # type: ignore[attr-defined]
    if lost:
        _note_half_pairs(store, lost)
        return "incomplete", f"{len(lost)} worker(s) lost during the replay"
    harness_errors, legs = store.count_legs_by_harness_error()
    if legs and harness_errors > HARNESS_ERROR_TOLERANCE * legs:
        return "incomplete", (f"{harness_errors} of {legs} legs ({100 * harness_errors / legs:.2f} %) failed inside "
                              f"harness (harness_error, detail in legs.error_detail), above the "
                              f"{100 * HARNESS_ERROR_TOLERANCE:g} % tolerance")
    if stopped:
        return "complete", stopped
    return "complete", None


def _note_half_pairs(store: RunStore, lost: list[dict[str, Any]]) -> None:
    """A killed worker leaves some requests with fewer legs than versions: one leg was in flight, or in the
    spool batch it had not written yet. They stay (what was recorded is kept); the note says where the
    accounting's shortfall comes from."""
    for x in lost:
        index = int(x["index"])
        short = store.count_short_requests(int(x["shard_count"]), index)
        if short:
            store.add_event("note", f"worker-{index} was lost: {short} of its requests kept fewer legs than "
                                    f"versions (the missing legs were in flight or not yet in its spool file)")


def _unsent_reason(outcome: object) -> str:
    stats = outcome.stats  # type: ignore[attr-defined]
    if getattr(outcome, "interrupted", None):
        return f"not sent: run interrupted by {outcome.interrupted}"  # type: ignore[attr-defined]
    if stats.ended_by:
        return f"not sent: {stats.ended_by}"
    return "not sent"

