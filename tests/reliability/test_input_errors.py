"""Input errors through the real command line. Each is one line on stderr that names the
problem (file, key or URL), no traceback, exit 3 (invalid usage, scenario or input) or 4 (the run could
not be carried out), as DESIGN.md says. Fuzzed captures never crash `harness traffic inspect`.

The command lines run as subprocesses, all started at once (each is a fresh interpreter; together they
take a few seconds), against a fault server in this process that counts what reaches it."""
from __future__ import annotations

import base64
import contextlib
import gzip
import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fault_server import FaultServer
from reliability_kit import HarnessProc, closed_port, records, write_jsonl, write_scenario

pytestmark = pytest.mark.integration


def _cases(tmp: Path, url: str) -> dict[str, tuple[list[str], dict[str, str] | None, int, list[str]]]:
    """id -> (argv, extra env, expected exit code, fragments the one-line error must contain)."""
    good = write_jsonl(tmp / "good.jsonl", records(5, rate=10))
    write_jsonl(tmp / "malformed.jsonl", [*records(2, rate=10), '{"ts": 1700000001, "method": "POST", "path": ',
                                          *records(2, rate=10, start=1_700_000_002)])

    def scenario(name: str, **kw: Any) -> str:
        d = tmp / name
        d.mkdir()
        (d / "good.jsonl").write_bytes(good.read_bytes())
        (d / "malformed.jsonl").write_bytes((tmp / "malformed.jsonl").read_bytes())
        cap = d / kw.pop("capture", "good.jsonl")
        return str(write_scenario(d, cap, kw.pop("baseline", url), kw.pop("candidate", url), name=name, **kw))

    def edited(name: str, edit: Any) -> str:
        path = Path(scenario(name))
        d = yaml.safe_load(path.read_text())
        edit(d)
        path.write_text(yaml.safe_dump(d, sort_keys=False))
        return str(path)

    refused = f"http://127.0.0.1:{closed_port()}"
    out = ["--out", str(tmp / "reports")]
    return {
        "missing-scenario": (["run", str(tmp / "nope.yaml"), *out], None, 3, ["nope.yaml", "not found"]),
        "scenario-is-a-directory": (["run", str(tmp), *out], None, 3, [str(tmp)]),
        "yaml-syntax": (["run", _write(tmp / "syntax.yaml", "name: x\ntraffic: [unclosed\n"), *out], None, 3,
                        ["syntax.yaml", "YAML"]),
        "not-a-mapping": (["run", _write(tmp / "list.yaml", "- a\n- b\n"), *out], None, 3, ["list.yaml"]),
        "wrong-type": (["run", edited("wrongtype", lambda d: d["traffic"].update(speed="fast")), *out], None, 3,
                       ["traffic.speed", "fast"]),
        "wrong-type-timeout": (["run", edited("wrongtimeout", lambda d: d["replay"].update(timeout_s=[1])), *out],
                               None, 3, ["replay.timeout_s"]),
        "unknown-key": (["run", edited("unknownkey", lambda d: d["replay"].update(retries=3)), *out], None, 3,
                        ["retries"]),
        "unknown-top-key": (["run", edited("unknowntop", lambda d: d.update(tragets={})), *out], None, 3,
                            ["tragets"]),
        "unknown-gate": (["run", edited("unknowngate", lambda d: d["promotion_gates"].update(latency_p96_ms={"maximum": 1})),
                          *out], None, 3, ["latency_p96_ms"]),
        "missing-capture": (["run", scenario("nocapture", capture="absent.jsonl"), *out], None, 3,
                            ["absent.jsonl", "not found"]),
        "bad-record-fail": (["run", scenario("badfail", capture="malformed.jsonl",
                                             traffic={"path": "malformed.jsonl", "on_bad_record": "fail"}), *out],
                            None, 3, ["malformed.jsonl:3"]),
        "unset-env": (["run", scenario("unsetenv", replay={"headers": {"Authorization": "Bearer ${REL_UNSET_VAR}"}}),
                       *out], None, 3, ["REL_UNSET_VAR"]),
        "unreachable-baseline": (["run", scenario("unreachb", baseline=refused), *out], None, 4, [refused]),
        "unreachable-candidate": (["run", scenario("unreachc", candidate=refused), *out], None, 4, [refused]),
        "bad-option": (["run", scenario("badopt"), "--speed", "fast", *out], None, 3, ["--speed"]),
        "negative-processes": (["run", scenario("negproc"), "--processes", "-1", *out], None, 3, ["--processes"]),
        "validate-unknown-key": (["validate", edited("valunknown", lambda d: d["traffic"].update(sped=2))], None, 3,
                                 ["sped"]),
        "report-not-a-run": (["report", str(tmp)], None, 3, [str(tmp), "not a run folder"]),
        "query-not-a-run": (["query", str(tmp), "select"], None, 3, [str(tmp), "not a run folder"]),
        "report-missing-folder": (["report", str(tmp / "absent-run")], None, 3, ["absent-run", "no such folder"]),
        "query-missing-folder": (["query", str(tmp / "absent-run"), "select 1"], None, 3,
                                 ["absent-run", "no such folder"]),
        "schedule-not-a-run": (["schedule", str(tmp)], None, 3, [str(tmp), "not a run folder"]),
        "scores-not-a-run": (["scores", "import", str(tmp), _write(tmp / "scores.csv", "request_id,version,score\n")],
                             None, 3, [str(tmp), "not a run folder"]),
        "report-corrupt-results": (["report", _corrupt_run(tmp / "corrupt-run")], None, 4, ["results.duckdb"]),
        "inspect-missing": (["traffic", "inspect", str(tmp / "absent.jsonl")], None, 3, ["absent.jsonl"]),
        "inspect-unknown-format": (["traffic", "inspect", _write(tmp / "capture.txt", "x\n")], None, 3,
                                   ["capture.txt"]),
        "inspect-directory": (["traffic", "inspect", str(tmp / "dir.jsonl")], None, 3, ["dir.jsonl"]),
        "inspect-not-gzip": (["traffic", "inspect", _write_bytes(tmp / "fake.jsonl.gz", b"\x1f\x8bnot gzip")], None, 3,
                             ["fake.jsonl.gz"]),
    }


