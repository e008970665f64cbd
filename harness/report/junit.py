"""junit.xml: one testcase per gate result, so CI systems show each gate as a test."""
from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

__all__ = ["write_junit"]


def write_junit(path: Path, summary: dict[str, Any]) -> None:
    gates = summary.get("gates", [])
    failures = sum(1 for g in gates if g["status"] == "fail" and g.get("severity") == "blocking")
    skipped = sum(1 for g in gates if g["status"] == "inconclusive" or
                  (g["status"] == "fail" and g.get("severity") != "blocking"))
    incomplete = summary["verdict"] == "INCOMPLETE"
    suite = ET.Element("testsuite", name=f"harness gates: {summary['run'].get('scenario')}",
                       tests=str(len(gates) + incomplete), failures=str(failures), errors=str(int(incomplete)),
                       skipped=str(skipped))
    props = ET.SubElement(suite, "properties")
    for key, value in (("verdict", summary["verdict"]), ("run", summary["run"].get("id"))):
        ET.SubElement(props, "property", name=key, value=str(value))
    if incomplete:  # the run itself is an error: CI must not read its provisional gates as the verdict
        why = f"incomplete run: {summary['run'].get('status_reason') or summary['run'].get('status')}"
        case = ET.SubElement(suite, "testcase", classname="harness.run", name="run complete")
        ET.SubElement(case, "error", message=why, type="run_incomplete").text = why
    for g in gates:
        scope = g["segment"] or "overall"
        case = ET.SubElement(suite, "testcase", classname=f"gates.{g['name']}", name=f"{g['name']} [{scope}]")
        if g["status"] == "fail" and g.get("severity") == "blocking":
            ET.SubElement(case, "failure", message=g["reason"], type="gate_failed").text = g["reason"]
        elif g["status"] == "fail":
            ET.SubElement(case, "skipped", message=f"warning: {g['reason']}")
        elif g["status"] == "inconclusive":
            ET.SubElement(case, "skipped", message=f"inconclusive: {g['reason']}")
        else:
            ET.SubElement(case, "system-out").text = g["reason"]
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)
