"""gate_report.html, built from a real demo run (real servers, a real Locust replay), checked as text
and in a real headless browser (Debian's chromium, driven over the DevTools protocol on a pipe with
the standard library only)."""
from __future__ import annotations

import base64
import fcntl
import html
import json
import os
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from harness.outputs import build_outputs
from harness.report.queries import BAD_RECORDS_SHOWN, EXAMPLES_PER_KIND
from harness.store import open_results
from run_folder_contract import assert_meets_contract

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
MAX_REPORT_BYTES = 3 * 1024 * 1024

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def demo_run(demo_run: Any) -> Path:
    """The session's demo run folder (conftest.py), by its path."""
    return Path(demo_run.run_dir)


def _copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _summary(run_dir: Path) -> dict[str, Any]:
    return json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))


def _report(run_dir: Path) -> str:
    return (run_dir / "gate_report.html").read_text(encoding="utf-8")


def _e(text: str) -> str:
    """How Jinja2's autoescape writes text (markupsafe: & < > " ')."""
    return html.escape(text, quote=True).replace("&quot;", "&#34;").replace("&#x27;", "&#39;")


@pytest.fixture(scope="module")
def hostile_run(demo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the demo run whose stored answers, errors, segment values and bad records carry markup,
    with more failing legs and bad records than the report shows, rebuilt through build_outputs."""
    run_dir = _copy_run(demo_run, tmp_path_factory.mktemp("hostile") / "run")
    con = open_results(run_dir / "results.duckdb", read_only=False)
    try:
        con.execute("""update legs set output_json = ?, error_kind = 'schema', schema_valid = false, schema_errors = ?
                       where version = 'candidate' and request_id in
                         (select request_id from legs where version = 'candidate' order by request_id limit 25)""",
                    [json.dumps({"prediction": SCRIPT, "note": IMG}), f"prediction: {IMG} is not one of {SCRIPT}"])
        con.execute("update requests set tenant = ? where request_id in "
                    "(select request_id from requests order by request_id limit 40)", [SCRIPT])
        con.execute("update requests set route = ? where request_id in "
                    "(select request_id from requests order by request_id desc limit 3)", [IMG])
        con.execute("insert into bad_records select 'capture.jsonl', 100000 + i, ? from range(?) t(i)",
                    [f"invalid JSON near {SCRIPT}{IMG}", BAD_RECORDS_SHOWN + 7])
    finally:
        con.close()
    build_outputs(run_dir)
    return run_dir


# --- content -------------------------------------------------------------------------------------------

def test_verdict_banner_matches_summary(demo_run: Path) -> None:
    summary, page = _summary(demo_run), _report(demo_run)
    banner = re.search(r'<div class="word" data-verdict="([A-Z]+)">([A-Z]+)</div>', page)
    assert banner is not None
    assert banner.group(1) == banner.group(2) == summary["verdict"]
    css = {"PROMOTE": "promote", "HOLD": "hold", "BLOCK": "block"}[summary["verdict"]]
    assert f'class="verdict {css}"' in page
    for reason in summary["verdict_reasons"]:
        assert _e(reason) in page


def test_every_gate_result_appears(demo_run: Path) -> None:
    summary, page = _summary(demo_run), _report(demo_run)
    rows = page.replace("<wbr>", "").split('<tr class="row-')
    for g in summary["gates"]:
        scope = g["segment"] or "overall"
        # one table row carries the gate's name, scope, status and sentence
        assert any(f">{_e(g['name'])}<" in r and f">{_e(scope)}<" in r and f'st-{g["status"]}' in r
                   and _e(g["reason"]) in r for r in rows), (g["name"], scope)


def test_self_contained_and_bounded(demo_run: Path) -> None:
    page = _report(demo_run)
    path = demo_run / "gate_report.html"
    assert path.stat().st_size < MAX_REPORT_BYTES
    assert "<script" not in page.lower()
    assert not re.search(r"\bon[a-z]+\s*=", page, re.I), "no inline event handlers"
    assert "@import" not in page and "url(" not in page
    refs = re.findall(r"""\b(?:src|href|srcset|action|poster|data)\s*=\s*["']?([^"'\s>]+)""", page, re.I)
    assert refs, "the page links its own sections and embeds its charts"
    for ref in refs:
        assert ref.startswith("#") or ref.startswith("data:image/png;base64,"), ref
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 3  # latency CDF, latency over time, memory timeline
    for b64 in images:
        assert base64.b64decode(b64)[:8] == b"\x89PNG\r\n\x1a\n"
    # target URLs are shown as text for the audit, never as links
    summary = _summary(demo_run)
    for url in (summary["run"]["baseline_url"], summary["run"]["candidate_url"]):
        assert f">{url}<" in page
    assert not re.search(r"""(?:src|href)\s*=\s*["']?https?:""", page, re.I)


def test_sections_present(demo_run: Path) -> None:
    page, summary = _report(demo_run), _summary(demo_run)
    for anchor in ("gates", "versions", "worse", "latency", "failures", "input", "fidelity", "metadata"):
        assert f'id="{anchor}"' in page
    run = summary["run"]
    for value in (run["scenario_sha256"], run["capture_sha256"], run["harness_version"], run["started_at"],
                  run["finished_at"], run["mode"]):
        assert _e(str(value)) in page
    assert "@media print" in page
    assert '<table class="heat">' in page and "background: #" in page
    counts = summary["counts"]
    assert f"legs {counts['legs']:,}".replace(",", "\u202f") in page.replace("&#8239;", "\u202f")
    if (summary.get("outputs") or {}).get("pairs"):
        assert 'id="outputs"' in page
    if (summary.get("schedule") or {}).get("steps"):
        assert 'id="schedule"' in page
        for step in summary["schedule"]["steps"]:
            assert f">{_e(step['name'])}<" in page


def test_renders_from_a_bare_summary_without_the_database(demo_run: Path) -> None:
    """An older or trimmed summary.json, without results.duckdb: the report still renders what it has."""
    from harness.report.html import render_report

    summary = _summary(demo_run)
    bare = {k: summary[k] for k in ("verdict", "verdict_reasons", "run", "gates")}
    page = render_report(bare, None)
    assert f'data-verdict="{summary["verdict"]}"' in page
    assert "<script" not in page.lower() and "data:image/png" not in page
    assert "results.duckdb was not available" in page


def test_run_folder_contract(demo_run: Path) -> None:
    assert_meets_contract(demo_run)


# --- hostile content ---------------------------------------------------------------------------------

def test_hostile_strings_are_escaped(hostile_run: Path) -> None:
    page = _report(hostile_run)
    assert "<script" not in page.lower()
    assert "<img src=x" not in page and "onerror=alert(1)>" not in page
    assert _e(SCRIPT) in page  # the tenant segment and the failing outputs, shown as text
    assert "&lt;img src=x onerror=alert(1)&gt;" in page
    assert page.count("<img ") == page.count('<img src="data:image/png;base64,')


def test_evidence_tables_are_capped(hostile_run: Path) -> None:
    page = _report(hostile_run)
    bad_rows = re.findall(r"<tr><td class=\"num\">1000\d\d</td>", page)
    assert len(bad_rows) <= BAD_RECORDS_SHOWN
    assert "more in the bad_records table" in page
    schema_group = page.split("candidate · schema")[1].split("</table>")[0]
    assert schema_group.count("<tr><td class=\"mono\">") == EXAMPLES_PER_KIND
    assert f"legs, {EXAMPLES_PER_KIND} shown)" in page


def test_incomplete_run_banner(demo_run: Path, tmp_path: Path) -> None:
    run_dir = _copy_run(demo_run, tmp_path / "run")
    con = open_results(run_dir / "results.duckdb", read_only=False)
    try:
        con.execute("update runs set status = 'incomplete', status_reason = 'interrupted by SIGINT'")
    finally:
        con.close()
    build_outputs(run_dir)
    page = _report(run_dir)
    assert "Incomplete run:</strong>\n  interrupted by SIGINT (status incomplete). No verdict" in page
    assert 'data-verdict="INCOMPLETE"' in page
    assert "Incomplete run" not in _report(demo_run)


def test_baseline_only_run(demo_run: Path, tmp_path: Path) -> None:
    """The same legs, stored as a baseline-only run: one column, no per-segment comparison, no error."""
    run_dir = _copy_run(demo_run, tmp_path / "run")
    con = open_results(run_dir / "results.duckdb", read_only=False)
    try:
        config = json.loads(con.execute("select config from runs").fetchone()[0])  # type: ignore[index]
        config["replay"]["mode"] = "baseline-only"
        config["targets"].pop("candidate")
        con.execute("update runs set config = ?, mode = 'baseline-only', candidate_url = null", [json.dumps(config)])
        con.execute("delete from legs where version = 'candidate'")
        con.execute("delete from resources where version = 'candidate'")
        con.execute("delete from scores where version = 'candidate'")
    finally:
        con.close()
    summary = build_outputs(run_dir)
    page = _report(run_dir)
    assert list(summary["versions"]) == ["baseline"]
    assert "Baseline-only run" in page and "No candidate in this run" in page
    assert '<table class="heat">' not in page and "<th class=\"num\">candidate</th>" not in page
    assert page.count('src="data:image/png;base64,') >= 3


def test_saturation_warning_follows_the_summary(demo_run: Path) -> None:
    summary, page = _summary(demo_run), _report(demo_run)
    assert ("Load not delivered" in page) == bool(summary["replay"]["saturated"])


# --- real browser --------------------------------------------------------------------------------------

class DevTools:
    """Chrome DevTools protocol over --remote-debugging-pipe: JSON messages separated by NUL bytes,
    commands on the browser's fd 3, answers and events on its fd 4."""

    def __init__(self, chromium: str, profile: Path, net_log: Path) -> None:
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # keep both child-side ends above 4, so dup2 onto 3 and 4 cannot clobber one with the other
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)

        def wire() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        self.stderr_path = profile / "chromium.stderr"
        self._stderr = open(self.stderr_path, "wb")
        args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--no-default-browser-check", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--disable-extensions", "--disable-default-apps", "--mute-audio",
                "--metrics-recording-only", "--host-resolver-rules=MAP * ~NOTFOUND", f"--user-data-dir={profile}",
                f"--log-net-log={net_log}", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self._stderr,
                                     close_fds=False, preexec_fn=wire)
        os.close(child_in)
        os.close(child_out)
        self._buf = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium did not answer over the DevTools pipe")
            ready, _, _ = select.select([self._from_browser], [], [], left)
            if ready:
                chunk = os.read(self._from_browser, 1 << 20)
                if not chunk:
                    raise EOFError(f"chromium closed the DevTools pipe: {self.stderr_path.read_text(errors='replace')[-2000:]}")
                self._buf += chunk
        raw, self._buf = self._buf.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
             timeout_s: float = 60.0) -> dict[str, Any]:
        self._next_id += 1
        msg: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout_s
        while True:
            answer = self._read_message(deadline)
            if answer.get("id") == self._next_id:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return dict(answer.get("result") or {})
            self.events.append(answer)

    def wait_for(self, method: str, timeout_s: float = 60.0) -> dict[str, Any]:
        for e in self.events:
            if e.get("method") == method:
                return e
        deadline = time.monotonic() + timeout_s
        while True:
            e = self._read_message(deadline)
            self.events.append(e)
            if e.get("method") == method:
                return e

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout_s=10)
        except (RuntimeError, TimeoutError, EOFError, OSError):
            pass
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
        for fd in (self._to_browser, self._from_browser):
            os.close(fd)
        self._stderr.close()


