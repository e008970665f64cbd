"""`harness capture --sink`: a receiver for KServe's inference logger, so that an InferenceService's
`logger.url` (mode: all) can point at harness:

    spec.predictor.logger: {mode: all, url: http://harness-capture.monitoring:8080/kserve-logger}

The logger posts one CloudEvent for the request and one for the response, in binary mode (the payload is
the body, the attributes are `ce-*` headers: `ce-id`, `ce-type` ending in `.request` / `.response`,
`ce-time`, `ce-inferenceservicename`, `ce-namespace`, `ce-component`, `ce-endpoint`) or in structured
mode (`application/cloudevents+json`, the payload in `data` / `data_base64`). The two events of one
inference share their `ce-id`: joined on it, they become one capture record, the response as the
production answer (production_latency_ms from the two event times). A request whose response has not
come within `RESPONSE_WAIT_S` is written without one; so are those pending when the capture stops.

The logger does not send the request path: the record's path is `/v1/models/{name}:predict` (the V1
protocol) or, when the event type names the V2 protocol, `/v2/models/{name}/infer`.
"""
from __future__ import annotations

import asyncio
import base64
import time
from typing import Any

from aiohttp import web

from ..traffic.jsonl_reader import compact_json, loads
from ..traffic.timestamps import TimestampError, parse_ts
from .exchange import Exchange
from .writer import CaptureWriter

__all__ = ["add_sink_routes", "SINK_PATH", "RESPONSE_WAIT_S"]

SINK_PATH = "/kserve-logger"
RESPONSE_WAIT_S = 30.0


class _Pending:
    def __init__(self) -> None:
        self.by_id: dict[str, dict[str, Any]] = {}


def add_sink_routes(app: web.Application, writer: CaptureWriter, stats: Any) -> None:
    pending = _Pending()

    async def receive(request: web.Request) -> web.Response:
        try:
            event = _event(request.headers, await request.read())
        except ValueError as exc:
            stats.bad_http += 1
            return web.Response(status=400, text=f"not a KServe logger CloudEvent: {exc}\n")
        stats.requests += 1
        entry = pending.by_id.setdefault(event["id"], {"seen": time.monotonic()})
        entry[event["kind"]] = event
        if "request" in entry and "response" in entry:
            del pending.by_id[event["id"]]
            writer.put(_exchange(entry["request"], entry["response"]))
        return web.Response(status=202)

    async def sweep(_app: web.Application) -> Any:
        async def loop() -> None:
            while True:
                await asyncio.sleep(1.0)
                _flush(pending, writer, time.monotonic() - RESPONSE_WAIT_S)

        task = asyncio.create_task(loop())
        yield
        task.cancel()
        _flush(pending, writer, float("inf"))

    app.router.add_post(SINK_PATH, receive)
    app.cleanup_ctx.append(sweep)


def _flush(pending: _Pending, writer: CaptureWriter, older_than: float) -> None:
    for ce_id in [k for k, v in pending.by_id.items() if v["seen"] <= older_than]:
        entry = pending.by_id.pop(ce_id)
        if "request" in entry:
            writer.put(_exchange(entry["request"], None))
        # a response without its request cannot be replayed: nothing to write


def _event(headers: Any, body: bytes) -> dict[str, Any]:
    ctype = headers.get("Content-Type", "")
    if ctype.startswith("application/cloudevents+json"):
        try:
            doc = loads(body)
        except (ValueError, RecursionError):
            raise ValueError("structured CloudEvent is not JSON") from None
        if not isinstance(doc, dict):
            raise ValueError("structured CloudEvent is not an object")
        attrs = {k.lower(): v for k, v in doc.items() if isinstance(v, str)}
        if "data_base64" in doc:
            payload = base64.b64decode(str(doc["data_base64"]))
        elif isinstance(doc.get("data"), str):
            payload = doc["data"].encode()
        else:
            payload = compact_json(doc.get("data")) if "data" in doc else b""
        payload_type = attrs.get("datacontenttype", "application/json")
    else:
        attrs = {k.lower()[3:]: v for k, v in headers.items() if k.lower().startswith("ce-")}
        payload, payload_type = body, ctype or "application/json"
    ce_id, ce_type = attrs.get("id"), attrs.get("type", "")
    if not ce_id:
        raise ValueError("no ce-id")
    if ce_type.endswith(".request"):
        kind = "request"
    elif ce_type.endswith(".response"):
        kind = "response"
    else:
        raise ValueError(f"ce-type {ce_type!r} is neither a request nor a response")
    try:
        at = parse_ts(attrs["time"]) if attrs.get("time") else time.time()
    except TimestampError:
        at = time.time()
    return {"id": ce_id, "kind": kind, "type": ce_type, "time": at, "body": payload, "content_type": payload_type,
            "attrs": attrs}


def _exchange(req: dict[str, Any], resp: dict[str, Any] | None) -> Exchange:
    attrs = req["attrs"]
    name = attrs.get("inferenceservicename") or attrs.get("component") or "model"
    v2 = "v2" in req["type"].lower() or "v2" in str(attrs.get("endpoint", "")).lower()
    path = f"/v2/models/{name}/infer" if v2 else f"/v1/models/{name}:predict"
    meta = {"request_id": req["id"], "capture_format": "kserve-logger"}
    for key in ("inferenceservicename", "namespace", "component", "endpoint"):
        if attrs.get(key):
            meta[f"kserve_{key}"] = attrs[key]
    headers = (("Content-Type", req["content_type"]),)
    if resp is None:
        return Exchange(req["time"], "POST", path, headers, req["body"], meta=meta)
    return Exchange(req["time"], "POST", path, headers, req["body"], 200,
                    max(0.0, (resp["time"] - req["time"]) * 1000.0), (("Content-Type", resp["content_type"]),),
                    resp["body"], len(resp["body"]), meta=meta)
