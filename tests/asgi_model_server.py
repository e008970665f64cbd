"""A Starlette model server with CaptureMiddleware added in one line, served by uvicorn, for the
middleware test (its own process: asyncio, not the test's gevent).

    python tests/asgi_model_server.py PORT_FILE OUT_PATTERN [--max-queue N] [--max-body-bytes N]

Prints the middleware's counts as JSON on the last line when stopped (SIGTERM)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
from pathlib import Path
from typing import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from harness.capture import CaptureMiddleware


async def score(request: Request) -> JSONResponse:
    doc = await request.json()
    return JSONResponse({"prediction": "legit", "n": len(doc.get("transactions", [])), "token": "srv-secret-x1"})


async def crash(request: Request) -> JSONResponse:
    await request.body()
    raise RuntimeError("the model crashed")


async def stream(request: Request) -> StreamingResponse:
    async def tokens() -> AsyncIterator[bytes]:
        for i in range(50):
            yield b"data: %d\n\n" % i
            await asyncio.sleep(0.05)

    return StreamingResponse(tokens(), media_type="text/event-stream")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port_file", type=Path)
    ap.add_argument("out")
    ap.add_argument("--max-queue", type=int, default=10_000)
    ap.add_argument("--max-body-bytes", type=int, default=1 << 20)
    args = ap.parse_args()
    app = Starlette(routes=[Route("/v1/score", score, methods=["POST"]), Route("/v1/crash", crash, methods=["POST"]),
                            Route("/v1/stream", stream)])
    app.add_middleware(CaptureMiddleware, out=args.out, max_queue=args.max_queue,  # the one line
                       max_body_bytes=args.max_body_bytes)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(sock.getsockname()[1]))
    os.replace(tmp, args.port_file)
    # uvicorn raises the signal it caught again once it has shut down: with a handler of ours, that returns
    signal.signal(signal.SIGTERM, lambda *_: None)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    asyncio.run(server.serve(sockets=[sock]))
    middleware = app.middleware_stack
    while middleware is not None and not isinstance(middleware, CaptureMiddleware):
        middleware = getattr(middleware, "app", None)
    assert middleware is not None
    stats = middleware.close()
    print(json.dumps({"written": stats.records_written, "dropped": stats.dropped, "files": stats.files}), flush=True)


if __name__ == "__main__":
    main()
