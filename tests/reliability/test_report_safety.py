"""Hostile strings in requests, headers and responses render as text in the report.

The capture carries `<script>alert(1)</script>` in a segment header and `"><img src=x onerror=alert(1)>`
in the body; the fault server echoes both back, the prediction is read from the echoed body, and an
output schema that every answer fails puts the answers among the failing examples. The report is then
parsed: no script element, no event-handler attribute, no image but data: URIs, no link that runs code;
the hostile strings appear escaped, as text."""
from __future__ import annotations

import html
import json
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from fault_server import FaultServer
from reliability_kit import (T0, HarnessProc, assert_no_traceback, check_accounting, the_run_dir, write_jsonl,
                             write_scenario)

pytestmark = pytest.mark.integration

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, attrs))


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("hostile")
    recs = [{"ts": T0 + i * 0.02, "method": "POST", "path": "/echo" if i % 3 else f"/echo/{SCRIPT}",
             "headers": {"Content-Type": "text/plain", "X-Tenant": SCRIPT if i % 2 else IMG},
             "body": IMG if i % 2 else SCRIPT} for i in range(30)]
    capture = write_jsonl(tmp / "c.jsonl", recs)
    schema = tmp / "strict.schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["never_there"]}))
    with FaultServer() as srv:
        scenario = write_scenario(tmp, capture, srv.url, srv.url, name="hostile",
                                  segments={"route": {"path_template": True}, "tenant": {"header": "X-Tenant"}},
                                  output={"schema": schema.name, "prediction": "$.body"},
                                  promotion_gates={"error_rate": {"maximum": 0.01},
                                                   "schema_validation_pass_rate": {"minimum": 0.995}})
        p = HarnessProc(["run", str(scenario), "--out", str(tmp / "reports")], tmp)
        rc = p.wait(timeout=120)
    return {"rc": rc, "proc": p, "run_dir": the_run_dir(tmp / "reports")}


def test_hostile_run_completes(hostile_run: Any) -> None:
    assert hostile_run["rc"] in (0, 1, 2), hostile_run["proc"].stderr
    assert_no_traceback(hostile_run["proc"].stdout, hostile_run["proc"].stderr)
    check_accounting(hostile_run["run_dir"], "paired")


def test_report_has_no_script_and_no_active_markup(hostile_run: Any) -> None:
    text = (hostile_run["run_dir"] / "gate_report.html").read_text(encoding="utf-8")
    assert "<script" not in text.lower()
    parser = _Tags()
    parser.feed(text)
    assert parser.tags, "the report has no markup at all"
    for tag, attrs in parser.tags:
        assert tag not in ("script", "iframe", "object", "embed"), tag
        for name, value in attrs:
            assert not name.lower().startswith("on"), (tag, name, value)
            if name.lower() in ("href", "src", "action", "formaction"):
                assert not (value or "").strip().lower().startswith(("javascript:", "vbscript:")), (tag, name, value)
        if tag == "img":
            assert (dict(attrs).get("src") or "").startswith("data:"), attrs


def test_hostile_strings_render_as_text(hostile_run: Any) -> None:
    text = (hostile_run["run_dir"] / "gate_report.html").read_text(encoding="utf-8")
    # the segment value shows, escaped (the tenant segment is part of the per-segment gates)
    assert html.escape(SCRIPT, quote=False) in text or html.escape(SCRIPT) in text
    assert IMG not in text and SCRIPT not in text


def test_junit_and_summary_stay_well_formed(hostile_run: Any) -> None:
    run_dir: Path = hostile_run["run_dir"]
    ET.parse(run_dir / "junit.xml")
    s = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    assert s["verdict"] in ("PROMOTE", "HOLD", "BLOCK")
