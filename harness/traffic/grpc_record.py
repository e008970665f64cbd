"""The capture record of a gRPC call, and its HTTP form.

    {"ts": "2024-05-01T12:00:00.250+00:00", "grpc_service": "inference.GRPCInferenceService",
     "grpc_method": "ModelInfer", "metadata": {"x-tenant": "acme"},
     "message": {"model_name": "iris", "inputs": [{"name": "input-0", "datatype": "FP64", "shape": [1, 4],
                                                   "contents": {"fp64_contents": [5.1, 3.5, 1.4, 0.2]}}]}}

* ``grpc_service``: the fully qualified service (``package.Service``); ``grpc_method``: the method's name.
* ``metadata``: the call's metadata, as ``headers`` are read (an object, or a list of [name, value] pairs);
  a binary (``-bin``) value is base64 text.
* ``message``: the request message in protobuf's JSON mapping (either field-name spelling; int64 values as
  numbers or strings), an object or its JSON text.

A gRPC call is what HTTP/2 carries: ``POST /<service>/<method>``, the metadata as headers. Readers turn the
record into exactly that CapturedRequest (method POST, that path, metadata as headers, the message's compact
JSON as the body) and keep ``grpc_service`` and ``grpc_method`` among its other fields, where segments can
use them and by which `traffic convert` writes the record back in this form. CSV and Parquet carry the same
columns (metadata and message as JSON text). A record may also give both forms (method and path as well):
the path must then be the call's."""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

__all__ = ["GRPC_FIELDS", "is_grpc_record", "grpc_to_http_fields", "grpc_record_fields"]

GRPC_FIELDS = ("grpc_service", "grpc_method", "metadata", "message")
_SERVICE = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_METHOD = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


class GrpcRecordError(ValueError):
    """The record names a gRPC call that cannot be read; the message is the bad record's reason."""


def is_grpc_record(fields: Mapping[str, Any]) -> bool:
    return fields.get("grpc_method") is not None or fields.get("grpc_service") is not None


def grpc_to_http_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """The record's fields in the HTTP form (method, path, headers, body), grpc_service and grpc_method kept."""
    service, method = fields.get("grpc_service"), fields.get("grpc_method")
    if not isinstance(service, str) or not _SERVICE.fullmatch(service):
        raise GrpcRecordError(f"grpc_service must be a qualified service name (package.Service), not {service!r}"[:200])
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        raise GrpcRecordError(f"grpc_method must be a method name, not {method!r}"[:200])
    path = f"/{service}/{method}"
    out = {k: v for k, v in fields.items() if k not in ("metadata", "message")}
    given_path = fields.get("path")
    if given_path is not None and given_path != path:
        raise GrpcRecordError(f"path {str(given_path)[:100]!r} is not the gRPC call's ({path})")
    if fields.get("method") is not None and str(fields["method"]).upper() != "POST":
        raise GrpcRecordError(f"a gRPC call is a POST, not {str(fields['method'])[:20]!r}")
    out["method"], out["path"] = "POST", path
    metadata = fields.get("metadata")
    if isinstance(metadata, (str, bytes)):
        try:
            metadata = json.loads(metadata)
        except ValueError as exc:
            raise GrpcRecordError(f"metadata is not a JSON object: {exc}") from None
    if metadata is not None:
        if fields.get("headers") is not None:
            raise GrpcRecordError("both metadata and headers are given")
        out["headers"] = metadata
    message = fields.get("message")
    if message is not None:
        if fields.get("body") is not None or fields.get("body_b64") is not None:
            raise GrpcRecordError("both message and body are given")
        if isinstance(message, (str, bytes)):
            try:
                message = json.loads(message)
            except ValueError as exc:
                raise GrpcRecordError(f"message is not JSON (protobuf's JSON mapping): {exc}") from None
        if not isinstance(message, dict):
            raise GrpcRecordError(f"message must be an object (protobuf's JSON mapping), not {type(message).__name__}")
        out["body"] = message
    return out


def grpc_record_fields(meta: Mapping[str, Any], path: str, headers: dict[str, str], body: Any) -> dict[str, Any] | None:
    """The gRPC form of a captured call (`body` the message as a JSON value or text), or None when the
    request is not one (no grpc_service / grpc_method, or a path that is not theirs)."""
    service, method = meta.get("grpc_service"), meta.get("grpc_method")
    if not isinstance(service, str) or not isinstance(method, str) or path != f"/{service}/{method}":
        return None
    rec: dict[str, Any] = {"grpc_service": service, "grpc_method": method, "metadata": headers}
    if body is not None:
        rec["message"] = body
    return rec
