"""Real KServe (the `kserve` package's ModelServer data plane, REST and its gRPC servicer) as a serving stack:
a paired and an A/A replay over REST and over gRPC, 0 harness-made errors, the A/A runs fail no gate, and
the predictions are the model's.

KServe lives in its own virtual environment, `.venv-kserve` (`make stacks`; CI builds it), or the Python
named by HARNESS_KSERVE_PYTHON; the tests skip with that reason otherwise. The model
(tests/kserve_real_model.py) is the one tests/kserve_v2_server.py imitates."""
from __future__ import annotations

import json
import os
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pytest

from replay_helpers import scenario_dict, write_capture
from stacks import free_port, wait_port

HERE = Path(__file__).parent
KSERVE_PYTHON = Path(os.environ.get("HARNESS_KSERVE_PYTHON") or HERE.parent / ".venv-kserve" / "bin" / "python")
SKIP = None if KSERVE_PYTHON.exists() else (f"{KSERVE_PYTHON} not found: run `make stacks` (CI builds .venv-kserve) or set "
                                            "HARNESS_KSERVE_PYTHON to a Python with kserve installed")

pytestmark = [pytest.mark.integration, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]
N = 30


@contextmanager
def _kserve() -> Iterator[tuple[str, str]]:
    port, grpc_port = free_port(), free_port()
    proc = subprocess.Popen([str(KSERVE_PYTHON), str(HERE / "kserve_real_model.py"), str(port), str(grpc_port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_port(port, proc, timeout_s=120)
        wait_port(grpc_port, proc, timeout_s=60)
        yield f"http://127.0.0.1:{port}", f"grpc://127.0.0.1:{grpc_port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@pytest.fixture(scope="module")
def kserve() -> Iterator[tuple[tuple[str, str], tuple[str, str]]]:
    with _kserve() as first, _kserve() as second:
        yield first, second


def _records() -> list[dict[str, Any]]:
    return [{"ts": 1_700_000_000 + i * 0.03, "method": "POST", "path": "/v2/models/fraud/infer",
             "headers": {"Content-Type": "application/json", "Accept-Encoding": "gzip, deflate"},
             "body": {"id": f"r{i}", "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                                 "data": [[i * 3.0, 1.0, 2.0, 3.0]]}]}} for i in range(N)]


def _run(tmp_path: Path, baseline: str, candidate: str, mode: str, protocol: str) -> tuple[dict[str, Any], list[Any]]:
    from harness.run import run_scenario
    from harness.scenario import scenario_from_dict

    tmp_path.mkdir(parents=True, exist_ok=True)
    sc = scenario_dict(write_capture(tmp_path / "c.jsonl", _records()), baseline, candidate, speed=1, timeout_s=20,
                       mode=mode)
    sc["name"] = f"kserve-{mode}"
    sc["targets"]["baseline"]["protocol"] = sc["targets"]["candidate"]["protocol"] = protocol
    sc["output"] = {"ignore_paths": ["$.id"]}
    sc["promotion_gates"] = {"error_rate": {"maximum": 0.05},
                             "field_diffs": {"metric": "field_diff_rate", "maximum": 0.5}}
    result = run_scenario(scenario_from_dict(sc), tmp_path / "out", echo=lambda m: None, progress_every_s=60)
    con = duckdb.connect(str(result.run_dir / "results.duckdb"), read_only=True)
    legs = con.execute("select r.captured_at, l.version, l.error_kind, l.error_detail, l.prediction, l.confidence, "
                       "l.status_code from legs l join requests r using (request_id) order by 1, 2").fetchall()
    con.close()
    return json.loads((result.run_dir / "summary.json").read_text()), legs


@pytest.mark.parametrize("over", ["rest", "grpc"])
def test_kserve_paired_and_aa(tmp_path: Path, kserve: tuple[tuple[str, str], tuple[str, str]], over: str) -> None:
    (rest_a, grpc_a), (rest_b, grpc_b) = kserve
    a, b, protocol = (rest_a, rest_b, "kserve_v2") if over == "rest" else (grpc_a, grpc_b, "kserve_v2_grpc")
    expected = ["fraud" if (i * 3.0 + 6.0) / 100 > 0.5 else "legit" for i in range(N)]
    for mode, candidate in (("paired", b), ("aa", a)):
        summary, legs = _run(tmp_path / mode, a, candidate, mode, protocol)
        assert len(legs) == 2 * N
        assert [(leg[1], leg[2], leg[3]) for leg in legs if leg[2] is not None] == []
        assert {leg[6] for leg in legs} == {200}
        for version in ("baseline", "candidate"):
            got = [leg for leg in legs if leg[1] == version]
            assert [leg[4] for leg in got] == expected
            assert [leg[5] for leg in got] == pytest.approx([min(1.0, (i * 3.0 + 6.0) / 100) for i in range(N)],
                                                           abs=1e-6)
        assert summary["counts"]["harness_errors"] == 0
        if mode == "aa":
            assert [g for g in summary["gates"] if g["status"] == "fail"] == []
