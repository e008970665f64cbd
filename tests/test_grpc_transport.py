"""gRPC legs against a real grpcio server (tests/grpc_v2_server.py): answers in typed and raw contents read
into the V2 JSON form, metadata sent, gRPC statuses mapped to error kinds (DEADLINE_EXCEEDED -> timeout,
NOT_FOUND -> http_4xx 404, INTERNAL -> http_5xx 500, an answer over the cap -> too_large, a port nobody
listens on -> connect), a request that cannot become a call -> harness_error, a failed call's status, details
and trailing metadata (credentials masked) kept as its answer, the send loop on time; grpcs:// verified, its
failures named before sending, and verify: false pinning the server's certificate (warned and recorded)."""
from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from replay_helpers import replay, scenario_dict, write_capture
from stacks import free_port, wait_port

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def grpc_server() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "grpc_v2_server.py"), str(port)], stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
        yield f"grpc://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _rest(i: int, model: str, rows: int = 2) -> dict[str, Any]:
    data = [round(0.1 * ((i + r) % 10), 3) for r in range(rows) for _ in range(3)]
    return {"ts": 1_700_000_000 + i * 0.02, "method": "POST", "path": f"/v2/models/{model}/infer",
            "headers": {"Content-Type": "application/json", "X-Echo-Tenant": f"t{i}", "Authorization": "Bearer s3"},
            "body": {"id": f"r{i}", "inputs": [{"name": "x", "shape": [rows, 3], "datatype": "FP64", "data": data}]},
            "request_id": f"{model}-{i}"}


def _grpc(i: int, model: str) -> dict[str, Any]:
    return {"ts": 1_700_000_000 + i * 0.02, "grpc_service": "inference.GRPCInferenceService",
            "grpc_method": "ModelInfer", "metadata": {"x-echo-tenant": f"g{i}"}, "request_id": f"grpc-{model}-{i}",
            "message": {"model_name": model, "inputs": [{"name": "x", "datatype": "FP64", "shape": ["1", "3"],
                                                         "contents": {"fp64_contents": [0.25, 1, 2]}}]}}


def _legs(con: Any) -> dict[tuple[str, str], dict[str, Any]]:
    cur = con.execute("select l.*, r.captured_request_id from legs l join requests r using (request_id)")
    names = [d[0] for d in cur.description]
    return {(row["captured_request_id"], row["version"]): row for row in (dict(zip(names, r)) for r in cur.fetchall())}


