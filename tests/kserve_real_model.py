"""The test model served by real KServe (run by a Python that has `kserve` installed, never by the tests'
own interpreter): `python kserve_real_model.py PORT [GRPC_PORT]`. Same model as
kserve_v2_server.KServeV2Server, served by KServe's own REST data plane on 127.0.0.1 and, with GRPC_PORT,
by KServe's own gRPC servicer (the Open Inference Protocol over gRPC) on 127.0.0.1 too. KServe's
ModelServer would bind every interface (0.0.0.0, [::]), so its RESTServer is started directly with the
host set, and its InferenceServicer is put on a grpc.aio server listening on 127.0.0.1 as KServe's
GRPCServer.start does it. Prints "ready" once it listens."""
from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer  # noqa: E402
from kserve.model_server import FASTAPI_APP_IMPORT_STRING  # noqa: E402
from kserve.protocol.rest.server import RESTServer  # noqa: E402

from kserve_v2_server import _flatten, score_rows  # noqa: E402


class Fraud(Model):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.ready = True

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:  # type: ignore[no-untyped-def]
        x = next((t for t in payload.inputs if t.name == "features"), payload.inputs[0])
        flat = [float(v) for v in _flatten(x.data)]
        width = x.shape[-1] if len(x.shape) > 1 else len(flat)
        scored = score_rows([flat[i:i + width] for i in range(0, len(flat), width)])
        outputs = [InferOutput(name="label", shape=[len(scored)], datatype="BYTES", data=[lbl for lbl, _ in scored]),
                   InferOutput(name="probability", shape=[len(scored)], datatype="FP32", data=[p for _, p in scored])]
        return InferResponse(response_id=payload.id, model_name=self.name, infer_outputs=outputs, model_version="1")


async def _grpc(server: ModelServer, port: int) -> None:
    from grpc import aio
    from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
    from kserve.protocol.grpc.servicer import InferenceServicer

    grpc_server = aio.server()
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(server.dataplane, server.model_repository_extension), grpc_server)
    grpc_server.add_insecure_port(f"127.0.0.1:{port}")
    await grpc_server.start()
    await grpc_server.wait_for_termination()


async def _serve(server: ModelServer, rest: RESTServer, grpc_port: int | None) -> None:
    tasks = [rest.start()] + ([_grpc(server, grpc_port)] if grpc_port else [])
    await asyncio.gather(*tasks)


def main() -> None:
    port = int(sys.argv[1])
    grpc_port = int(sys.argv[2]) if len(sys.argv) > 2 else None
    server = ModelServer(http_port=port, enable_grpc=False, enable_latency_logging=False)
    server._register_and_check_atleast_one_model_is_ready([Fraud("fraud")])
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, port)
    rest.config.host = "127.0.0.1"
    print("ready", flush=True)
    asyncio.run(_serve(server, rest, grpc_port))


if __name__ == "__main__":
    main()
