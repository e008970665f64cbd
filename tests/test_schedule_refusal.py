"""Item 9 of issue 15: manifests of a run that did not PROMOTE are refused unless --force, and forced ones
say so in every object."""
from __future__ import annotations

import yaml
import pytest

from harness.cli import main

from small_run import small_run

pytestmark = pytest.mark.integration


def _docs(text: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_blocked_and_held_runs_are_not_exported_without_force(capsys, tmp_path) -> None:
    blocked = small_run(tmp_path / "b", candidate_status=500).run_dir  # every candidate answer a 5xx
    held = small_run(tmp_path / "h", gates={"latency_p95_ms": {"maximum_regression_percent": 10}}).run_dir  # 60 < 200
    capsys.readouterr()
    for run_dir, code in ((blocked, 1), (held, 2)):
        for fmt in ("argo", "flagger", "istio"):
            assert main(["schedule", str(run_dir), "--format", fmt]) == code
            out, err = capsys.readouterr()
            assert out == "" and len(err.strip().splitlines()) == 1 and "--force" in err
        assert main(["schedule", str(run_dir)]) == 0  # the schedule itself says "do not start"
        assert "do not start" in capsys.readouterr().out
    assert main(["schedule", str(blocked), "--format", "argo", "--force"]) == 0
    docs = _docs(capsys.readouterr().out)
    assert docs and all("verdict BLOCK" in d["metadata"]["annotations"]["harness/forced-export"] for d in docs)