def test_answers_statuses_and_error_kinds(tmp_path: Path, grpc_server: str) -> None:
    records = ([_rest(i, "echo") for i in range(10)] + [_rest(i, "echo-raw") for i in range(10, 20)]
               + [_grpc(i, "echo") for i in range(20, 25)]
               + [_rest(25, "slow"), _rest(26, "missing"), _rest(27, "broken"), _rest(28, "huge"),
                  {"ts": 1_700_000_000.6, "method": "GET", "path": "/v2/models/echo/ready", "request_id": "ready"},
                  {"ts": 1_700_000_000.6, "method": "POST", "path": "/predict", "body": {"x": 1}, "request_id": "rest"}])
    dead = f"grpc://127.0.0.1:{free_port()}"
    sc = scenario_dict(write_capture(tmp_path / "c.jsonl", records), grpc_server, dead, speed=1, timeout_s=1,
                       max_response_bytes=1_000_000)
    sc["targets"]["baseline"]["protocol"] = sc["targets"]["candidate"]["protocol"] = "kserve_v2_grpc"
    con, _ = replay(tmp_path, sc)
    legs = _legs(con)
    assert len(legs) == 2 * len(records)
    base = {k[0]: v for k, v in legs.items() if k[1] == "baseline"}
    for i in range(20):
        leg = base[f"echo-{i}" if i < 10 else f"echo-raw-{i}"]
        assert (leg["status_code"], leg["error_kind"]) == (200, None), leg
        doc = json.loads(leg["output_json"])
        p = round(0.1 * (i % 10), 3)
        assert doc["outputs"][0]["data"][:2] == pytest.approx([p, 1 - p])  # typed and raw contents alike
        assert doc["outputs"][0]["shape"] == [2, 2] and doc["id"] == f"r{i}"
        assert doc["parameters"] == {"tenant": f"t{i}"}  # the captured header went as metadata
        assert leg["row_count"] == 2 and leg["row_scores"][0] == pytest.approx(1 - p)  # class 1 of two
        assert leg["response_bytes"] > 0 and leg["latency_ms"] > 0
    for i in range(20, 25):
        leg = base[f"grpc-echo-{i}"]
        assert (leg["status_code"], leg["error_kind"], leg["row_count"]) == (200, None, 1)
        assert json.loads(leg["output_json"])["parameters"] == {"tenant": f"g{i}"}
    kinds = {name: (base[name]["status_code"], base[name]["error_kind"]) for name in
             ("slow-25", "missing-26", "broken-27", "huge-28", "ready", "rest")}
    assert kinds == {"slow-25": (None, "timeout"), "missing-26": (404, "http_4xx"), "broken-27": (500, "http_5xx"),
                     "huge-28": (None, "too_large"), "ready": (200, None), "rest": (None, "harness_error")}
    assert "NOT_FOUND" in base["missing-26"]["error_detail"] and "DEADLINE" in base["slow-25"]["error_detail"]
    # a failed call keeps why as its answer: status, details, the trailing metadata with credentials masked
    assert json.loads(base["missing-26"]["output_json"]) == {"grpc_status": "NOT_FOUND", "grpc_code": 5,
                                                             "details": "Model missing not found"}
    assert json.loads(base["broken-27"]["output_json"]) == {
        "grpc_status": "INTERNAL", "grpc_code": 13, "details": "the model raised",
        "trailing_metadata": {"x-model-error": "ValueError", "authorization": "[REDACTED]"}}
    assert json.loads(base["slow-25"]["output_json"])["grpc_status"] == "DEADLINE_EXCEEDED"
    assert base["slow-25"]["latency_ms"] >= 1000 and base["missing-26"]["response_bytes"] == 0
    # sent_at is when the call was handed to grpcio: after the intended time, before the answer
    assert all(v["intended_at"] <= v["sent_at"] <= v["done_at"] for v in legs.values())
    assert json.loads(base["ready"]["output_json"]) == {"ready": True}
    assert "neither a inference.GRPCInferenceService call" in base["rest"]["error_detail"]
    # every leg to the port nobody listens on is a connect error, except the one harness could not build
    candidate = [v for k, v in legs.items() if k[1] == "candidate" and k[0] != "rest"]
    assert {leg["error_kind"] for leg in candidate} == {"connect"}, {leg["error_detail"] for leg in candidate}
    # the schedule was kept: no leg left late because another one was waiting for its answer
    lags = [v["send_lag_ms"] for v in legs.values()]
    assert max(lags) < 50, sorted((round(v["send_lag_ms"]), k) for k, v in legs.items())[-5:]


