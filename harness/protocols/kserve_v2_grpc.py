"""The Open Inference Protocol (KServe V2) over gRPC: messages to and from the V2 JSON form.

A target with `protocol: kserve_v2_grpc` (URL grpc://host:port, or grpcs:// for TLS) is called through
`inference.GRPCInferenceService` (harness/protocols/grpc_v2/grpc_predict_v2.proto). What is sent is built
from the captured request (`request_for`):
- a gRPC capture record (path `/inference.GRPCInferenceService/<Method>`, the message in protobuf's JSON
  mapping) is parsed into that method's request message as it is;
- a REST capture of the same protocol is translated, so that one capture replays over REST and gRPC alike:
  `POST /v2/models/{name}[/versions/{v}]/infer` (the V2 JSON request) -> ModelInfer, `GET /v2/health/live`
  -> ServerLive, `/v2/health/ready` -> ServerReady, `/v2/models/{name}[/versions/{v}]/ready` -> ModelReady,
  `GET /v2/models/{name}[/versions/{v}]` -> ModelMetadata, `GET /v2` -> ServerMetadata.
The answer is read back into the V2 JSON form (`answer_doc`): a ModelInferResponse becomes
`{"model_name", "model_version", "id", "parameters", "outputs": [{"name", "datatype", "shape", "data"}]}` with
`data` flat and row-major whether the server filled `contents` or `raw_output_contents`, which is the
document MLServer's REST endpoint answers; so schemas, field diffs, predictions, rows and gates are those of
kserve_v2. Other answers are protobuf's JSON mapping with the proto's field names.

This module needs protobuf only; the calls themselves are made by harness.replay.grpc_transport.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Mapping

from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message

from .grpc_v2 import grpc_predict_v2_pb2 as pb
from .json_protocol import OutputRead, loads
from .kserve_v2 import read_kserve_v2_doc

__all__ = ["SERVICE", "METHODS", "GrpcRequestError", "request_for", "answer_doc", "read_kserve_v2_grpc_output",
           "grpc_path", "is_grpc_path"]

SERVICE = "inference.GRPCInferenceService"
METHODS: dict[str, tuple[type[Message], type[Message]]] = {
    "ServerLive": (pb.ServerLiveRequest, pb.ServerLiveResponse),
    "ServerReady": (pb.ServerReadyRequest, pb.ServerReadyResponse),
    "ModelReady": (pb.ModelReadyRequest, pb.ModelReadyResponse),
    "ServerMetadata": (pb.ServerMetadataRequest, pb.ServerMetadataResponse),
    "ModelMetadata": (pb.ModelMetadataRequest, pb.ModelMetadataResponse),
    "ModelInfer": (pb.ModelInferRequest, pb.ModelInferResponse),
}
_GRPC_PATH = re.compile(r"\A/([A-Za-z_][\w.]*)/([A-Za-z_]\w*)\Z")
_MODEL = r"/v2/models/(?P<name>[^/?#]+)(?:/versions/(?P<version>[^/?#]+))?"
_REST = (
    ("POST", re.compile(_MODEL + r"/infer\Z"), "ModelInfer"),
    ("GET", re.compile(_MODEL + r"/ready\Z"), "ModelReady"),
    ("GET", re.compile(_MODEL + r"\Z"), "ModelMetadata"),
    ("GET", re.compile(r"/v2/health/live\Z"), "ServerLive"),
    ("GET", re.compile(r"/v2/health/ready\Z"), "ServerReady"),
    ("GET", re.compile(r"/v2/?\Z"), "ServerMetadata"),
)
# V2 data type -> the InferTensorContents field that carries it
_CONTENTS = {"BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents", "INT32": "int_contents",
             "INT64": "int64_contents", "UINT8": "uint_contents", "UINT16": "uint_contents",
             "UINT32": "uint_contents", "UINT64": "uint64_contents", "FP32": "fp32_contents",
             "FP64": "fp64_contents", "BYTES": "bytes_contents"}
# raw_output_contents: little-endian, as numpy reads them (BYTES: 4-byte length, then the bytes, per element)
_RAW_DTYPES = {"BOOL": "?", "INT8": "<i1", "INT16": "<i2", "INT32": "<i4", "INT64": "<i8", "UINT8": "<u1",
               "UINT16": "<u2", "UINT32": "<u4", "UINT64": "<u8", "FP16": "<f2", "FP32": "<f4", "FP64": "<f8"}


class GrpcRequestError(ValueError):
    """A captured request that cannot become a gRPC call; the message says why (recorded as harness_error:
    nothing was sent)."""


def is_grpc_path(path: str) -> bool:
    return _GRPC_PATH.match(path.split("?", 1)[0]) is not None


def grpc_path(method: str) -> str:
    return f"/{SERVICE}/{method}"


def request_for(http_method: str, path: str, body: bytes) -> tuple[str, bytes]:
    """(the method's full path, the serialized request message) for a captured request."""
    bare = path.split("?", 1)[0]
    m = _GRPC_PATH.match(bare)
    if m is not None:
        service, method = m.groups()
        if service != SERVICE or method not in METHODS:
            raise GrpcRequestError(f"{bare}: not a method of {SERVICE} ({', '.join(METHODS)})")
        message = METHODS[method][0]()
        try:
            json_format.Parse(body or b"{}", message)
        except json_format.ParseError as exc:
            raise GrpcRequestError(f"the message is not a {type(message).__name__} in protobuf's JSON mapping: "
                                   f"{exc}"[:300]) from None
        return bare, message.SerializeToString()
    for verb, pattern, method in _REST:
        rm = pattern.match(bare)
        if rm is not None and http_method.upper() == verb:
            return grpc_path(method), _from_rest(method, rm.groupdict(), body).SerializeToString()
    raise GrpcRequestError(f"{http_method} {bare[:200]}: neither a {SERVICE} call nor a KServe V2 REST request")


def _from_rest(method: str, where: Mapping[str, str | None], body: bytes) -> Message:
    name, version = where.get("name") or "", where.get("version") or ""
    if method == "ModelInfer":
        return _infer_request(body, name, version)
    if method in ("ModelReady", "ModelMetadata"):
        return METHODS[method][0](name=name, version=version)
    return METHODS[method][0]()


def _infer_request(body: bytes, name: str, version: str) -> pb.ModelInferRequest:
    try:
        doc = loads(body) if body else {}
    except (ValueError, UnicodeDecodeError) as exc:
        raise GrpcRequestError(f"the V2 request body is not JSON: {exc}"[:300]) from None
    if not isinstance(doc, dict):
        raise GrpcRequestError("the V2 request body is not a JSON object")
    req = pb.ModelInferRequest(model_name=name, model_version=version)
    if doc.get("id") is not None:
        req.id = str(doc["id"])
    _parameters(req.parameters, doc.get("parameters"), "parameters")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list):
        raise GrpcRequestError("the V2 request has no list of inputs")
    for i, tensor in enumerate(inputs):
        where = f"inputs[{i}]"
        if not isinstance(tensor, dict):
            raise GrpcRequestError(f"{where} is not an object")
        datatype = str(tensor.get("datatype", ""))
        field = _CONTENTS.get(datatype)
        if field is None:
            raise GrpcRequestError(f"{where}.datatype {datatype!r} has no typed contents over gRPC "
                                   f"({', '.join(_CONTENTS)})")
        shape = tensor.get("shape")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
            raise GrpcRequestError(f"{where}.shape must be a list of integers")
        one = req.inputs.add(name=str(tensor.get("name", "")), datatype=datatype, shape=shape)
        _parameters(one.parameters, tensor.get("parameters"), f"{where}.parameters")
        data = _flat(tensor.get("data"))
        if datatype == "BYTES":
            data = [x.encode("utf-8") if isinstance(x, str) else x for x in data]
        try:
            getattr(one.contents, field).extend(data)
        except (TypeError, ValueError) as exc:
            raise GrpcRequestError(f"{where}.data does not fit {datatype}: {exc}"[:300]) from None
    for i, out in enumerate(doc.get("outputs") or ()):
        if not isinstance(out, dict):
            raise GrpcRequestError(f"outputs[{i}] is not an object")
        wanted = req.outputs.add(name=str(out.get("name", "")))
        _parameters(wanted.parameters, out.get("parameters"), f"outputs[{i}].parameters")
    return req


