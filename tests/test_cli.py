"""The command line: one-line errors with the documented exit codes; results checked through the
library and the DuckDB file, not by scraping text."""
from __future__ import annotations

import argparse
import json
import socket
from pathlib import Path

import duckdb
import pytest

from harness.cli import build_parser, main
from harness.traffic.inspect import inspect_capture
from harness.traffic.readers import iter_records
from harness.traffic.record import CapturedRequest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "captured_traffic" / "fraud_sample.jsonl"
HAR = REPO / "tests" / "data" / "har" / "har_mitmproxy_export_post_form.har"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("harness: error:") and "Traceback" not in err, err
    return lines[0]


def scenario(tmp_path: Path, body: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(body)
    return p


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_missing_scenario_exits_3(capsys, tmp_path) -> None:
    code, _, err = run(capsys, "run", str(tmp_path / "nope.yaml"))
    assert code == 3 and "scenario file not found" in one_line_error(err)


def test_unknown_gate_exits_3(capsys, tmp_path) -> None:
    p = scenario(tmp_path, f"""name: t
traffic: {{path: {SAMPLE}}}
targets: {{baseline: {{url: "http://127.0.0.1:1"}}, candidate: {{url: "http://127.0.0.1:2"}}}}
promotion_gates: {{latency_p97_ms: {{maximum_regression_percent: 10}}}}
""")
    code, _, err = run(capsys, "validate", str(p))
    assert code == 3 and "unknown gate 'latency_p97_ms'" in one_line_error(err)


@pytest.mark.integration
def test_unreachable_target_exits_4_before_sending(capsys, tmp_path) -> None:
    p = scenario(tmp_path, f"""name: t
traffic: {{path: {SAMPLE}}}
targets: {{baseline: {{url: "http://127.0.0.1:{closed_port()}"}}, candidate: {{url: "http://127.0.0.1:{closed_port()}"}}}}
""")
    code, out, err = run(capsys, "run", str(p), "--out", str(tmp_path / "r"))
    assert code == 4 and "unreachable" in one_line_error(err)
    # the folder made for the run is removed: the console must not name it
    assert list((tmp_path / "r").iterdir()) == [] and "run folder" not in out, out


@pytest.mark.integration
def test_a_kept_run_folder_is_announced(tmp_path) -> None:
    """A run that gets past the targets' check keeps its folder, and says where it is before the replay."""
    from fault_server import FaultServer
    from replay_helpers import write_capture

    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    with FaultServer() as server:
        cap = write_capture(tmp_path / "c.jsonl", [
            {"ts": 1_700_000_000.0 + i / 100, "method": "POST", "path": "/ok", "headers": {}, "body": {"i": i}}
            for i in range(5)])
        said: list[str] = []
        result = run_scenario(scenario_from_dict({
            "name": "kept", "traffic": {"path": str(cap), "speed": 100},
            "targets": {"baseline": {"url": server.url}, "candidate": {"url": server.url + "/c"}},
            "replay": {"allow": ["POST /*"]}}), tmp_path / "r", echo=said.append)
    assert result.run_dir.is_dir() and f"run folder {result.run_dir}" in said, said
    assert said.index(f"run folder {result.run_dir}") < next(i for i, m in enumerate(said) if m.startswith("done:"))



@pytest.mark.integration
def test_port_in_use_exits_3_before_anything(capsys, tmp_path) -> None:
    p = scenario(tmp_path, f"""name: t
traffic: {{path: {SAMPLE}}}
targets: {{baseline: {{url: "http://127.0.0.1:{closed_port()}"}}, candidate: {{url: "http://127.0.0.1:{closed_port()}"}}}}
""")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = run(capsys, "run", str(p), "--out", str(tmp_path / "r"), "--web-ui", "--web-port", str(port))
        assert code == 3 and f"--web-port {port}" in one_line_error(err)
        code, _, err = run(capsys, "run", str(p), "--out", str(tmp_path / "r"), "--master", "--expect-workers", "1", "--master-bind-port",
                           str(port))
        assert code == 3 and f"--master-bind-port {port}" in one_line_error(err)
    assert not (tmp_path / "r").exists()  # checked before the run folder is made

@pytest.mark.parametrize(("cmd", "after"), [(["report"], []), (["schedule"], []), (["query"], ["select 1"]),
                                            (["scores", "import"], ["s.csv"])])
def test_run_dir_that_is_not_a_run_exits_3_naming_it(capsys, tmp_path, cmd, after) -> None:
    """A missing folder, or one without results.duckdb, is the user's input (3), not an incomplete run (4)."""
    missing, empty = tmp_path / "absent", tmp_path / "empty"
    empty.mkdir()
    for run_dir, says in ((missing, "no such folder"), (empty, "not a run folder (no results.duckdb in it)")):
        code, _, err = run(capsys, *cmd, str(run_dir), *after)
        assert code == 3 and f"{run_dir}: {says}" in one_line_error(err), err


def test_bad_usage_exits_3(capsys) -> None:
    code, _, err = run(capsys, "query")
    assert code == 3 and "the following arguments are required" in one_line_error(err)


@pytest.mark.parametrize("option, value", [("--speed", "0"), ("--speed", "-1"), ("--speed", "nan"),
                                           ("--max-requests", "0"), ("--max-in-flight", "0"),
                                           ("--progress-every", "0")])
def test_run_overrides_out_of_range_exit_3_before_anything(capsys, tmp_path, option, value) -> None:
    # The overrides skip the scenario's schema: --speed 0 or nan crashed (exit 4), --speed -1 replayed everything at
    # once and then could not judge its own run, --progress-every 0 printed progress lines in a busy loop.
    demo = REPO / "scenarios" / "fraud_demo.yaml"
    for cmd in (["run", str(demo)], ["demo"]):
        if option in ("--max-in-flight", "--progress-every") and cmd == ["demo"]:
            continue
        code, _, err = run(capsys, *cmd, option, value, "--out", str(tmp_path / "out"))
        assert code == 3 and option in one_line_error(err) and not (tmp_path / "out").exists(), err


def test_validate_lists_the_gates(capsys) -> None:
    code, out, _ = run(capsys, "validate", str(REPO / "scenarios" / "fraud_demo.yaml"))
    assert code == 0 and "latency_p95_ms: latency_ms p95 <= +10 % vs baseline (blocking)" in out


@pytest.mark.integration
def test_traffic_inspect_counts_and_bad_lines(capsys, tmp_path) -> None:
    png = tmp_path / "rate.png"
    code, out, _ = run(capsys, "traffic", "inspect", str(SAMPLE), "--scenario", str(REPO / "scenarios" / "fraud_demo.yaml"),
                       "--plot", str(png))
    assert code == 0 and png.read_bytes()[:4] == b"\x89PNG"
    ins = inspect_capture(SAMPLE, scenario_path=REPO / "scenarios" / "fraud_demo.yaml")
    assert ins.records == 4000 and ins.bad == 6 and [ln for ln, _ in ins.bad_listed] == [240, 841, 1562, 2203, 2924, 3645]
    assert ins.segments["tenant"]["enterprise"] > 1000 and ins.out_of_order > 0
    assert 200 < ins.span_s < 260 and ins.rate_stats()["burstiness"] > 2


def test_traffic_inspect_plot_that_cannot_be_written_is_exit_3(capsys, tmp_path) -> None:
    for png, says in ((tmp_path / "no-such-folder" / "rate.png", "No such file or directory"),
                      (tmp_path / "rate.txt", "is not supported")):
        code, _, err = run(capsys, "traffic", "inspect", str(HAR), "--plot", str(png))
        assert code == 3 and f"{png}: cannot write the plot" in one_line_error(err) and says in err, err


@pytest.mark.parametrize("to", ["jsonl", "parquet"])
def test_traffic_convert_round_trips(capsys, tmp_path, to) -> None:
    out = tmp_path / f"c.{to}"
    code, _, _ = run(capsys, "traffic", "convert", str(HAR), "--to", to, "-o", str(out))
    assert code == 0
    before = [r for r in iter_records(HAR) if isinstance(r, CapturedRequest)]
    after = [r for r in iter_records(out) if isinstance(r, CapturedRequest)]
    assert [(r.method, r.path, r.body, round(r.ts, 6)) for r in after] == \
        [(r.method, r.path, r.body, round(r.ts, 6)) for r in before]


def test_traffic_convert_to_stdout(capsys) -> None:
    code, out, _ = run(capsys, "traffic", "convert", str(HAR), "--to", "jsonl", "-o", "-")
    assert code == 0 and [json.loads(x)["method"] for x in out.splitlines()] == ["GET", "POST"]


def _commands(parser: argparse.ArgumentParser, prefix: str = "harness") -> dict[str, argparse.ArgumentParser]:
    """Every command and subcommand parser, by its full name ("harness traffic convert")."""
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                assert helps.get(name), f"{prefix} {name} has no help line"
                out[f"{prefix} {name}"] = sub
                out.update(_commands(sub, f"{prefix} {name}"))
    return out


def test_every_command_has_help_and_is_in_the_readme() -> None:
    readme = (REPO / "README.md").read_text()
    commands = _commands(build_parser())
    assert {"harness run", "harness traffic convert", "harness scores import"} <= set(commands)
    for name, parser in commands.items():
        top = " ".join(name.split()[:2])
        assert top in readme, f"`{top}` is not in the README"
        text = " ".join(parser.format_help().split())  # wrapped lines joined
        assert parser.description, f"{name} --help does not say what the command does"
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest}: no help"
            if action.option_strings and action.default not in (None, False):
                assert f"(default: {action.default})" in text or "default:" in (action.help or ""), \
                    f"{name} {action.option_strings[0]}: the default {action.default!r} is not shown"
    for name in ("harness run", "harness demo", "harness report"):
        codes = commands[name].format_help().split("exit codes:", 1)[1]
        assert [ln.split()[0] for ln in codes.strip().splitlines()] == ["0", "1", "2", "3", "4"], name