def test_grpcs_verified_and_its_failures_named_before_sending(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    import duckdb

    from harness.cli import main
    from harness.errors import TargetUnreachable
    from harness.replay.grpc_transport import _tls_settings
    from harness.run import check_targets
    from harness.scenario import scenario_from_dict
    from stacks import make_pki

    (tmp_path / "pki").mkdir()
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "grpc_v2_server.py"), str(port), str(pki["server"]),
                             str(pki["server_key"])], stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
        url = f"grpcs://127.0.0.1:{port}"
        records = [_rest(i, "echo") for i in range(10)]

        def scenario(tls: dict[str, Any] | None, target: str = url) -> dict[str, Any]:
            sc = scenario_dict(write_capture(tmp_path / "c.jsonl", records), target, None, speed=1, timeout_s=2)
            sc["targets"]["baseline"]["protocol"] = "kserve_v2_grpc"
            if tls is not None:
                sc["targets"]["baseline"]["tls"] = tls
            return sc

        check_targets(scenario_from_dict(scenario({"ca_file": str(pki["ca"])})))
        (tmp_path / "ok").mkdir()
        (tmp_path / "bad").mkdir()
        con, _ = replay(tmp_path / "ok", scenario({"ca_file": str(pki["ca"])}))
        got = con.execute("select status_code, error_kind, count(*) from legs group by all").fetchall()
        assert got == [(200, None, 10)]
        # verify: false pins the certificate the server presents, warns and is recorded, as for https
        pins = check_targets(scenario_from_dict(scenario({"verify": False})))
        pem, name = pins["baseline"]
        presented = ssl.PEM_cert_to_DER_cert(pki["server"].read_text().split("-----END CERTIFICATE-----")[0]
                                             + "-----END CERTIFICATE-----\n")
        assert ssl.PEM_cert_to_DER_cert(pem) == presented and name in ("localhost", "127.0.0.1")
        # a replay process given the pin trusts it without fetching it again (nothing listens on this port)
        given = _tls_settings("127.0.0.1", free_port(), {"verify": False, "pinned_certificate": pem,
                                                         "pinned_name": name}, 0.5)
        assert given["root_certificates"] == pem.encode()
        assert given["options"] == [("grpc.ssl_target_name_override", name)]
        with pytest.raises(OSError):
            _tls_settings("127.0.0.1", free_port(), {"verify": False}, 0.5)
        (tmp_path / "unverified.yaml").write_text(json.dumps(scenario({"verify": False})))
        assert main(["run", str(tmp_path / "unverified.yaml"), "--out", str(tmp_path / "out")]) in (0, 2)
        assert "TLS certificates are not verified" in capsys.readouterr().out
        con = duckdb.connect(str(next((tmp_path / "out").iterdir()) / "results.duckdb"), read_only=True)
        assert con.execute("select detail from events where kind = 'tls_unverified'").fetchall() == [("baseline",)]
        assert con.execute("select status_code, error_kind, count(*) from legs group by all").fetchall() == \
            [(200, None, 10)]
        con.close()
        with pytest.raises(TargetUnreachable, match="certificate is not trusted"):
            check_targets(scenario_from_dict(scenario(None)))
        with pytest.raises(TargetUnreachable, match="serves TLS \\(use a grpcs:// url"):
            check_targets(scenario_from_dict(scenario(None, url.replace("grpcs://", "grpc://"))))
        # mid-run, an untrusted certificate is the tls kind on every leg
        con, _ = replay(tmp_path / "bad", scenario({"ca_file": str(pki["other_ca"])}))
        assert con.execute("select error_kind, count(*) from legs group by all").fetchall() == [("tls", 10)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    # grpcio checks the dates of a pinned certificate too: an expired one is named before anything is sent
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "grpc_v2_server.py"), str(port), str(pki["expired"]),
                             str(pki["expired_key"])], stderr=subprocess.PIPE)
    try:
        wait_port(port, proc)
        expired = scenario({"verify": False}, f"grpcs://127.0.0.1:{port}")
        with pytest.raises(TargetUnreachable, match="has expired .*gRPC checks its dates even with "
                                                    "targets.baseline.tls.verify: false"):
            check_targets(scenario_from_dict(expired))
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_closing_ends_open_calls_as_timeouts_and_a_lost_process_fails_legs_not_the_run(grpc_server: str) -> None:
    import gevent

    from harness.replay.grpc_transport import GrpcClient
    from harness.replay.transport import send_one
    from harness.replay.wire import RequestHead

    body = json.dumps(_rest(0, "slow")["body"]).encode()
    got: list[Any] = []
    client = GrpcClient(grpc_server, timeout_s=5, connect_timeout_s=2, max_response_bytes=1_000_000)
    client.wait_started()
    ok = send_one(client, "POST", "/v2/models/echo/infer", [], json.dumps(_rest(1, "echo")["body"]).encode())
    assert (ok.status, ok.error_kind) == (200, None) and ok.sent_at is not None
    client.start("POST", "/v2/models/slow/infer", RequestHead([]), body, lambda _t, r, _d: got.append(r), None)
    # handed over for a time that has not come when the replay ends: it ends as the open call does, not before
    # its time, and never leaves
    later_at = time.time() + 30
    ends: list[float] = []
    client.start("POST", "/v2/models/echo/infer", RequestHead([]), body,
                 lambda _t, r, d: (got.append(r), ends.append(d)), None, at=later_at)
    gevent.sleep(0.3)  # the call is open on the server
    client.close()
    assert sorted((r.error_kind, r.error_detail, r.sent_at is None) for r in got) == [
        ("timeout", "gRPC CANCELLED: still open when the replay ended", False),
        ("timeout", "gRPC CANCELLED: still open when the replay ended", True)]
    assert ends == [later_at]
    # the gRPC process dies mid-run: its open legs and every later one are harness errors naming it
    got.clear()
    client = GrpcClient(grpc_server, timeout_s=5, connect_timeout_s=2, max_response_bytes=1_000_000)
    client.wait_started()
    client.start("POST", "/v2/models/slow/infer", RequestHead([]), body, lambda _t, r, _d: got.append(r), None)
    gevent.sleep(0.3)
    client._process._proc.kill()  # noqa: SLF001 - the failure under test
    gevent.sleep(0.5)
    later = send_one(client, "POST", "/v2/models/echo/infer", [], body)
    assert [r.error_kind for r in got] == ["harness_error"] and "gRPC client process exited" in got[0].error_detail
    assert later.error_kind == "harness_error" and "exited" in (later.error_detail or "")
    client.close()
