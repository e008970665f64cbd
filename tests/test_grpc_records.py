"""Unit tier for gRPC (protocol kserve_v2_grpc): REST V2 requests as ModelInferRequest, answers in the V2
JSON form, the gRPC capture record in every line and table reader, inspect and convert, status mapping,
metadata, and the scenario's rules for grpc:// targets."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import grpc
import pytest

from harness.errors import ScenarioError
from harness.protocols import read_output
from harness.protocols.grpc_v2 import grpc_predict_v2_pb2 as pb
from harness.protocols.kserve_v2_grpc import GrpcRequestError, answer_doc, grpc_path, request_for
from harness.replay.grpc_transport import metadata_of, status_result
from harness.replay.wire import RequestHead
from harness.scenario import RowsConfig, scenario_from_dict
from harness.traffic.convert import convert_capture
from harness.traffic.inspect import inspect_capture
from harness.traffic.readers import iter_records
from harness.traffic.record import BadRecord, CapturedRequest
from harness.traffic.request_rows import request_row_count

INFER = "/inference.GRPCInferenceService/ModelInfer"


def _rest_body(**extra: Any) -> bytes:
    return json.dumps({"id": "r1", "parameters": {"a": True, "b": 3, "c": "x"},
                       "inputs": [{"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [[1, 2], [3, 4]]},
                                  {"name": "s", "shape": [2], "datatype": "BYTES", "data": ["hé", "b"]}],
                       "outputs": [{"name": "predict_proba"}], **extra}).encode()


def test_a_rest_infer_request_becomes_model_infer() -> None:
    path, raw = request_for("POST", "/v2/models/iris/versions/3/infer?x=1", _rest_body())
    assert path == INFER
    msg = pb.ModelInferRequest.FromString(raw)
    assert (msg.model_name, msg.model_version, msg.id) == ("iris", "3", "r1")
    assert list(msg.inputs[0].shape) == [2, 2] and list(msg.inputs[0].contents.fp32_contents) == [1, 2, 3, 4]
    assert list(msg.inputs[1].contents.bytes_contents) == ["hé".encode(), b"b"]
    assert msg.parameters["a"].bool_param is True and msg.parameters["b"].int64_param == 3
    assert msg.parameters["c"].string_param == "x" and [o.name for o in msg.outputs] == ["predict_proba"]


@pytest.mark.parametrize(("method", "path", "rpc", "fields"), [
    ("GET", "/v2/models/iris/ready", "ModelReady", {"name": "iris"}),
    ("GET", "/v2/models/iris/versions/2", "ModelMetadata", {"name": "iris", "version": "2"}),
    ("GET", "/v2/health/live", "ServerLive", {}),
    ("GET", "/v2/health/ready", "ServerReady", {}),
    ("GET", "/v2", "ServerMetadata", {}),
])
def test_rest_health_and_metadata_paths_become_their_methods(method: str, path: str, rpc: str,
                                                             fields: dict[str, str]) -> None:
    got, raw = request_for(method, path, b"")
    assert got == grpc_path(rpc)
    from harness.protocols.kserve_v2_grpc import METHODS

    msg = METHODS[rpc][0].FromString(raw)
    assert {k: getattr(msg, k) for k in fields} == fields


@pytest.mark.parametrize(("method", "path", "body", "words"), [
    ("POST", "/predict", b"{}", "neither a inference.GRPCInferenceService call"),
    ("POST", "/v2/models/m/infer", b"[1]", "not a JSON object"),
    ("POST", "/v2/models/m/infer", b"{", "not JSON"),
    ("POST", "/v2/models/m/infer", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP16", "data": [1]}]}',
     "FP16"),
    ("POST", "/v2/models/m/infer", b'{"inputs": [{"name": "x", "shape": [1], "datatype": "INT32", "data": ["a"]}]}',
     "inputs[0].data does not fit INT32"),
    ("POST", "/other.Service/ModelInfer", b"{}", "not a method of inference.GRPCInferenceService"),
    ("POST", INFER, b'{"modelName": 3, "nope": 1}', "not a ModelInferRequest in protobuf's JSON mapping"),
])
def test_requests_that_cannot_be_calls_say_why(method: str, path: str, body: bytes, words: str) -> None:
    with pytest.raises(GrpcRequestError) as info:
        request_for(method, path, body)
    assert words in str(info.value)


def test_a_grpc_message_in_json_mapping_is_sent_as_it_is() -> None:
    body = json.dumps({"modelName": "m", "inputs": [{"name": "x", "datatype": "INT64", "shape": ["1", "2"],
                                                      "contents": {"int64Contents": ["9007199254740993", 2]}}]})
    _, raw = request_for("POST", INFER, body.encode())
    msg = pb.ModelInferRequest.FromString(raw)
    assert list(msg.inputs[0].contents.int64_contents) == [9007199254740993, 2]  # int64 as a string, exact


def _answer(raw: bool) -> bytes:
    msg = pb.ModelInferResponse(model_name="m", model_version="v2", id="r1")
    msg.parameters["tenant"].string_param = "acme"
    probs = [0.2, 0.8, 0.9, 0.1]
    out = msg.outputs.add(name="predict_proba", datatype="FP64", shape=[2, 2])
    label = msg.outputs.add(name="labels", datatype="BYTES", shape=[2])
    if raw:
        msg.raw_output_contents.append(struct.pack("<4d", *probs))
        msg.raw_output_contents.append(b"".join(len(s).to_bytes(4, "little") + s for s in (b"yes", b"no")))
    else:
        out.contents.fp64_contents.extend(probs)
        label.contents.bytes_contents.extend([b"yes", b"no"])
    return msg.SerializeToString()


@pytest.mark.parametrize("raw", [False, True])
def test_answers_read_into_the_v2_json_form_typed_or_raw(raw: bool) -> None:
    doc = answer_doc(INFER, _answer(raw))
    assert doc == {"model_name": "m", "model_version": "v2", "id": "r1", "parameters": {"tenant": "acme"},
                   "outputs": [{"name": "predict_proba", "shape": [2, 2], "datatype": "FP64", "data": [0.2, 0.8, 0.9, 0.1]},
                               {"name": "labels", "shape": [2], "datatype": "BYTES", "data": ["yes", "no"]}]}
    out = read_output("kserve_v2_grpc", 200, _answer(raw), "$.prediction", "$.confidence",
                      headers={":path": INFER}, rows=RowsConfig(path="predict_proba"))
    assert out.row_count == 2 and out.row_labels == ("yes", "no") and out.row_scores == pytest.approx((0.8, 0.1))
    assert out.model_version == "v2"


def test_an_answer_that_is_not_the_message_is_invalid_and_errors_have_no_document() -> None:
    assert read_output("kserve_v2_grpc", 200, b"\xff\xff\xff", "$.p", "$.c", headers={":path": INFER}).invalid_json
    assert read_output("kserve_v2_grpc", 404, b"", "$.p", "$.c").doc is None
    ready = read_output("kserve_v2_grpc", 200, pb.ModelReadyResponse(ready=False).SerializeToString(), "$.p", "$.c",
                        headers={":path": grpc_path("ModelReady")})
    assert ready.doc == {"ready": False}


@pytest.mark.parametrize(("code", "details", "kind", "status"), [
    (grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", "timeout", None),
    (grpc.StatusCode.UNAVAILABLE, "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
     "Failed to connect to remote host: Connection refused", "connect", None),
    (grpc.StatusCode.UNAVAILABLE, "Socket closed", "reset", None),
    (grpc.StatusCode.UNAVAILABLE, "Ssl handshake failed: SSL_ERROR_SSL: CERTIFICATE_VERIFY_FAILED", "tls", None),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (4000018 vs. 1000000)", "too_large", None),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "quota", "http_4xx", 429),
    (grpc.StatusCode.NOT_FOUND, "Model x not found", "http_4xx", 404),
    (grpc.StatusCode.INVALID_ARGUMENT, "bad shape", "http_4xx", 400),
    (grpc.StatusCode.UNAUTHENTICATED, "", "http_4xx", 401),
    (grpc.StatusCode.INTERNAL, "boom", "http_5xx", 500),
    (grpc.StatusCode.UNIMPLEMENTED, "", "http_5xx", 501),
    (grpc.StatusCode.CANCELLED, "", "reset", None),
])
def test_grpc_statuses_map_to_error_kinds(code: grpc.StatusCode, details: str, kind: str, status: int | None) -> None:
    result = status_result(code, details)
    assert (result.error_kind, result.status) == (kind, status)
    assert result.error_detail is not None and result.error_detail.startswith(f"gRPC {code.name}")
    assert status_result(grpc.StatusCode.CANCELLED, "", closing=True).error_kind == "timeout"


def test_a_failed_call_keeps_why_as_its_body() -> None:
    trailing = (("x-request-id", "abc"), ("authorization", "Bearer s3cret"), ("trace-bin", b"\x00\x01"))
    result = status_result(grpc.StatusCode.NOT_FOUND, "Model m not found", trailing=trailing, sent_at=5.0)
    assert (result.status, result.error_kind, result.response_bytes, result.decoded_bytes, result.sent_at) == \
        (404, "http_4xx", 0, 0, 5.0)
    doc = json.loads(result.body)
    assert doc == {"grpc_status": "NOT_FOUND", "grpc_code": 5, "details": "Model m not found",
                   "trailing_metadata": {"x-request-id": "abc", "authorization": "[REDACTED]", "trace-bin": "AAE="}}
    assert read_output("kserve_v2_grpc", 404, result.body, "$.p", "$.c", headers=result.headers).doc == doc
    big = status_result(grpc.StatusCode.INTERNAL, "boom", trailing=(("x-stack", "y" * 5000),))
    assert json.loads(big.body) == {"grpc_status": "INTERNAL", "grpc_code": 13, "details": "boom",
                                    "trailing_metadata_chars": 5015}
    assert json.loads(status_result(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded").body)["grpc_code"] == 4


def test_metadata_from_captured_headers() -> None:
    head = RequestHead([("Content-Type", "application/json"), ("X-Tenant", "acme"), ("User-Agent", "curl"),
                        ("grpc-timeout", "1S"), ("Trace-Bin", "AAEC"), ("Accept-Encoding", "gzip")])
    assert metadata_of(head) == (("x-tenant", "acme"), ("trace-bin", b"\x00\x01\x02"))
    with pytest.raises(ValueError, match="Trace-Bin"):
        metadata_of(RequestHead([("Trace-Bin", "not base64!")]))


GRPC_RECORD = {"ts": 1_700_000_000.5, "grpc_service": "inference.GRPCInferenceService", "grpc_method": "ModelInfer",
               "metadata": {"x-tenant": "acme", "authorization": "Bearer secret-token"},
               "message": {"model_name": "m", "inputs": [{"name": "x", "datatype": "FP64", "shape": ["3", "2"],
                                                          "contents": {"fp64_contents": [1, 2, 3, 4, 5, 6]}}]},
               "tenant": "acme"}


def _read(path: Path) -> list[CapturedRequest | BadRecord]:
    return list(iter_records(path))


def _check_grpc(req: CapturedRequest | BadRecord) -> None:
    assert isinstance(req, CapturedRequest), req
    assert (req.method, req.path) == ("POST", INFER)
    assert req.header("x-tenant") == "acme"
    assert json.loads(req.body) == GRPC_RECORD["message"]
    assert req.meta["grpc_method"] == "ModelInfer" and req.meta["tenant"] == "acme"
    assert request_row_count(req.body, "kserve_v2_grpc") == 3  # int64 shape written as strings


def test_the_grpc_record_in_jsonl_csv_and_parquet(tmp_path: Path) -> None:
    jsonl = tmp_path / "c.jsonl"
    jsonl.write_text(json.dumps(GRPC_RECORD) + "\n")
    _check_grpc(_read(jsonl)[0])
    csv = tmp_path / "c.csv"
    import csv as csv_mod

    with open(csv, "w", newline="") as f:
        w = csv_mod.writer(f)
        w.writerow(["ts", "grpc_service", "grpc_method", "metadata", "message", "tenant"])
        w.writerow([GRPC_RECORD["ts"], GRPC_RECORD["grpc_service"], GRPC_RECORD["grpc_method"],
                    json.dumps(GRPC_RECORD["metadata"]), json.dumps(GRPC_RECORD["message"]), "acme"])
    _check_grpc(_read(csv)[0])
    parquet = convert_capture(jsonl, "parquet")
    assert parquet is not None
    _check_grpc(_read(parquet)[0])
    back = convert_capture(parquet, "jsonl", output=str(tmp_path / "back.jsonl"))
    assert back is not None
    rec = json.loads(back.read_text())
    assert {k: rec[k] for k in ("grpc_service", "grpc_method", "message")} == \
        {k: GRPC_RECORD[k] for k in ("grpc_service", "grpc_method", "message")}
    assert rec["metadata"]["x-tenant"] == "acme" and "secret-token" not in back.read_text()  # masked on convert
    assert "method" not in rec and "path" not in rec
    ins = inspect_capture(jsonl)
    assert ins.methods == {"gRPC": 1} and dict(ins.routes) == {INFER: 1}


@pytest.mark.parametrize(("change", "words"), [
    ({"grpc_service": "not a service!"}, "grpc_service must be"),
    ({"grpc_method": "a/b"}, "grpc_method must be"),
    ({"message": [1]}, "message must be an object"),
    ({"message": "{nope"}, "message is not JSON"),
    ({"headers": {"a": "b"}}, "both metadata and headers"),
    ({"method": "GET"}, "a gRPC call is a POST"),
    ({"path": "/x"}, "is not the gRPC call's"),
])
def test_bad_grpc_records_are_bad_records_naming_the_field(tmp_path: Path, change: dict[str, Any], words: str) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({**GRPC_RECORD, **change}) + "\n" + json.dumps(GRPC_RECORD) + "\n")
    got = _read(path)
    assert isinstance(got[0], BadRecord) and words in got[0].reason and got[0].line == 1
    assert isinstance(got[1], CapturedRequest)


def _scenario(tmp_path: Path, url: str, protocol: str | None, tls: dict[str, Any] | None = None) -> dict[str, Any]:
    (tmp_path / "c.jsonl").write_text(json.dumps(GRPC_RECORD) + "\n")
    target: dict[str, Any] = {"url": url}
    if protocol:
        target["protocol"] = protocol
    if tls is not None:
        target["tls"] = tls
    return {"name": "t", "traffic": {"path": str(tmp_path / "c.jsonl")}, "targets": {"baseline": target},
            "replay": {"mode": "baseline-only"}}


@pytest.mark.parametrize(("url", "protocol", "tls", "words"), [
    ("grpc://127.0.0.1:1", "kserve_v2", None, "protocol kserve_v2_grpc and a grpc:// (or grpcs://) url go together"),
    ("http://127.0.0.1:1", "kserve_v2_grpc", None, "go together"),
    ("grpc://127.0.0.1:1", "kserve_v2_grpc", {"server_name": "x"}, "not https:// or grpcs://"),
])
def test_scenario_rules_for_grpc_targets(tmp_path: Path, url: str, protocol: str, tls: dict[str, Any] | None,
                                         words: str) -> None:
    with pytest.raises(ScenarioError) as info:
        scenario_from_dict(_scenario(tmp_path, url, protocol, tls))
    assert words in str(info.value) and "targets.baseline" in str(info.value)
    ok = scenario_from_dict(_scenario(tmp_path, "grpc://127.0.0.1:1", "kserve_v2_grpc"))
    assert ok.targets["baseline"].protocol == "kserve_v2_grpc"
    # verify: false is taken for grpcs:// (the server's certificate is pinned: tests/test_grpc_transport.py)
    pinned = scenario_from_dict(_scenario(tmp_path, "grpcs://127.0.0.1:1", "kserve_v2_grpc", {"verify": False}))
    assert pinned.targets["baseline"].tls == {"verify": False}


def test_harness_shadow_refuses_grpc_targets_by_name(tmp_path: Path) -> None:
    from harness.shadow.run import run_shadow

    sc = _scenario(tmp_path, "grpc://127.0.0.1:1", "kserve_v2_grpc")
    sc["targets"]["candidate"] = {"url": "http://127.0.0.1:2"}
    sc["replay"]["mode"] = "paired"
    with pytest.raises(ScenarioError, match="targets.baseline: harness shadow proxies HTTP only"):
        run_shadow(scenario_from_dict(sc), "127.0.0.1:0", tmp_path / "out")
