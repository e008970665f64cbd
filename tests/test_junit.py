"""junit.xml (a CI artifact): one testcase per gate result, read back with xml.etree from a real run
and checked against summary.json and the exit code, so CI systems count what the verdict counts."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from harness.cli import VERDICT_EXIT
from harness.report.junit import write_junit


@pytest.fixture(scope="module")
def summary(demo_run: Any) -> dict[str, Any]:
    return json.loads((Path(demo_run.run_dir) / "summary.json").read_text())


@pytest.fixture(scope="module")
def suite(demo_run: Any) -> ET.Element:
    root = ET.parse(Path(demo_run.run_dir) / "junit.xml").getroot()
    assert root.tag == "testsuite"
    return root


def _blocking_fails(gates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [g for g in gates if g["status"] == "fail" and g["severity"] == "blocking"]


@pytest.mark.integration
def test_counts_match_summary(suite: ET.Element, summary: dict[str, Any]) -> None:
    gates = summary["gates"]
    cases = suite.findall("testcase")
    assert int(suite.get("tests", "-1")) == len(cases) == len(gates)
    assert int(suite.get("failures", "-1")) == len(suite.findall("testcase/failure")) == len(_blocking_fails(gates))
    not_judged = [g for g in gates if g["status"] == "inconclusive" or (g["status"] == "fail" and g["severity"] != "blocking")]
    assert int(suite.get("skipped", "-1")) == len(suite.findall("testcase/skipped")) == len(not_judged)
    assert suite.get("errors") == "0"
    passed = [c for c in cases if c.find("failure") is None and c.find("skipped") is None]
    assert len(passed) == sum(1 for g in gates if g["status"] == "pass")


@pytest.mark.integration
def test_one_testcase_per_gate_result_in_order(suite: ET.Element, summary: dict[str, Any]) -> None:
    for case, g in zip(suite.findall("testcase"), summary["gates"], strict=True):
        assert case.get("classname") == f"gates.{g['name']}"
        assert case.get("name") == f"{g['name']} [{g['segment'] or 'overall'}]"
        failure = case.find("failure")
        if g["status"] == "fail" and g["severity"] == "blocking":
            assert failure is not None and failure.get("message") == g["reason"] and failure.text == g["reason"]
            assert failure.get("type") == "gate_failed"
        else:
            assert failure is None
        if g["status"] == "inconclusive":
            skipped = case.find("skipped")
            assert skipped is not None and skipped.get("message") == f"inconclusive: {g['reason']}"


@pytest.mark.integration
def test_properties_carry_verdict_and_run(suite: ET.Element, summary: dict[str, Any], demo_run: Any) -> None:
    props = {p.get("name"): p.get("value") for p in suite.findall("properties/property")}
    assert props == {"verdict": summary["verdict"], "run": summary["run"]["id"]}
    assert summary["run"]["scenario"] in (suite.get("name") or "")
    # the exit code CI reads agrees with junit: failures <=> BLOCK (a blocking gate failed)
    assert demo_run.exit_code == VERDICT_EXIT[summary["verdict"]]
    assert (int(suite.get("failures", "0")) > 0) == (summary["verdict"] == "BLOCK")


def test_reasons_with_markup_survive_as_text(tmp_path: Path) -> None:
    reason = 'candidate answered "><img src=x onerror=alert(1)> & <script>x</script> \u2265 1 %'
    gates = [{"name": "error_rate", "segment": "tenant=a&b", "status": "fail", "severity": "blocking", "reason": reason},
             {"name": "latency_p95_ms", "segment": None, "status": "pass", "severity": "blocking", "reason": "ok"},
             {"name": "timeout_rate", "segment": None, "status": "fail", "severity": "warning", "reason": "warn"}]
    path = tmp_path / "junit.xml"
    write_junit(path, {"verdict": "BLOCK", "gates": gates, "run": {"id": "r1", "scenario": "s<1>"}})
    root = ET.parse(path).getroot()
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("3", "1", "1")
    first = root.findall("testcase")[0]
    assert first.get("name") == "error_rate [tenant=a&b]"
    assert first.find("failure").get("message") == reason  # type: ignore[union-attr]
    assert root.findall("testcase")[2].find("skipped").get("message") == "warning: warn"  # type: ignore[union-attr]
