"""An ASGI middleware that captures a Python model server's traffic without a proxy:

    from harness.capture import CaptureMiddleware
    app.add_middleware(CaptureMiddleware, out="captured_traffic/prod-%Y%m%dT%H.jsonl.gz")   # FastAPI / Starlette

It writes the same records as `harness capture` (writer.py, exchange.py), off the request path: the
request (whole) and the answer (up to the capture limit) are copied as they pass, and handed to the writer
thread through a bounded queue when the answer is complete. When the queue is full the record is
dropped and counted (`stats.dropped`), never blocking a request. The files are flushed and closed at
the ASGI lifespan shutdown (and at interpreter exit).
"""
from __future__ import annotations

import atexit
import time
from typing import Any, Awaitable, Callable, MutableMapping

from ..scenario import RedactConfig
from .exchange import DEFAULT_MAX_BODY_BYTES, Exchange, ExchangeRecords, SampleRule, header_text
from .writer import CaptureWriter, WriterStats

__all__ = ["CaptureMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class CaptureMiddleware:
    def __init__(self, app: ASGIApp, out: str = "captured_traffic/capture-%Y%m%dT%H.jsonl.gz", *,
                 redact_headers: tuple[str, ...] = (), redact_query: tuple[str, ...] = (),
                 redact_json_paths: tuple[str, ...] = (), sample_fraction: float = 1.0, seed: int = 0,
                 max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, rotate_mb: float | None = None,
                 max_queue: int = 10_000) -> None:
        if not 0.0 < sample_fraction <= 1.0:
            raise ValueError(f"sample_fraction {sample_fraction}: expected a fraction in (0, 1]")
        self.app = app
        self.max_body_bytes = max_body_bytes
        records = ExchangeRecords(RedactConfig(tuple(redact_headers), tuple(redact_query), tuple(redact_json_paths)),
                                  SampleRule(sample_fraction, seed), max_body_bytes)
        self.writer = CaptureWriter(out, records, max_queue=max_queue,
                                    rotate_bytes=int(rotate_mb * 1024 * 1024) if rotate_mb else None)
        atexit.register(self.close)

    @property
    def stats(self) -> WriterStats:
        return self.writer.stats

    def close(self) -> WriterStats:
        return self.writer.close()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, self._on_lifespan(send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.time()
        limit = self.max_body_bytes
        # The request body is kept whole, as the proxy keeps it: it is masked before it is cut at the limit
        # (a cut JSON body could not be parsed to mask its secrets), and its size is the size received.
        body = bytearray()
        answer = bytearray()
        state: dict[str, Any] = {"status": None, "headers": (), "size": 0, "recorded": False}

        async def receive_copy() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
            return message

        async def send_copy(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                state["headers"] = header_text(message.get("headers", ()))
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                state["size"] += len(chunk)
                if len(answer) <= limit:
                    answer.extend(chunk[: limit + 1 - len(answer)])
                if not message.get("more_body", False):
                    self._record(scope, arrived, bytes(body), state, bytes(answer))

        # An answer that never completed is recorded all the same, with why: the app raised (the server
        # answers 500 where nothing was sent yet), or it ended first (its client went away mid-answer).
        try:
            await self.app(scope, receive_copy, send_copy)
        except BaseException:
            if not state["recorded"]:
                self._record(scope, arrived, bytes(body), state, bytes(answer), "exception")
            raise
        if not state["recorded"]:
            self._record(scope, arrived, bytes(body), state, bytes(answer), "incomplete")

    def _record(self, scope: Scope, arrived: float, body: bytes, state: dict[str, Any], answer: bytes,
                error: str | None = None) -> None:
        state["recorded"] = True
        path = scope.get("raw_path") or scope.get("path", "/").encode()
        query = scope.get("query_string") or b""
        target = path.decode("latin-1") + ("?" + query.decode("latin-1") if query else "")
        headers = header_text(scope.get("headers", ()))
        status = state["status"] if state["status"] is not None or error is None else 500
        self.writer.put(Exchange(arrived, scope.get("method", "GET"), target, headers, body, status,
                                 (time.time() - arrived) * 1000.0, state["headers"], answer, state["size"], error))

    def _on_lifespan(self, send: Send) -> Send:
        async def send_lifespan(message: Message) -> None:
            if message["type"] == "lifespan.shutdown.complete":
                self.close()
            await send(message)

        return send_lifespan