def _parameters(target: Any, raw: Any, where: str) -> None:
    if raw is None:
        return
    if not isinstance(raw, dict):
        raise GrpcRequestError(f"{where} is not an object")
    for key, value in raw.items():
        if isinstance(value, bool):
            target[key].bool_param = value
        elif isinstance(value, int):
            target[key].int64_param = value
        elif isinstance(value, str):
            target[key].string_param = value
        else:  # InferParameter holds bool, int64 and string only: anything else travels as its JSON text
            from ..traffic.jsonl_reader import compact_json  # noqa: PLC0415

            target[key].string_param = compact_json(value).decode("utf-8")


def _flat(data: Any) -> list[Any]:
    if not isinstance(data, list):
        return [] if data is None else [data]
    if not any(isinstance(x, list) for x in data):
        return data
    out: list[Any] = []
    for x in data:
        out.extend(_flat(x) if isinstance(x, list) else [x])
    return out


@lru_cache(maxsize=64)
def _method_of(path: str) -> str:
    m = _GRPC_PATH.match(path)
    return m.group(2) if m is not None else ""


def answer_doc(path: str, raw: bytes) -> Any:
    """The V2 JSON form of an answer to `path` (the gRPC method's full path); ValueError when `raw` is not
    that method's response message."""
    method = _method_of(path)
    classes = METHODS.get(method)
    if classes is None:
        raise ValueError(f"{path}: no response message known")
    message = classes[1]()
    try:
        message.ParseFromString(raw)
    except DecodeError as exc:
        raise ValueError(f"not a {classes[1].__name__}: {exc}") from None
    if isinstance(message, pb.ModelInferResponse):
        return _infer_answer(message)
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def _infer_answer(msg: pb.ModelInferResponse) -> dict[str, Any]:
    doc: dict[str, Any] = {"model_name": msg.model_name}
    if msg.model_version:
        doc["model_version"] = msg.model_version
    if msg.id:
        doc["id"] = msg.id
    if msg.parameters:
        doc["parameters"] = _params_doc(msg.parameters)
    raw = msg.raw_output_contents
    outputs = []
    for i, tensor in enumerate(msg.outputs):
        out: dict[str, Any] = {"name": tensor.name, "shape": list(tensor.shape), "datatype": tensor.datatype}
        if tensor.parameters:
            out["parameters"] = _params_doc(tensor.parameters)
        if i < len(raw):
            out["data"] = _raw_data(tensor.datatype, raw[i])
        else:
            field = _CONTENTS.get(tensor.datatype)
            values = list(getattr(tensor.contents, field)) if field is not None else []
            if tensor.datatype == "BYTES":
                values = [v.decode("utf-8", "replace") for v in values]
            out["data"] = values
        outputs.append(out)
    doc["outputs"] = outputs
    return doc