def _corrupt_run(run_dir: Path) -> str:
    run_dir.mkdir()
    (run_dir / "results.duckdb").write_bytes(b"DUCK" + bytes(range(256)) * 20)
    return str(run_dir)


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def _write_bytes(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


# The real entry point in a subprocess for these (a fresh interpreter each); every case runs in process too.
SUBPROCESS_CASES = ["missing-scenario", "unknown-key", "wrong-type", "missing-capture", "bad-record-fail",
                    "unreachable-candidate", "bad-option", "inspect-not-gzip"]
CASE_IDS = [
    "missing-scenario", "scenario-is-a-directory", "yaml-syntax", "not-a-mapping", "wrong-type", "wrong-type-timeout",
    "unknown-key", "unknown-top-key", "unknown-gate", "missing-capture", "bad-record-fail", "unset-env",
    "unreachable-baseline", "unreachable-candidate", "bad-option", "negative-processes", "validate-unknown-key",
    "report-not-a-run", "query-not-a-run", "report-missing-folder", "query-missing-folder", "schedule-not-a-run",
    "scores-not-a-run", "report-corrupt-results", "inspect-missing", "inspect-unknown-format", "inspect-directory",
    "inspect-not-gzip"]


def _in_process(argv: list[str]) -> tuple[int, str, str]:
    """cli.main is what the console script runs; an uncaught exception would fail the test right here."""
    from harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def cli_errors(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("inputs")
    (tmp / "dir.jsonl").mkdir()
    with FaultServer() as srv:
        cases = _cases(tmp, srv.url)
        procs = {}
        for i, case in enumerate(SUBPROCESS_CASES):
            argv, env, _, _ = cases[case]
            procs[case] = HarnessProc(argv, tmp, env)
            if i % 3 == 2:
                time.sleep(0.3)  # do not start every interpreter in the same instant on 2 cores
        subprocesses = {case: (p.wait(timeout=120), p.stdout, p.stderr) for case, p in procs.items()}
        # after the subprocesses: the same scenario run twice in the same second would share a run folder name
        in_process = {case: _in_process(argv) for case, (argv, _, _, _) in cases.items()}
        hits = sum(srv.hits.values())
    return {"cases": cases, "in_process": in_process, "subprocess": subprocesses, "hits": hits, "tmp": tmp}


def _check(cli_errors: Any, case: str, result: tuple[int, str, str]) -> None:
    _, _, code, fragments = cli_errors["cases"][case]
    rc, out, err = result
    assert "Traceback" not in out + err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("harness: error: "), err
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    assert rc == code, (rc, err)


@pytest.mark.parametrize("case", CASE_IDS)
def test_input_error_is_one_line_and_the_right_exit_code(cli_errors: Any, case: str) -> None:
    _check(cli_errors, case, cli_errors["in_process"][case])


@pytest.mark.parametrize("case", SUBPROCESS_CASES)
def test_input_error_from_the_console_entry_point(cli_errors: Any, case: str) -> None:
    _check(cli_errors, case, cli_errors["subprocess"][case])


def test_no_request_reaches_a_target_on_an_input_error(cli_errors: Any) -> None:
    assert set(cli_errors["cases"]) == set(CASE_IDS)
    assert cli_errors["hits"] == 0


# -- fuzzed captures -----------------------------------------------------------------------------------

_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=12))
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                     max_leaves=8)
_ts = st.one_of(_scalar, st.sampled_from(["2024-05-01T12:00:00Z", "2024-05-01T12:00:00", "1e400", "-1", "",
                                           "1700000000.5", "9999-12-31T23:59:59+14:00", "0000-01-01T00:00:00Z"]))
