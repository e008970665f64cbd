"""Bad input as a new user writes it: each is exit 3 and one line naming the file, the key and what is wrong,
before anything is sent (never an internal error, never a replay of failed legs, never a silent pass)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main

REPO = Path(__file__).resolve().parents[1]
UNREACHABLE = "http://127.0.0.1:1"  # a scenario error must be found before the targets are probed


def _scenario(tmp_path: Path, *, segments: str = "  tenant: {header: X-Tenant}\n", replay: str = "",
              gates: str = "  error_rate: {maximum: 0.01}\n", url: str = UNREACHABLE, traffic: str = "",
              extra: str = "") -> Path:
    capture = tmp_path / "c.jsonl"
    capture.write_text("".join(json.dumps({"ts": 1_700_000_000 + i * 0.1, "method": "POST", "path": "/predict",
                                           "headers": {"X-Tenant": "pro" if i % 2 else "free"}, "body": {"x": [i]}})
                               + "\n" for i in range(20)))
    p = tmp_path / "s.yaml"
    p.write_text(f"""name: t
traffic: {{path: {capture}{traffic}}}
segments:
{segments}targets: {{baseline: {{url: "{url}"}}, candidate: {{url: "{UNREACHABLE}"}}}}
replay: {{allow: ["POST /predict"]{replay}}}
promotion_gates:
{gates}{extra}""")
    return p


def _one_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("harness: error:"), err
    return lines[0]


CASES = {
    # an unparseable JSON path of a segment was an internal error (exit 4) from the first record read
    "segment-json-path": ({"segments": "  size: {json_array_length: '$.x[[', buckets: [1, 8]}\n"},
                          "segments.size.json_array_length: JSON path '$.x[['"),
    "segment-present-path": ({"segments": "  f: {present: ['$.ok', '$.[[[']}\n"}, "segments.f.present: JSON path"),
    # a segment name is a quoted column: a double quote in it was a DuckDB parser error (exit 4)
    "segment-name-quote": ({"segments": '  "a\\"b": {header: X-Tenant}\n'}, "may not hold a double quote"),
    # column names ignore case: two names that differ only by case were a DuckDB catalog error (exit 4)
    "segment-names-by-case": ({"segments": "  tenant: {header: X-Tenant}\n  Tenant: {header: X-Tenant}\n"},
                              "segments.Tenant: the same name as segments.tenant"),
    # urllib raised ValueError from the reachability probe (exit 4)
    "port-out-of-range": ({"url": "http://127.0.0.1:99999"}, "targets.baseline.url: http://127.0.0.1:99999: Port out"),
    # NaN passes every schema bound: an internal error at run time (exit 4)
    "nan-speed": ({"traffic": ", speed: .nan"}, "s.yaml:2: traffic.speed: .nan is not a number"),
    "nan-threshold": ({"gates": "  error_rate: {maximum: .nan}\n"},
                      "s.yaml:8: promotion_gates.error_rate.maximum: .nan is not a number"),
    # a header no request can carry: every leg of the replay was a harness_error, exit 4
    "header-name": ({"replay": ', headers: {"X Team": a}'}, "replay.headers: invalid header field name 'X Team'"),
    "header-value": ({"replay": ', headers: {X-Team: "a\\r\\nX-Injected: 1"}'},
                     "replay.headers: invalid value for header field 'X-Team': a control character (U+000D"),
    "accept-encoding": ({"replay": ', accept_encoding: "gzip\\nX: 1"'}, "replay.accept_encoding: invalid value"),
    # a rate's limit outside 0..1 was judged as written: -0.5 always BLOCKs, 5 (meant as 5 %) always passes
    "rate-limit-negative": ({"gates": "  error_rate: {maximum: -0.5}\n"},
                            "promotion_gates.error_rate.maximum: -0.5 is outside 0 to 1"),
    "rate-limit-percent": ({"gates": "  error_rate: {maximum: 5}\n"}, "write 1 % as 0.01"),
    "regression-below-minus-100": ({"gates": "  latency_p95_ms: {maximum_regression_percent: -200}\n"},
                                   "-200 is -100 % or less"),
    # YAML keeps the last of two equal keys: the first block's gates were dropped without a word
    "duplicate-key": ({"extra": "promotion_gates:\n  latency_p95_ms: {maximum_regression_percent: 10}\n"},
                      "s.yaml:9: invalid YAML: the key 'promotion_gates' is written twice"),
}


@pytest.mark.parametrize("verb", ["validate", "run"])
@pytest.mark.parametrize("case", list(CASES))
def test_bad_scenario_is_one_line_and_exit_3(capsys, tmp_path, case, verb) -> None:
    changes, expected = CASES[case]
    p = _scenario(tmp_path, **changes)
    args = [verb, str(p)] + (["--out", str(tmp_path / "r")] if verb == "run" else [])
    code = main(args)
    line = _one_error(capsys)
    assert code == 3, line
    assert expected in line, line
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


@pytest.mark.integration
def test_inspect_of_a_capture_with_a_stray_timestamp_ends(tmp_path) -> None:
    """One record at ts 1 (a logger's zero time) among records of 2023: the rate statistics and the plot went
    over every second of the 54 years between them (gigabytes, minutes)."""
    capture = tmp_path / "c.jsonl"
    capture.write_text("".join(json.dumps({"ts": ts, "method": "GET", "path": "/x"}) + "\n"
                               for ts in (1, 1_700_000_000, 1_700_000_000.5, 1_700_000_002)))
    out = subprocess.run([sys.executable, "-m", "harness", "traffic", "inspect", str(capture), "--plot",
                          str(tmp_path / "rate.png")], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "records       4 (0 bad)" in out.stdout and "peak 2/s" in out.stdout
    assert (tmp_path / "rate.png").stat().st_size > 0


def test_yaml_merge_keys_still_load(tmp_path: Path) -> None:
    """The duplicate-key check must leave YAML's merge key alone: `<<: *defaults`, a merged key overridden."""
    path = tmp_path / "s.yaml"
    path.write_text("""name: merged
traffic: {path: x.jsonl}
targets:
  baseline: &target {url: "http://127.0.0.1:1", headers: {X-A: "1"}}
  candidate: {<<: *target, url: "http://127.0.0.1:2"}
""")
    from harness.scenario import load_scenario

    try:
        s = load_scenario(path)
    except Exception as exc:  # noqa: BLE001 - the message says what the loader refused
        assert "merge" not in str(exc), exc
        raise
    assert s.target_for("candidate").url == "http://127.0.0.1:2"
    assert s.target_for("candidate").headers == {"X-A": "1"}
