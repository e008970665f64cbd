"""Known secrets planted in a capture (bearer token, cookie, API key header, api_key and
token query parameters, password / api_key / nested access_token body fields) and a test credential
given through replay.headers with ${ENV} substitution. After a run against a target that echoes back
everything it receives, no file of the run folder (read as bytes, the DuckDB file and any WAL included,
and every DuckDB table read back as text, since DuckDB may compress strings), no log and no console
output contains any of them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import duckdb
import pytest

from fault_server import FaultServer
from reliability_kit import (T0, HarnessProc, assert_no_traceback, check_accounting, run_harness, the_run_dir,
                             write_jsonl, write_scenario)

pytestmark = pytest.mark.integration

CAPTURED = {
    "bearer": "capbearer-7f3a91c2e4",
    "cookie": "capcookie-52be8d0a17",
    "api_key_header": "caphdrkey-9e04c6b3d2",
    "api_key_query": "capqrykey-1d7f2a8e65",
    "token_query": "capqrytok-6a9c3e0b48",
    "password": "capbodypw-3b8e6f1d92",
    "api_key_body": "capbodykey-0c5a7d2e19",
    "access_token": "capnestedtok-84f1b6e3a7",
}
TEST_CREDENTIAL = "testcred-e61d0a5f3c"  # the replay's own credential, from the environment
# Secrets in places the capture format also allows, probed separately (see the tests below).
IN_BAD_RECORD = "capbadrec-2f9e7c4a01"
IN_FORM_BODY = "capformpw-5d1b8a6e3f"


def _capture(path: Path) -> Path:
    c = CAPTURED
    good = [{
        "ts": T0 + i * 0.02, "method": "POST",
        "path": f"/echo?api_key={c['api_key_query']}&token={c['token_query']}&n={i}",
        "headers": {"Content-Type": "application/json", "Authorization": f"Bearer {c['bearer']}",
                    "Cookie": f"session={c['cookie']}; theme=dark", "X-Api-Key": c["api_key_header"],
                    "X-Tenant": "acme"},
        "body": {"password": c["password"], "api_key": c["api_key_body"],
                 "client": {"session": {"access_token": c["access_token"]}}, "amount": i},
    } for i in range(20)]
    return write_jsonl(path, [*good, *_bad_records(), _form_record()])


def _bad_records() -> list[str]:
    # malformed records that carry a secret: a path with a space, a relative path, a broken JSON line
    return [
        json.dumps({"ts": T0 + 1, "method": "GET", "path": f"/echo?api_key={IN_BAD_RECORD} x"}),
        json.dumps({"ts": T0 + 1, "method": "GET", "path": f"echo?token={IN_BAD_RECORD}"}),
        '{"ts": %s, "method": "GET", "path": "/echo", "headers": {"Authorization": "Bearer %s"' % (T0 + 1, IN_BAD_RECORD),
    ]


def _form_record() -> dict[str, Any]:
    return {"ts": T0 + 1.2, "method": "POST", "path": "/echo",
            "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            "body": f"user=alice&password={IN_FORM_BODY}"}


@pytest.fixture(scope="module")
def secret_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("secrets")
    capture = _capture(tmp / "capture.jsonl")
    with FaultServer() as srv:
        scenario = write_scenario(tmp, capture, srv.url, srv.url, name="secrets",
                                  segments={"route": {"path_template": True}, "tenant": {"header": "X-Tenant"}},
                                  replay={"headers": {"Authorization": "Bearer ${REL_TEST_CREDENTIAL}"}})
        p = HarnessProc(["run", str(scenario), "--out", str(tmp / "reports")], tmp,
                        env={"REL_TEST_CREDENTIAL": TEST_CREDENTIAL})
        rc = p.wait(timeout=120)
        received = list(srv.received)
    run_dir = the_run_dir(tmp / "reports")
    report_rc, report_out, report_err = run_harness(["report", run_dir], tmp)
    query_rc, query_out, query_err = run_harness(["query", run_dir, "select * from pairs", "--format", "csv"], tmp)
    yield {"rc": rc, "proc": p, "run_dir": run_dir, "received": received, "capture": capture, "tmp": tmp,
           "console": [p.stdout, p.stderr, report_out, report_err, query_out, query_err],
           "report_rc": report_rc, "query_rc": query_rc}


def _leaks(r: dict[str, Any], secrets: list[str]) -> list[str]:
    """Where any of `secrets` appears: files of the run folder (bytes), DuckDB tables as text, console."""
    found = []
    needles = [s.encode() for s in secrets]
    for f in sorted(r["run_dir"].rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            found += [f"{f.name}: {n.decode()}" for n in needles if n in data]
    for f in r["run_dir"].iterdir():
        if f.name.endswith(".wal"):
            found.append(f"{f.name} left behind")  # read above as bytes too
    con = duckdb.connect(str(r["run_dir"] / "results.duckdb"), read_only=True)
    try:
        tables = [t for (t,) in con.execute("select table_name from information_schema.tables").fetchall()]
        for t in tables:
            for row in con.execute(f'select * from "{t}"').fetchall():
                text = " ".join(str(v) for v in row)
                found += [f"results.duckdb {t}: {s}" for s in secrets if s in text]
    finally:
        con.close()
    for i, text in enumerate(r["console"]):
        found += [f"console output {i}: {s}" for s in secrets if s in text]
    return sorted(set(found))


def test_secret_run_completes(secret_run: dict[str, Any]) -> None:
    assert secret_run["rc"] in (0, 1, 2), secret_run["proc"].stderr
    assert secret_run["report_rc"] in (0, 1, 2) and secret_run["query_rc"] == 0
    for text in secret_run["console"]:
        assert_no_traceback(text)
    counts = check_accounting(secret_run["run_dir"], "paired")
    assert counts["bad_records"] == 3


def test_the_test_credential_is_sent_but_never_stored(secret_run: dict[str, Any]) -> None:
    # the credential from the environment reached the target (so the echo carried it back) ...
    sent = [v for req in secret_run["received"] for k, v in req["headers"] if k.lower() == "authorization"]
    assert sent and all(v == f"Bearer {TEST_CREDENTIAL}" for v in sent), sent
    # ... and the captured credentials were never sent at all
    raw = json.dumps([[req["target"], req["headers"], req["body"].decode("latin-1")] for req in secret_run["received"]])
    assert [s for s in CAPTURED.values() if s in raw] == []
    assert _leaks(secret_run, [TEST_CREDENTIAL]) == []


def test_no_captured_secret_in_run_folder_logs_or_console(secret_run: dict[str, Any]) -> None:
    assert (secret_run["run_dir"] / "harness.log").exists()
    assert _leaks(secret_run, list(CAPTURED.values())) == []


def test_no_secret_from_a_malformed_record(secret_run: dict[str, Any]) -> None:
    out = subprocess.run([sys.executable, "-m", "harness", "traffic", "inspect", str(secret_run["capture"])],
                         capture_output=True, text=True, timeout=60, cwd=secret_run["tmp"])
    assert out.returncode == 0, out.stderr
    assert IN_BAD_RECORD not in out.stdout + out.stderr
    assert _leaks(secret_run, [IN_BAD_RECORD]) == []


def test_no_secret_from_a_form_encoded_body(secret_run: dict[str, Any]) -> None:
    assert _leaks(secret_run, [IN_FORM_BODY]) == []
