"""Item 10 of issue 15: a run with replay.aa_reference is judged from its own folder."""
from __future__ import annotations

import json
import shutil

import pytest

from harness.cli import main

from small_run import small_run

pytestmark = pytest.mark.integration


def test_the_noise_floor_is_copied_into_the_run(capsys, tmp_path) -> None:
    gates = {"error_increase": {"metric": "error_rate", "maximum_increase": 0.05}}  # relative to the baseline
    aa = small_run(tmp_path / "aa", gates=gates, mode="aa").run_dir
    paired = small_run(tmp_path / "p", gates=gates, aa_reference=str(aa)).run_dir
    before = json.loads((paired / "summary.json").read_text())
    assert "A/A noise for this gate and scope" in before["gates"][0]["reason"]
    shutil.rmtree(aa)  # the A/A folder is gone (another machine, cleaned up): the run judges the same
    moved = tmp_path / "elsewhere"
    shutil.copytree(paired, moved)
    capsys.readouterr()
    assert main(["report", str(moved)]) == 0
    after = json.loads((moved / "summary.json").read_text())
    assert after["verdict"] == before["verdict"] and after["gates"] == before["gates"]


def test_an_incomplete_aa_run_is_no_reference(capsys, tmp_path) -> None:
    """An A/A run interrupted part way was taken as the noise floor without a word; a reference whose A/A
    is not complete is a scenario error before anything is sent."""
    from harness.aa_reference import read_aa_reference
    from harness.errors import ScenarioError

    gates = {"error_increase": {"metric": "error_rate", "maximum_increase": 0.05}}
    aa = small_run(tmp_path / "aa", gates=gates, mode="aa").run_dir
    summary = json.loads((aa / "summary.json").read_text())
    assert read_aa_reference(aa)["noise_floor"]
    summary["run"]["status"], summary["run"]["status_reason"] = "incomplete", "interrupted by SIGINT"
    (aa / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(ScenarioError, match="the A/A run is incomplete \\(interrupted by SIGINT\\)"):
        read_aa_reference(aa)
