"""Replays against real serving stacks started on 127.0.0.1: a uvicorn/Starlette app with GZipMiddleware
(as MLServer's REST app) and Debian's nginx with gzip, TLS and mutual TLS (certificates from a CA the test
makes). Each: a paired and an A/A replay with 0 harness-made errors and no failing gate; TLS failures are
one line and exit 4 before anything is sent."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import duckdb
import pytest
import yaml

from harness.cli import main

from stacks import NGINX, make_pki, nginx, uvicorn_app
from stacks import free_port as _free_port

pytestmark = pytest.mark.integration

BROWSER_HEADERS = {"Accept-Encoding": "gzip, deflate", "Content-Type": "application/json",
                   "User-Agent": "python-requests/2.32.3"}


def _capture(path: Path, records: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _infer_records(n: int, rows: int = 40) -> list[dict[str, Any]]:
    return [{"ts": 1_700_000_000 + i * 0.02, "method": "POST", "path": "/v2/models/m/infer", "headers": BROWSER_HEADERS,
             "body": {"id": str(i), "inputs": [{"name": "x", "datatype": "FP64", "shape": [rows, 3],
                                                "data": [[(i * 7 + r) * 0.013, r * 0.1, 0.5] for r in range(rows)]}]}}
            for i in range(n)]


def _scenario(tmp_path: Path, capture: Path, baseline: dict[str, Any], candidate: dict[str, Any] | None,
              mode: str = "paired", protocol: str = "kserve_v2", **replay: Any) -> Path:
    d: dict[str, Any] = {
        "name": "stack", "traffic": {"path": str(capture), "speed": 1},
        "segments": {"route": {"path_template": True}},
        "targets": {"baseline": {"protocol": protocol, **baseline}},
        "replay": {"mode": mode, "allow": ["POST /v2/*"], "timeout_s": 5, **replay},
        "promotion_gates": {"error_rate": {"maximum": 0.05}, "latency_p95_ms": {"maximum_regression_percent": 50}},
        "output": {"prediction": "$.outputs[0].data[0]"},  # sklearn's output name, "predict", is not a label name
    }
    if candidate is not None:
        d["targets"]["candidate"] = {"protocol": protocol, **candidate}
    path = tmp_path / f"scenario-{mode}.yaml"
    path.write_text(yaml.safe_dump(d))
    return path


def _run(scenario: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, Path | None, str]:
    code = main(["run", str(scenario), "--out", str(out)])
    err = capsys.readouterr().err
    runs = sorted(out.glob("stack-*")) if out.exists() else []
    return code, (runs[-1] if runs else None), err


def _legs(run_dir: Path) -> list[dict[str, Any]]:
    con = duckdb.connect(str(run_dir / "results.duckdb"), read_only=True)
    try:
        cur = con.execute("select version, status_code, error_kind, error_detail, response_bytes, decoded_bytes, "
                          "content_encoding, prediction, schema_valid from legs")
        names = [c[0] for c in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]
    finally:
        con.close()


def _no_gate_fails(run_dir: Path) -> None:
    summary = json.loads((run_dir / "summary.json").read_text())
    failed = [g for g in summary["gates"] if g["status"] == "fail"]
    assert not failed, failed
    assert summary["verdict"] != "BLOCK"


# -- uvicorn / Starlette with GZipMiddleware ------------------------------------------------------------------------
def test_gzip_answers_from_starlette_are_decoded_paired_and_aa(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = _capture(tmp_path / "c.jsonl", _infer_records(40))
    with uvicorn_app(tmp_path) as url:
        for mode in ("paired", "aa"):
            scenario = _scenario(tmp_path, capture, {"url": url}, {"url": url}, mode=mode)
            code, run_dir, err = _run(scenario, tmp_path / f"out-{mode}", capsys)
            assert run_dir is not None, err
            legs = _legs(run_dir)
            assert len(legs) == 80
            assert [leg for leg in legs if leg["error_kind"] is not None] == []  # no invalid_json of our making
            assert {leg["content_encoding"] for leg in legs} == {"gzip"}
            assert all(leg["decoded_bytes"] > 1000 > leg["response_bytes"] for leg in legs), legs[0]
            assert {leg["prediction"] for leg in legs} <= {"0", "1"} and len({leg["prediction"] for leg in legs}) == 2
            _no_gate_fails(run_dir)
            assert code in (0, 2)


def test_accept_encoding_identity_asks_for_plain_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    capture = _capture(tmp_path / "c.jsonl", _infer_records(10))
    with uvicorn_app(tmp_path) as url:
        scenario = _scenario(tmp_path, capture, {"url": url}, None, mode="baseline-only", accept_encoding="identity")
        _, run_dir, err = _run(scenario, tmp_path / "out", capsys)
        assert run_dir is not None, err
        legs = _legs(run_dir)
        assert len(legs) == 10 and {leg["error_kind"] for leg in legs} == {None}
        assert {leg["content_encoding"] for leg in legs} == {None}
        assert all(leg["decoded_bytes"] == leg["response_bytes"] > 1000 for leg in legs)


# -- nginx: gzip, TLS, mutual TLS -----------------------------------------------------------------------------------
needs_nginx = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (CI installs Debian's nginx)")


@pytest.fixture(scope="module")
def nginx_stack(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if NGINX is None:
        pytest.skip("nginx is not installed (CI installs Debian's nginx)")
    folder = tmp_path_factory.mktemp("nginx")
    pki = make_pki(folder)
    answer = {"model_name": "m", "outputs": [{"name": "predict", "datatype": "INT64", "shape": [1], "data": [1]},
                                             {"name": "notes", "datatype": "BYTES", "shape": [1],
                                              "data": ["all fine " * 400]}]}
    (folder / "answer.json").write_text(json.dumps(answer))
    ports = {name: _free_port() for name in ("plain", "tls", "tls2", "mtls", "expired")}
    root = f"root {folder}; location / {{ try_files /answer.json =404; }}"

    def tls(port: int, cert: str, extra: str = "") -> str:
        return (f"server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {pki[cert]}; "
                f"ssl_certificate_key {pki[cert + '_key']}; {extra} {root} }}")

    servers = "\n".join([
        f"server {{ listen 127.0.0.1:{ports['plain']}; {root} }}",
        tls(ports["tls"], "server"), tls(ports["tls2"], "server"),
        tls(ports["mtls"], "server", f"ssl_verify_client on; ssl_client_certificate {pki['ca']};"),
        tls(ports["expired"], "expired"),
    ])
    with nginx(folder, servers):
        yield {"pki": pki, "ports": ports, "folder": folder}


def _get_records(n: int) -> list[dict[str, Any]]:
    return [{"ts": 1_700_000_000 + i * 0.02, "method": "GET", "path": f"/v2/models/m/ready?i={i}",
             "headers": BROWSER_HEADERS} for i in range(n)]


@needs_nginx
def test_nginx_gzip_and_tls_verified_paired_and_aa(tmp_path: Path, nginx_stack: Any,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pki, ports = nginx_stack["pki"], nginx_stack["ports"]
    capture = _capture(tmp_path / "c.jsonl", _get_records(30))
    tls = {"ca_file": str(pki["ca"])}
    targets = [({"url": f"http://127.0.0.1:{ports['plain']}"}, {"url": f"https://127.0.0.1:{ports['tls']}", "tls": tls}),
               ({"url": f"https://localhost:{ports['tls']}", "tls": tls},
                {"url": f"https://127.0.0.1:{ports['tls2']}", "tls": tls})]
    for i, (baseline, candidate) in enumerate(targets):
        for mode in ("paired", "aa"):
            scenario = _scenario(tmp_path, capture, baseline, candidate, mode=mode)
            code, run_dir, err = _run(scenario, tmp_path / f"out-{i}-{mode}", capsys)
            assert run_dir is not None, err
            legs = _legs(run_dir)
            assert len(legs) == 60
            assert [leg for leg in legs if leg["error_kind"] is not None] == []
            assert {leg["content_encoding"] for leg in legs} == {"gzip"}  # nginx compresses it (chunked)
            assert all(leg["decoded_bytes"] > 3000 > leg["response_bytes"] for leg in legs)
            assert {leg["prediction"] for leg in legs} == {"1"}
            _no_gate_fails(run_dir)
            assert code in (0, 2)


@needs_nginx
def test_mutual_tls_with_a_client_certificate(tmp_path: Path, nginx_stack: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    pki, ports = nginx_stack["pki"], nginx_stack["ports"]
    capture = _capture(tmp_path / "c.jsonl", _get_records(20))
    tls = {"ca_file": str(pki["ca"]), "client_cert": str(pki["client"]), "client_key": str(pki["client_key"])}
    url = f"https://127.0.0.1:{ports['mtls']}"
    scenario = _scenario(tmp_path, capture, {"url": url, "tls": tls}, {"url": url, "tls": tls})
    _, run_dir, err = _run(scenario, tmp_path / "out", capsys)
    assert run_dir is not None, err
    legs = _legs(run_dir)
    assert len(legs) == 40 and {(leg["status_code"], leg["error_kind"]) for leg in legs} == {(200, None)}


def _tls_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], baseline: dict[str, Any]) -> str:
    tmp_path.mkdir(exist_ok=True)
    capture = _capture(tmp_path / "c.jsonl", _get_records(5))
    scenario = _scenario(tmp_path, capture, baseline, None, mode="baseline-only")
    code, run_dir, err = _run(scenario, tmp_path / "out", capsys)
    assert code == 4 and run_dir is None  # before anything is sent: no run folder
    lines = err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


@needs_nginx
def test_tls_failures_are_one_line_and_exit_4_before_sending(tmp_path: Path, nginx_stack: Any,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    pki, ports = nginx_stack["pki"], nginx_stack["ports"]
    ca = {"ca_file": str(pki["ca"])}
    cases = {
        "untrusted": ({"url": f"https://127.0.0.1:{ports['tls']}"}, "certificate is not trusted"),
        "other CA": ({"url": f"https://127.0.0.1:{ports['tls']}", "tls": {"ca_file": str(pki["other_ca"])}},
                     "certificate is not trusted"),
        "expired": ({"url": f"https://127.0.0.1:{ports['expired']}", "tls": ca}, "certificate has expired"),
        "name": ({"url": f"https://127.0.0.1:{ports['tls']}", "tls": {**ca, "server_name": "model.internal"}},
                 "does not match the name 'model.internal'"),
        "no client cert": ({"url": f"https://127.0.0.1:{ports['mtls']}", "tls": ca},
                           "requires a client certificate"),
        "client cert of another CA": ({"url": f"https://127.0.0.1:{ports['mtls']}",
                                       "tls": {**ca, "client_cert": str(pki["stranger_client"]),
                                               "client_key": str(pki["stranger_client_key"])}},
                                      "check targets.baseline.tls.client_cert"),
        "plain HTTP port": ({"url": f"https://127.0.0.1:{ports['plain']}", "tls": ca}, "does not speak TLS"),
    }
    for i, (name, (baseline, expected)) in enumerate(cases.items()):
        line = _tls_refused(tmp_path / str(i), capsys, baseline)
        assert expected in line and "TLS:" in line, (name, line)


@needs_nginx
def test_an_http_url_on_a_tls_port_is_one_line_and_exit_4(tmp_path: Path, nginx_stack: Any,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    ports = nginx_stack["ports"]
    for i, port in enumerate((ports["tls"], ports["mtls"])):  # nginx answers plain HTTP there with a 400
        line = _tls_refused(tmp_path / str(i), capsys, {"url": f"http://127.0.0.1:{port}"})
        assert "the port serves TLS, not plain HTTP" in line and "use an https:// url" in line, line
    # and a plain HTTP port stays accepted by the same check
    capture = _capture(tmp_path / "c.jsonl", _get_records(3))
    scenario = _scenario(tmp_path, capture, {"url": f"http://127.0.0.1:{ports['plain']}"}, None, mode="baseline-only")
    code, run_dir, err = _run(scenario, tmp_path / "out-plain", capsys)
    assert run_dir is not None, err


@needs_nginx
def test_verify_false_warns_and_is_recorded(tmp_path: Path, nginx_stack: Any,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    ports = nginx_stack["ports"]
    capture = _capture(tmp_path / "c.jsonl", _get_records(5))
    scenario = _scenario(tmp_path, capture, {"url": f"https://127.0.0.1:{ports['expired']}", "tls": {"verify": False}},
                         None, mode="baseline-only")
    code = main(["run", str(scenario), "--out", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert "TLS certificates are not verified" in out
    run_dir = next((tmp_path / "out").glob("stack-*"))
    con = duckdb.connect(str(run_dir / "results.duckdb"), read_only=True)
    assert con.execute("select detail from events where kind = 'tls_unverified'").fetchall() == [("baseline",)]
    assert con.execute("select count(*) from legs where error_kind is null").fetchone() == (5,)
    con.close()
    assert code in (0, 2)


def test_a_handshake_that_hangs_is_a_timeout_at_the_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)  # accepts (the kernel does), never answers the ClientHello
    port = listener.getsockname()[1]
    try:
        line = _tls_refused(tmp_path, capsys, {"url": f"https://127.0.0.1:{port}"})
        assert "TLS handshake did not finish within" in line
    finally:
        threading.Thread(target=listener.close).start()