def _params_doc(params: Any) -> dict[str, Any]:
    return {k: getattr(v, v.WhichOneof("parameter_choice")) if v.WhichOneof("parameter_choice") else None
            for k, v in params.items()}


def _raw_data(datatype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":
        values, at = [], 0
        while at + 4 <= len(raw):
            n = int.from_bytes(raw[at:at + 4], "little")
            values.append(raw[at + 4:at + 4 + n].decode("utf-8", "replace"))
            at += 4 + n
        return values
    dtype = _RAW_DTYPES.get(datatype)
    if dtype is None:
        raise ValueError(f"raw output of data type {datatype!r} cannot be read")
    import numpy as np  # noqa: PLC0415 - only raw answers need it

    return np.frombuffer(raw, dtype=dtype).tolist()  # type: ignore[no-any-return]


def read_kserve_v2_grpc_output(status: int, body: bytes, prediction_path: str, confidence_path: str,
                               headers: Mapping[str, str] | None = None) -> OutputRead:
    """A gRPC answer (the response message's bytes; the method in the `:path` header the transport keeps)
    read as kserve_v2 reads the same answer over REST. An answer that is not the method's message is
    invalid_json, the kind every protocol gives an unreadable answer. A failed call's body is the JSON the
    transport made of its status, details and trailing metadata."""
    if not 200 <= status < 300:
        try:
            return OutputRead(doc=loads(body) if body else None)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return OutputRead(doc=None)
    path = (headers or {}).get(":path", grpc_path("ModelInfer"))
    try:
        doc = answer_doc(path, body)
    except ValueError:
        return OutputRead(invalid_json=True)
    return read_kserve_v2_doc(doc, prediction_path, confidence_path)
