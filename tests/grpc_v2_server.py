"""A small Open Inference Protocol gRPC server for tests (grpcio, in its own process): `python
grpc_v2_server.py PORT [CERT KEY]` (with a certificate and key: TLS). ModelInfer answers by the model name asked for:

- `echo`: one FP64 output `predict_proba` of shape [rows, 2] (p, 1 - p with p = the row's first value,
  clipped to [0, 1]) in typed contents; `echo-raw`: the same in raw_output_contents;
- `slow`: the same after 2 s; `missing`: NOT_FOUND; `broken`: INTERNAL (with trailing metadata
  x-model-error and authorization); `huge`: an answer of 4 MB;
- the metadata `x-echo-tenant` comes back as the answer's parameter `tenant`.
Every other method of the service answers as a healthy server does."""
from __future__ import annotations

import struct
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc  # noqa: E402

from harness.protocols.grpc_v2 import grpc_predict_v2_pb2 as pb  # noqa: E402


def _infer(request: pb.ModelInferRequest, context: Any) -> pb.ModelInferResponse:
    name = request.model_name
    if name == "missing":
        context.abort(grpc.StatusCode.NOT_FOUND, "Model missing not found")
    if name == "broken":
        context.set_trailing_metadata((("x-model-error", "ValueError"), ("authorization", "Bearer leaked")))
        context.abort(grpc.StatusCode.INTERNAL, "the model raised")
    if name == "slow":
        time.sleep(2)
    tensor = request.inputs[0]
    rows = tensor.shape[0] if tensor.shape else 1
    values = list(tensor.contents.fp64_contents)
    width = len(values) // rows if rows else 0
    probs = []
    for r in range(rows):
        p = min(max(values[r * width], 0.0), 1.0) if width else 0.5
        probs += [p, 1.0 - p]
    answer = pb.ModelInferResponse(model_name=name, model_version="v1", id=request.id)
    tenant = dict(context.invocation_metadata()).get("x-echo-tenant")
    if tenant is not None:
        answer.parameters["tenant"].string_param = tenant
    out = answer.outputs.add(name="predict_proba", datatype="FP64", shape=[rows, 2])
    if name == "echo-raw":
        answer.raw_output_contents.append(struct.pack(f"<{len(probs)}d", *probs))
    elif name == "huge":
        out.contents.fp64_contents.extend([0.5] * 500_000)
    else:
        out.contents.fp64_contents.extend(probs)
    return answer


def _handlers() -> grpc.GenericRpcHandler:
    def unary(fn: Any, req: Any, resp: Any) -> Any:
        return grpc.unary_unary_rpc_method_handler(fn, request_deserializer=req.FromString,
                                                   response_serializer=resp.SerializeToString)

    return grpc.method_handlers_generic_handler("inference.GRPCInferenceService", {
        "ModelInfer": unary(_infer, pb.ModelInferRequest, pb.ModelInferResponse),
        "ServerLive": unary(lambda r, c: pb.ServerLiveResponse(live=True), pb.ServerLiveRequest,
                            pb.ServerLiveResponse),
        "ServerReady": unary(lambda r, c: pb.ServerReadyResponse(ready=True), pb.ServerReadyRequest,
                             pb.ServerReadyResponse),
        "ModelReady": unary(lambda r, c: pb.ModelReadyResponse(ready=r.name != "missing"), pb.ModelReadyRequest,
                            pb.ModelReadyResponse),
    })


def main(port: int, cert: str | None = None, key: str | None = None) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16),
                         options=[("grpc.max_send_message_length", -1)])
    server.add_generic_rpc_handlers((_handlers(),))
    if cert and key:
        creds = grpc.ssl_server_credentials([(Path(key).read_bytes(), Path(cert).read_bytes())])
        server.add_secure_port(f"127.0.0.1:{port}", creds)
    else:
        server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main(int(sys.argv[1]), *sys.argv[2:4])