_path = st.one_of(_scalar, st.sampled_from(["/a", "/a?b=1&token=x", "http://h/x?y", "https://[::1", "/a b", "",
                                             "//x", "http://", "/\udcff", "/%zz"]))
_method = st.one_of(_scalar, st.sampled_from(["GET", "post", "PATCH", "G\x00T", "", "GET /"]))
_headers = st.one_of(_json, st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
                     st.lists(st.lists(st.text(max_size=6), max_size=3), max_size=3))
_record = st.fixed_dictionaries({}, optional={"ts": _ts, "method": _method, "path": _path, "url": _path,
                                              "headers": _headers, "body": _json,
                                              "body_b64": st.one_of(_scalar, st.binary(max_size=8).map(
                                                  lambda b: base64.b64encode(b).decode()))})
_line = st.one_of(_record.map(lambda r: json.dumps(r, allow_nan=True).encode("utf-8", "surrogatepass")),
                  _json.map(lambda v: json.dumps(v).encode()), st.binary(max_size=40),
                  st.text(max_size=40).map(lambda t: t.encode("utf-8", "surrogatepass")))
_csv_cell = st.one_of(st.text(max_size=10), st.sampled_from(["", '"', '""', "\n", "1700000000", "GET", "/a"]))


@st.composite
def _capture(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["jsonl", "jsonl.gz", "csv", "har", "gor"]))
    if kind in ("jsonl", "jsonl.gz"):
        data = b"\n".join(draw(st.lists(_line, max_size=6)))
        if kind == "jsonl.gz":
            data = gzip.compress(data)
            if draw(st.booleans()):
                data = data[: draw(st.integers(0, len(data)))]  # a cut download
        return kind, data
    if kind == "csv":
        header = draw(st.lists(st.sampled_from(["ts", "method", "path", "headers", "body", "x"]), max_size=6))
        rows = draw(st.lists(st.lists(_csv_cell, max_size=6), max_size=4))
        text = "\n".join(",".join(r) for r in [header, *rows])
        return kind, text.encode("utf-8", "surrogatepass")
    if kind == "har":
        entry = st.fixed_dictionaries({}, optional={
            "startedDateTime": _ts, "request": st.one_of(_json, st.fixed_dictionaries(
                {}, optional={"method": _method, "url": _path, "headers": st.one_of(_json, st.lists(
                    st.fixed_dictionaries({"name": _scalar, "value": _scalar}), max_size=2)),
                    "postData": _json}))})
        doc = draw(st.one_of(_json, st.fixed_dictionaries({"log": st.one_of(_json, st.fixed_dictionaries(
            {"entries": st.one_of(_json, st.lists(entry, max_size=3))}))})))
        return kind, json.dumps(doc).encode("utf-8", "surrogatepass")
    blocks = draw(st.lists(st.one_of(
        st.builds(lambda m, p, h: f"1 abc {int(1.7e18)} 0\n{m} {p} HTTP/1.1\r\n{h}\r\n\r\n".encode("utf-8", "surrogatepass"),
                  st.sampled_from(["GET", "POST", "X"]), _path.map(str), st.text(max_size=20)),
        st.binary(max_size=40)), max_size=4))
    return kind, b"\n\xf0\x9f\x90\xb5\xf0\x9f\x99\x88\xf0\x9f\x99\x89\n".join(blocks)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(_capture())
def test_fuzzed_captures_never_crash_traffic_inspect(capture: tuple[str, bytes]) -> None:
    """In process (a subprocess per example would take minutes): cli.main is what the console script
    runs; a crash would propagate here as an exception instead of an exit code."""
    from harness.cli import main

    kind, data = capture
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"fuzz.{kind}"
        path.write_bytes(data)
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["traffic", "inspect", str(path)])
    assert rc in (0, 3), err.getvalue()
    if rc == 3:
        assert len(err.getvalue().strip().splitlines()) == 1, err.getvalue()
    assert os.fspath(path) in out.getvalue() + err.getvalue()
