"""A KServe-V2-style model endpoint on Starlette with GZipMiddleware, as MLServer's REST app is built:
answers above 1,000 bytes are gzip-compressed whenever the request accepts gzip."""
from __future__ import annotations

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def infer(request: Request) -> JSONResponse:
    doc = await request.json()
    rows = doc["inputs"][0]["data"]
    scores = [round((sum(r) % 1.0), 6) for r in rows]
    return JSONResponse({
        "model_name": "m", "model_version": "1", "id": doc.get("id", ""),
        "outputs": [{"name": "predict", "datatype": "INT64", "shape": [len(rows)], "data": [int(s > 0.5) for s in scores]},
                    {"name": "predict_proba", "datatype": "FP64", "shape": [len(rows), 1], "data": scores},
                    {"name": "explanation", "datatype": "BYTES", "shape": [1], "data": ["feature importance " * 60]}],
    })


async def ready(_: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


app = Starlette(routes=[Route("/v2/models/m/infer", infer, methods=["POST"]), Route("/v2/health/ready", ready)],
                middleware=[Middleware(GZipMiddleware, minimum_size=1000)])