def test_query_formats(capsys, tmp_path) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    con = duckdb.connect(str(run_dir / "results.duckdb"))
    con.execute("create table legs as select * from (values ('a', 1.5), ('b', 2.0)) t(version, latency_ms)")
    con.close()
    code, out, _ = run(capsys, "query", str(run_dir), "select * from legs order by 1", "--format", "json")
    assert code == 0 and json.loads(out) == [{"version": "a", "latency_ms": 1.5}, {"version": "b", "latency_ms": 2.0}]
    code, out, _ = run(capsys, "query", str(run_dir), "select * from legs order by 1", "--format", "csv")
    assert out.splitlines() == ["version,latency_ms", "a,1.5", "b,2.0"]
    code, out, _ = run(capsys, "query", str(run_dir), "select count(*) as n from legs")
    assert code == 0 and "(1 row)" in out
    code, _, err = run(capsys, "query", str(run_dir), "select nope from legs")
    assert code == 3 and "query failed" in one_line_error(err)
    for empty in ("", "  ", "-- a comment", ";"):  # no statement: a usage error, not an internal one (exit 4)
        code, _, err = run(capsys, "query", str(run_dir), empty)
        assert code == 3 and "no SQL statement" in one_line_error(err)
    # NaN and the infinities are null in JSON (Python's json writes NaN, which JSON parsers refuse)
    code, out, _ = run(capsys, "query", str(run_dir), "select 'nan'::double as x, ['inf'::double, 1.0] as y, "
                                                      "{'z': '-inf'::double} as s", "--format", "json")
    assert code == 0 and "NaN" not in out and "Infinity" not in out
    assert json.loads(out) == [{"x": None, "y": [None, 1.0], "s": {"z": None}}]


def test_readme_scenario_reference_is_a_valid_scenario() -> None:
    import jsonschema
    import yaml

    from harness.gate_config import parse_gates
    from harness.scenario import scenario_json_schema

    text = (REPO / "README.md").read_text().split("### Scenario", 1)[1]
    block = text.split("```yaml", 1)[1].split("```", 1)[0]
    doc = yaml.safe_load(block)
    errors = [e.message for e in jsonschema.Draft202012Validator(scenario_json_schema()).iter_errors(doc)]
    assert not errors
    assert len(parse_gates(doc["promotion_gates"], "README")) == 6
