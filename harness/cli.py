"""The command line: parse, make one library call, format the result. No logic of its own.

Exit codes: 0 PROMOTE, 1 BLOCK, 2 HOLD, 3 invalid usage/scenario/input, 4 the run could not be
carried out (targets unreachable, interrupted, internal error)."""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable, Sequence

from . import __version__
from .errors import VERDICT_EXIT, HarnessError, UsageError

__all__ = ["main", "build_parser"]



EXIT_CODES = """exit codes:
  0  PROMOTE: every blocking gate passes
  1  BLOCK: a blocking gate failed
  2  HOLD: inconclusive, not enough evidence
  3  invalid usage, scenario or input
  4  the run could not be carried out (targets unreachable, interrupted, internal error)"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs as written; every option with a default says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and "default" not in text and action.default not in (None, False)
                and action.default is not argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"{self.prog}: {message}")


def _run_dir(text: str) -> Path:
    """RUN_DIR as given: a missing folder, or one `harness run` did not write, is the user's input (exit 3),
    not a run that could not be carried out (exit 4, which a missing results.duckdb would give further in)."""
    path = Path(text)
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{path}: {'not a folder' if path.exists() else 'no such folder'} "
                                         "(expected a run folder written by `harness run`)")
    if not (path / "results.duckdb").is_file():
        raise argparse.ArgumentTypeError(f"{path}: not a run folder (no results.duckdb in it)")
    return path


def _above_zero(text: str) -> float:
    """A speed or an interval: a finite number above 0 (the scenario's own limits; an override is not checked
    against the scenario's schema, and 0, a negative or NaN speed crashed or replayed everything at once)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} is not a number above 0")
    return value


def _at_least_one(text: str) -> int:
    """A count the scenario's schema bounds at 1 (traffic.max_requests, replay.max_in_flight)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a whole number of at least 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="harness", description="Paired shadow replay of captured traffic against a baseline and a "
                "candidate model; per-segment judgement, promotion gates, gate report and canary schedule.")
    p.add_argument("--version", action="version", version=f"harness {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    d = sub.add_parser("demo", help="start the demo model servers, replay the sample capture, write a run folder",
                       epilog=EXIT_CODES)
    d.add_argument("--clean", action="store_true", help="use candidate-clean (no planted flaws)")
    d.add_argument("--out", type=Path, default=Path("reports"), help="folder for run folders (default: reports)")
    d.add_argument("--speed", type=_above_zero, help="replay speed factor (default: the scenario's)")
    d.add_argument("--max-requests", type=_at_least_one, help="replay at most this many requests")
    d.set_defaults(func=_demo)

    r = sub.add_parser("run", help="replay a scenario against its targets and judge the candidate",
                       epilog=EXIT_CODES)
    r.add_argument("scenario", type=Path, help="the scenario YAML file (see the README's Scenario section)")
    r.add_argument("--out", type=Path, default=Path("reports"), help="folder for run folders (default: reports)")
    r.add_argument("--speed", type=_above_zero, help="override traffic.speed")
    r.add_argument("--max-requests", type=_at_least_one, help="override traffic.max_requests")
    r.add_argument("--mode", choices=["paired", "aa", "baseline-only"], help="override replay.mode")
    r.add_argument("--max-in-flight", type=_at_least_one, help="override replay.max_in_flight")
    r.add_argument("--web-ui", action="store_true", help="serve Locust's web UI while replaying")
    r.add_argument("--web-port", type=int, default=8089, help="port of the web UI on 127.0.0.1")
    r.add_argument("--progress-every", type=_above_zero, default=5.0, metavar="S", help="progress line every S seconds")
    r.add_argument("--processes", type=int, default=0, metavar="N",
                   help="replay with N local Locust worker processes (Locust master/worker on 127.0.0.1)")
    r.add_argument("--master", action="store_true", help="be a Locust master for workers on other machines")
    r.add_argument("--expect-workers", type=int, metavar="N", help="with --master: wait for N workers")
    r.add_argument("--master-bind-host", default="127.0.0.1", help="with --master: address to listen on")
    r.add_argument("--master-bind-port", type=int, default=5557, help="with --master: port to listen on")
    r.set_defaults(func=_run)

    w = sub.add_parser("worker", help="be a Locust worker for a `harness run --master` (or --processes) master")
    w.add_argument("--master-host", default="127.0.0.1", help="address of the master")
    w.add_argument("--master-port", type=int, default=5557, help="port of the master")
    w.set_defaults(func=_worker)

    rep = sub.add_parser("report", help="rebuild summary.json, gate_report.html, schedule and junit.xml from "
                         "results.duckdb", epilog=EXIT_CODES)
    rep.add_argument("run_dir", type=_run_dir, help="a run folder written by `harness run`")
    rep.set_defaults(func=_report)

    s = sub.add_parser("schedule", help="print the canary schedule, or an export of it")
    s.add_argument("run_dir", type=_run_dir, help="a run folder written by `harness run`")
    s.add_argument("--format", choices=["yaml", "argo", "flagger", "istio"], default="yaml",
                   help="the schedule itself, or an Argo Rollouts, Flagger or Istio export")
    s.add_argument("--force", action="store_true",
                   help="export manifests even when the verdict is not PROMOTE (marked harness/forced-export)")
    s.set_defaults(func=_schedule)

    q = sub.add_parser("query", help="run SQL against a run's results.duckdb")
    q.add_argument("run_dir", type=_run_dir, help="a run folder written by `harness run`")
    q.add_argument("sql", help="the query; tables: runs, requests, legs, resources, events, skipped, bad_records, "
                   "scores; view: pairs")
    q.add_argument("--format", choices=["table", "csv", "json"], default="table", help="output format")
    q.set_defaults(func=_query)

    v = sub.add_parser("validate", help="check a scenario, its files and its gates without sending anything")
    v.add_argument("scenario", type=Path, help="the scenario YAML file")
    v.set_defaults(func=_validate)

    t = sub.add_parser("traffic", help="inspect or convert captured traffic")
    tsub = t.add_subparsers(dest="traffic_command", required=True, parser_class=_Parser)
    ti = tsub.add_parser("inspect", help="records, time span, rate, segments, sizes, bad records")
    ti.add_argument("file", type=Path, help="a capture: .jsonl[.gz], .csv, .parquet, .har or .gor")
    ti.add_argument("--format", dest="fmt", help="capture format (default: from the extension)")
    ti.add_argument("--scenario", type=Path, help="take segments from this scenario")
    ti.add_argument("--plot", type=Path, metavar="PNG", help="write the rate over time as a PNG")
    ti.set_defaults(func=_inspect)
    tc = tsub.add_parser("convert", help="convert a capture to the JSONL capture format or Parquet")
    tc.add_argument("file", type=Path, help="a capture: .jsonl[.gz], .csv, .parquet, .har or .gor")
    tc.add_argument("--to", choices=["jsonl", "parquet"], required=True, help="output format")
    tc.add_argument("--format", dest="fmt", help="input format (default: from the extension)")
    tc.add_argument("-o", "--output", help="output path (default: beside FILE; '-' for standard output)")
    tc.add_argument("--keep-secrets", action="store_true",
                    help="copy credentials (Authorization, cookies, API keys, credential-like query parameters and "
                    "JSON fields) as captured; by default they are masked as before a replay")
    tc.set_defaults(func=_convert)

    cap = sub.add_parser("capture", help="a reverse proxy that writes the traffic passing through it as a capture")
    cap.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="address to serve on (default: 127.0.0.1:8080)")
    cap.add_argument("--upstream", metavar="URL", help="the model server, e.g. http://127.0.0.1:8000")
    cap.add_argument("--out", default="captured_traffic/capture-%Y%m%dT%H.jsonl.gz", metavar="PATTERN",
                     help="output files, a strftime pattern in UTC; .gz compresses (default: %(default)s)")
    cap.add_argument("--scenario", help="take redaction rules (traffic.redact) and segments from this scenario")
    cap.add_argument("--sample", type=float, default=1.0, metavar="FRACTION", help="keep this fraction of the requests (default: 1.0)")
    cap.add_argument("--seed", type=int, default=0, help="seed of the sampling draws (default: 0)")
    cap.add_argument("--segment", help="with --min-per-segment: the scenario's segment to stratify by")
    cap.add_argument("--min-per-segment", type=int, default=0, metavar="N",
                     help="keep at least the first N requests of each value of --segment (default: 0)")
    cap.add_argument("--max-body-bytes", type=int, default=1 << 20,
                     help="bodies kept in the capture up to this size, forwarded whole (default: 1048576)")
    cap.add_argument("--rotate-mb", type=float, help="start a new file when the current one reaches this size")
    cap.add_argument("--timeout", type=float, default=60.0, metavar="S", help="upstream read timeout (default: 60.0)")
    cap.add_argument("--sink", action="store_true",
                     help="also receive KServe inference-logger CloudEvents on POST /kserve-logger")
    cap.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until stopped)")
    cap.add_argument("--keepalive-timeout", type=float, default=75.0, metavar="S",
                     help="close a client's keep-alive connection after S seconds idle; 0: never (default: 75.0)")
    cap.set_defaults(func=_capture)

    sh = sub.add_parser("shadow", help="live shadow: answer from the baseline, copy to the candidate, judge as a replay")
    sh.add_argument("scenario", type=Path, help="the scenario YAML file: targets, replay.allow, output, gates")
    sh.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                    help="address the users' traffic comes to (default: 127.0.0.1:8080)")
    sh.add_argument("--out", type=Path, default=Path("reports"), help="folder for run folders (default: reports)")
    sh.add_argument("--duration", type=float, metavar="S", help="stop after S seconds (default: until SIGINT/SIGTERM)")
    sh.add_argument("--max-requests", type=int, metavar="N", help="stop after mirroring N requests")
    sh.add_argument("--keep-serving", action="store_true",
                    help="at --duration or --max-requests, stop mirroring and write the run folder but keep answering "
                         "from the baseline until SIGINT/SIGTERM (a proxy in production's data path)")
    sh.add_argument("--snapshot-every", type=float, default=30.0, metavar="S",
                    help="refresh the run folder every S seconds while running, for `harness report`; 0: never "
                         "(default: 30.0)")
    sh.add_argument("--keepalive-timeout", type=float, default=75.0, metavar="S",
                    help="close a client's keep-alive connection after S seconds idle; 0: never (default: 75.0)")
    sh.set_defaults(func=_shadow)

    sc = sub.add_parser("scores", help="review or business scores")
    ssub = sc.add_subparsers(dest="scores_command", required=True, parser_class=_Parser)
    si = ssub.add_parser("import", help="join scores (CSV or Parquet: request_id or captured_request_id, "
                         "version, score) into a run")
    si.add_argument("run_dir", type=_run_dir, help="a run folder written by `harness run`")
    si.add_argument("file", type=Path, help="CSV or Parquet with columns request_id (harness's) or "
                    "captured_request_id (the capture's), version (baseline or candidate) and score")
    si.set_defaults(func=_scores_import)
    _describe(p)
    return p


def _describe(parser: argparse.ArgumentParser) -> None:
    """`harness CMD --help` opens with the line `harness --help` lists for CMD."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                sub.description = sub.description or helps.get(name)
                _describe(sub)


def _print_verdict(summary: dict[str, Any], run_dir: Path) -> None:
    try:
        _write_verdict(summary, run_dir)
    except BrokenPipeError:  # `harness run ... | head`: the verdict is still the exit code
        _stdout_to_devnull()


def _write_verdict(summary: dict[str, Any], run_dir: Path) -> None:
    if summary["verdict"] == "INCOMPLETE":  # no promote/block line that a script could grep
        run = summary["run"]
        print(f"run incomplete ({run.get('status_reason') or run.get('status')}): no verdict, exit 4")
        print(f"provisional judgement of the legs that completed: {summary.get('provisional_verdict')}")
    else:
        print(f"verdict: {summary['verdict']}")
    for e in (summary.get("explanations") or [])[:10]:
        print(f"  {'WHERE' if e['explains'] else 'ALSO'}: {e['text']}")
    # the segments that explain the regressions first; those a stronger segment explains after them
    failing = sorted((g for g in summary["gates"] if g["status"] == "fail"), key=lambda g: bool(g.get("explained_by")))
    for g in failing[:20]:
        print(f"  FAIL {g['name']} [{g['segment'] or 'overall'}]: {g['reason']}")
    if len(failing) > 20:
        print(f"  ... and {len(failing) - 20} more failing gate results (see summary.json)")
    if "HOLD" in (summary["verdict"], summary.get("provisional_verdict")):
        for reason in summary["verdict_reasons"][:10]:
            print(f"  INCONCLUSIVE: {reason}")
    for note in summary.get("notes", []):
        print(f"  note: {note}")
    print(f"report: {run_dir / 'gate_report.html'}")


def _demo(args: argparse.Namespace) -> int:
    from .demo.launcher import run_demo

    result = run_demo(clean=args.clean, out_root=args.out, speed=args.speed, max_requests=args.max_requests)
    _print_verdict(result.summary, result.run_dir)
    return result.exit_code


def _run(args: argparse.Namespace) -> int:
    from .run import run_scenario
    from .scenario import load_scenario

    scenario = load_scenario(args.scenario).with_overrides(
        speed=args.speed, max_requests=args.max_requests, mode=args.mode, max_in_flight=args.max_in_flight)
    if args.master and not args.expect_workers:
        raise UsageError("harness run: --master needs --expect-workers N")
    if args.processes < 0:
        raise UsageError("harness run: --processes must be >= 0")
    result = run_scenario(scenario, args.out, web_ui=args.web_ui, web_port=args.web_port,
                          progress_every_s=args.progress_every, processes=args.processes, master=args.master,
                          expect_workers=args.expect_workers, master_bind_host=args.master_bind_host,
                          master_bind_port=args.master_bind_port if args.master else None)
    _print_verdict(result.summary, result.run_dir)
    return result.exit_code


def _worker(args: argparse.Namespace) -> int:
    from .replay.distributed import run_worker

    return run_worker(args.master_host, args.master_port)


def _report(args: argparse.Namespace) -> int:
    from .outputs import build_outputs

    summary = build_outputs(args.run_dir)
    _print_verdict(summary, args.run_dir)
    if summary["run"].get("status") != "complete":
        return 4
    return VERDICT_EXIT[summary["verdict"]]


def _schedule(args: argparse.Namespace) -> int:
    from .outputs import schedule_for
    from .schedule import export_refusal, export_schedule

    schedule = schedule_for(args.run_dir)
    refusal = export_refusal(schedule, args.format)
    if refusal is not None and not args.force:
        raise refusal
    print(export_schedule(schedule, args.format, force=args.force), end="")
    return 0


def _query(args: argparse.Namespace) -> int:
    from .query import format_result, run_query

    print(format_result(run_query(args.run_dir, args.sql), args.format), end="")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from .validate import validate_scenario

    for line in validate_scenario(args.scenario):
        print(line)
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from .traffic.inspect import format_inspection, inspect_capture

    report = inspect_capture(args.file, fmt=args.fmt, scenario_path=args.scenario, plot=args.plot)
    print(format_inspection(report), end="")
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .traffic.convert import convert_capture

    out = convert_capture(args.file, to=args.to, fmt=args.fmt, output=args.output, keep_secrets=args.keep_secrets)
    if out is not None:
        print(f"wrote {out}", file=sys.stderr)
    return 0


def _capture(args: argparse.Namespace) -> int:
    from .capture.proxy import make_options, run_capture, summary_lines

    stats = run_capture(make_options(
        listen=args.listen, upstream=args.upstream, out=args.out, scenario_path=args.scenario,
        sample_fraction=args.sample, seed=args.seed, segment=args.segment, min_per_segment=args.min_per_segment,
        max_body_bytes=args.max_body_bytes, rotate_mb=args.rotate_mb, timeout_s=args.timeout, sink=args.sink,
        duration_s=args.duration, keepalive_timeout_s=args.keepalive_timeout))
    for line in summary_lines(stats):
        print(line)
    return 4 if stats.error else 0


def _shadow(args: argparse.Namespace) -> int:
    from .scenario import load_scenario
    from .shadow.run import run_shadow

    result = run_shadow(load_scenario(args.scenario), args.listen, args.out, duration_s=args.duration,
                        max_requests=args.max_requests, snapshot_every_s=args.snapshot_every,
                        keepalive_timeout_s=args.keepalive_timeout, keep_serving=args.keep_serving)
    _print_verdict(result.summary, result.run_dir)
    return result.exit_code


def _scores_import(args: argparse.Namespace) -> int:
    from .scores import import_scores

    n = import_scores(args.run_dir, args.file)
    print(f"imported {n} scores into {args.run_dir / 'results.duckdb'}; run `harness report {args.run_dir}` to re-judge")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args: argparse.Namespace | None = None
    previous = _catch_interrupts()
    try:
        args = parser.parse_args(argv)
        func: Callable[[argparse.Namespace], int] = args.func
        return func(args)
    except HarnessError as exc:
        print(f"harness: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("harness: interrupted", file=sys.stderr)
        return 4
    except BrokenPipeError:
        # The reader of standard output went away (`harness traffic convert ... -o - | head`): it has read
        # what it wanted, as with any Unix tool.
        _stdout_to_devnull()
        return 0
    except Exception as exc:  # noqa: BLE001 - what an interrupt broke on its way (a DuckDB query it cut) is the interrupt
        if _interrupted(exc):
            print("harness: interrupted", file=sys.stderr)
            return 4
        return _crashed(exc, args)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _catch_interrupts() -> dict[int, Any]:
    """SIGINT and SIGTERM raise KeyboardInterrupt wherever harness is (the replay's own handlers take over
    while it sends). SIGTERM had no handler outside the replay: it killed the judging of a run unseen (exit
    143). Returns the handlers replaced (none where this is not the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    # a signal the caller ignores (a job started with nohup, SIGINT ignored in the background) stays ignored
    return {signum: signal.signal(signum, signal.default_int_handler) for signum in (signal.SIGINT, signal.SIGTERM)
            if signal.getsignal(signum) is not signal.SIG_IGN}


def _interrupted(exc: BaseException) -> bool:
    """Whether an interrupt is behind the error: one that lands inside a DuckDB query cuts its connection,
    and what surfaces is a later query's "Connection already closed", with the KeyboardInterrupt as its
    context; it was reported as an internal error."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _crashed(exc: Exception, args: argparse.Namespace | None) -> int:
    """A bug is exit 4 with its traceback in harness.log, never exit 1."""
    from .crash import CRASH_EXIT, record_crash

    folder = getattr(args, "run_dir", None) or getattr(args, "out", None)
    print(record_crash(exc, folder), file=sys.stderr)
    return CRASH_EXIT


def _stdout_to_devnull() -> None:
    """After a broken pipe: the interpreter's last flush of stdout at exit must not raise again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