def _open_in_chromium(report: Path, tmp_path: Path, screenshot: Path) -> dict[str, Any]:
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install chromium; .ci/run installs it)")
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    net_log = tmp_path / "netlog.json"
    cdp = DevTools(CHROMIUM, profile, net_log)
    try:
        target = cdp.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = cdp.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            cdp.call(f"{domain}.enable", session=session)
        cdp.call("Emulation.setDeviceMetricsOverride",
                 {"width": 1280, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session=session)
        cdp.call("Page.navigate", {"url": report.as_uri()}, session=session)
        cdp.wait_for("Page.loadEventFired")
        probe = cdp.call("Runtime.evaluate", {"returnByValue": True, "expression": """({
            verdict: document.querySelector('.verdict .word') && document.querySelector('.verdict .word').textContent.trim(),
            scripts: document.scripts.length,
            images: document.images.length,
            imagesDecoded: Array.from(document.images).filter(i => i.complete && i.naturalWidth > 0).length,
            imageSources: Array.from(document.images).map(i => i.src.slice(0, 22)),
            gateRows: document.querySelectorAll('table.gates tbody tr').length,
            text: document.body.innerText,
            height: document.documentElement.scrollHeight,
            width: document.documentElement.scrollWidth
        })"""}, session=session)["result"]["value"]
        height = min(int(probe["height"]), 16000)
        cdp.call("Emulation.setDeviceMetricsOverride",
                 {"width": 1280, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
        shot = cdp.call("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True}, session=session)
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        events = list(cdp.events)
    finally:
        cdp.close()
    return {"probe": probe, "events": events, "net_log": net_log}


def _problems(events: list[dict[str, Any]]) -> tuple[list[str], list[str]]:
    errors, requests = [], []
    for e in events:
        method, params = e.get("method"), e.get("params") or {}
        if method == "Runtime.exceptionThrown":
            errors.append(json.dumps(params)[:300])
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
            errors.append(json.dumps(params.get("args"))[:300])
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
            errors.append(json.dumps(params["entry"])[:300])
        elif method == "Network.requestWillBeSent":
            requests.append(params.get("request", {}).get("url", ""))
        elif method == "Network.loadingFailed":
            errors.append(f"loading failed: {json.dumps(params)[:300]}")
    return errors, requests


def _page_requests_in_net_log(path: Path) -> list[str]:
    """URLs of network requests that a web page initiated, from chromium's net log. The browser's own
    background requests (network time, component updates, account checks: initiator "not an origin")
    are not the report's doing; the host resolver rule stops them anyway."""
    text = path.read_text(encoding="utf-8", errors="replace").rstrip().rstrip(",")
    try:
        log = json.loads(text)
    except ValueError:  # a log whose writer was cut off misses its closing brackets
        log = json.loads(text + "]}")
    start_job = log["constants"]["logEventTypes"]["URL_REQUEST_START_JOB"]
    out = []
    for event in log.get("events", []):
        params = event.get("params") or {}
        if event.get("type") == start_job and "url" in params and params.get("initiator") != "not an origin":
            out.append(str(params.get("url")))
    return out


def test_browser_check_sees_network_and_console_errors(tmp_path: Path) -> None:
    """The checks below can fail: a page that loads a remote image and stylesheet and logs an error is caught."""
    page = tmp_path / "leaky.html"
    page.write_text('<!doctype html><html><body><img src="http://example.com/x.png">'
                    '<link rel="stylesheet" href="https://fonts.example.org/a.css">'
                    '<script>console.error("boom")</script></body></html>', encoding="utf-8")
    seen = _open_in_chromium(page, tmp_path, tmp_path / "leaky.png")
    errors, requests = _problems(seen["events"])
    assert any("boom" in e for e in errors)
    assert "http://example.com/x.png" in requests and "https://fonts.example.org/a.css" in requests
    assert set(_page_requests_in_net_log(seen["net_log"])) >= {"http://example.com/x.png",
                                                                "https://fonts.example.org/a.css"}


@pytest.mark.parametrize("which", ["demo", "hostile"])
def test_renders_in_headless_chromium(which: str, demo_run: Path, hostile_run: Path, tmp_path: Path) -> None:
    run_dir = demo_run if which == "demo" else hostile_run
    screenshot = tmp_path / f"gate_report_{which}.png"
    seen = _open_in_chromium(run_dir / "gate_report.html", tmp_path, screenshot)
    probe = seen["probe"]
    errors, requests = _problems(seen["events"])
    assert errors == [], errors
    # the document itself, then only its inline images: nothing over the network
    assert requests and requests[0].startswith("file://"), requests
    assert all(u.startswith(("file://", "data:")) for u in requests), requests
    assert _page_requests_in_net_log(seen["net_log"]) == []
    summary = _summary(run_dir)
    assert probe["verdict"] == summary["verdict"]
    assert probe["scripts"] == 0
    assert probe["images"] >= 3 and probe["imagesDecoded"] == probe["images"]
    assert all(src.startswith("data:image/png;base64") for src in probe["imageSources"])
    assert probe["gateRows"] >= len([g for g in summary["gates"] if g["status"] == "fail"])
    if which == "hostile":
        assert SCRIPT in probe["text"] and "<img src=x onerror=alert(1)>" in probe["text"]
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    keep = os.environ.get("HARNESS_REPORT_SCREENSHOT_DIR")
    if keep:
        shutil.copy(screenshot, Path(keep) / screenshot.name)


def test_a_run_too_small_for_a_tail_draws_its_chart_without_a_warning() -> None:
    """One request a version: the tail panel has nothing to draw, and the run printed matplotlib's "No
    artists with labels found to put in legend" on the console."""
    import warnings

    from harness.report.charts import latency_cdf_chart

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        chart = latency_cdf_chart({"baseline": [(0.5, 1.0), (0.9, 2.0)], "candidate": [(0.5, 1.1), (0.9, 2.1)]},
                                  n={"baseline": 1, "candidate": 1})
    assert chart is not None
