"""An OpenAI-compatible chat/completions server on 127.0.0.1, for tests: written here, speaking the wire
protocol exactly as the OpenAI API documents it.

`POST /v1/chat/completions` answers a `chat.completion` document, or with `"stream": true` a
`text/event-stream` of `data: {chat.completion.chunk}\\n\\n` events in HTTP/1.1 chunked encoding: a first
chunk with `delta.role`, one chunk per token (`delta.content`, or `delta.tool_calls` argument pieces),
a last chunk with the finish_reason, with `stream_options.include_usage` a final chunk with
`"choices": []` and `usage` (earlier chunks then carry `"usage": null`), and `data: [DONE]`.
`GET /v1/models` lists the model.

Timing is planted: `ttft_ms` before the first token chunk (after the role chunk), `token_ms` between
token chunks. Behaviour by `mode` (the server's, or a request's `X-Test-Mode` header):
- normal: answers `reply`;
- abstain: answers a refusal ("I'm sorry, but I cannot help with that.");
- cite: answers with a `[1]` marker and a top-level `citations` list;
- tool / bad_tool: a tool call whose arguments are a JSON object / are cut-off JSON;
- fallback: answers from `fallback_model` and says so in `X-Fallback-Model`;
- truncate: the stream stops after two token chunks and the connection closes (no last HTTP chunk);
- no_done: the stream ends cleanly (last HTTP chunk sent) but without `data: [DONE]`;
- not_json: a 200 HTML page;
- huge: `huge_mb` MB of answer (a stream of 64 KiB content chunks, or one JSON body);
- stall: the stream opens (headers and the role chunk) but no token ever comes (until the server stops);
- plain: a `chat.completion` in one piece even where the request asked for a stream.
Tokens are whitespace-separated words; prompt tokens count the words of every message's content. With
`fill_max_tokens` a request's `max_tokens` sets the answer's length (words "w0 w1 ..."), as a trace replay
asks: the answer has exactly that many tokens.

The server's own truth, per streamed answer, is in `truth[completion id]`: the perf_counter times at
which the request was read (`received`), and each token chunk was written (`token_at`), with the
prompt and completion token counts.
"""
from __future__ import annotations

import json
import socket
import socketserver
import threading
import time
from typing import Any

__all__ = ["OpenAIServer", "ABSTAIN_TEXT"]

ABSTAIN_TEXT = "I'm sorry, but I cannot help with that."
CITE_TEXT = "Paris is the capital of France [1]."
TOOL_ARGS = '{"city": "Paris", "unit": "celsius"}'


class OpenAIServer:
    def __init__(self, *, model: str = "tiny-chat-1", reply: str = "The answer is 42 .", ttft_ms: float = 0.0,
                 token_ms: float = 0.0, mode: str = "normal", fallback_model: str = "tiny-chat-fallback",
                 huge_mb: float = 20.0, fill_max_tokens: bool = False) -> None:
        self.model, self.reply, self.mode = model, reply, mode
        self.fill_max_tokens = fill_max_tokens
        self.truth: dict[str, dict[str, Any]] = {}
        self._stop = threading.Event()
        self.ttft_ms, self.token_ms = ttft_ms, token_ms
        self.fallback_model, self.huge_mb = fallback_model, huge_mb
        self.requests: list[dict[str, Any]] = []
        self._n = 0
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def setup(self) -> None:
                super().setup()
                # as streaming servers do: without it Nagle holds each small event for the client's delayed ACK
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def handle(self) -> None:
                while True:
                    try:
                        req = self._read_request()
                    except (ConnectionError, OSError, ValueError):
                        return
                    if req is None:
                        return
                    req["received"] = time.perf_counter()
                    try:
                        keep = server._answer(self.wfile, req)
                    except (ConnectionError, OSError):
                        return
                    if not keep:
                        return

            def _read_request(self) -> dict[str, Any] | None:
                line = self.rfile.readline(65537)
                if not line:
                    return None
                method, target, _ = line.decode("latin-1").split(" ", 2)
                headers: dict[str, str] = {}
                while True:
                    h = self.rfile.readline(65537)
                    if h in (b"\r\n", b"\n", b""):
                        break
                    k, v = h.decode("latin-1").split(":", 1)
                    headers[k.strip().lower()] = v.strip()
                length = int(headers.get("content-length", "0"))
                body = self.rfile.read(length) if length else b""
                return {"method": method, "path": target, "headers": headers, "body": body}

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True
            request_queue_size = 256

        self._server = Server(("127.0.0.1", 0), Handler)
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> "OpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._server.shutdown()
        self._server.server_close()

    # ------------------------------------------------------------------------------------------ answers

    @staticmethod
    def _send(w: Any, status: int, body: bytes, ctype: str = "application/json", extra: str = "") -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "X")
        w.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
                .encode() + body)
        w.flush()

    def _answer(self, w: Any, req: dict[str, Any]) -> bool:
        self.requests.append(req)
        if req["method"] == "GET" and req["path"] == "/v1/models":
            self._send(w, 200, json.dumps({"object": "list", "data": [
                {"id": self.model, "object": "model", "created": 1_700_000_000, "owned_by": "tests"}]}).encode())
            return True
        if req["method"] != "POST" or req["path"] != "/v1/chat/completions":
            self._send(w, 404, json.dumps({"error": {"message": f"unknown path {req['path']}", "type": "invalid_request_error",
                                                     "param": None, "code": None}}).encode())
            return True
        try:
            body = json.loads(req["body"] or b"{}")
            messages = body["messages"]
        except (ValueError, KeyError, TypeError):
            self._send(w, 400, json.dumps({"error": {"message": "messages is required", "type": "invalid_request_error",
                                                     "param": "messages", "code": None}}).encode())
            return True
        mode = req["headers"].get("x-test-mode", self.mode)
        if mode == "not_json":
            self._send(w, 200, b"<html><body>502 upstream</body></html>", "text/html")
            return True
        self._n += 1
        cid = f"chatcmpl-test{self._n:06d}"
        model = self.fallback_model if mode == "fallback" else body.get("model") or self.model
        extra = f"X-Fallback-Model: {self.fallback_model}\r\n" if mode == "fallback" else ""
        text = {"abstain": ABSTAIN_TEXT, "cite": CITE_TEXT}.get(mode, self.reply)
        if mode == "huge":
            text = "x" * int(self.huge_mb * 1024 * 1024)
        tool = mode in ("tool", "bad_tool")
        args = TOOL_ARGS if mode == "tool" else TOOL_ARGS[:14]
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages if isinstance(m, dict))
        if self.fill_max_tokens and isinstance(body.get("max_tokens"), int) and not tool:
            text = " ".join(f"w{i}" for i in range(body["max_tokens"]))
        tokens = _tokens(args if tool else text, by_size=mode == "huge")
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": len(tokens),
                 "total_tokens": prompt_tokens + len(tokens)}
        if not body.get("stream") or mode == "plain":
            return self._plain(w, cid, model, text, tool, args, usage, extra, mode)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        truth = self.truth[cid] = {"received": req["received"], "token_at": [], "prompt_tokens": prompt_tokens,
                                   "completion_tokens": len(tokens)}
        return self._stream(w, cid, model, tokens, tool, usage if include_usage else None, extra, mode, truth)

    def _plain(self, w: Any, cid: str, model: str, text: str, tool: bool, args: str, usage: dict[str, int],
               extra: str, mode: str) -> bool:
        time.sleep((self.ttft_ms + self.token_ms * max(usage["completion_tokens"] - 1, 0)) / 1000)
        message: dict[str, Any] = {"role": "assistant", "content": None if tool else text, "refusal": None}
        if tool:
            message["tool_calls"] = [{"id": "call_test1", "type": "function",
                                      "function": {"name": "get_weather", "arguments": args}}]
        doc: dict[str, Any] = {"id": cid, "object": "chat.completion", "created": int(time.time()), "model": model,
                               "system_fingerprint": "fp_test",
                               "choices": [{"index": 0, "message": message, "logprobs": None,
                                            "finish_reason": "tool_calls" if tool else "stop"}],
                               "usage": usage}
        if mode == "cite":
            doc["citations"] = ["https://example.org/paris"]
        self._send(w, 200, json.dumps(doc).encode(), extra=extra)
        return True

    def _stream(self, w: Any, cid: str, model: str, tokens: list[str], tool: bool, usage: dict[str, int] | None,
                extra: str, mode: str, truth: dict[str, Any]) -> bool:
        w.write(("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nCache-Control: no-cache\r\n"
                 f"Transfer-Encoding: chunked\r\n{extra}\r\n").encode())
        created = int(time.time())

        def event(delta: dict[str, Any], finish: str | None = None, choices: bool = True) -> None:
            chunk: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                     "system_fingerprint": "fp_test",
                                     "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                  "finish_reason": finish}] if choices else []}
            if usage is not None:
                chunk["usage"] = None
            if mode == "cite":
                chunk["citations"] = ["https://example.org/paris"]
            _chunk(w, f"data: {json.dumps(chunk)}\n\n".encode())

        event({"role": "assistant", "content": "" if not tool else None, "refusal": None})
        if mode == "stall":
            self._stop.wait(60)
            return False
        for i, tok in enumerate(tokens):
            time.sleep((self.ttft_ms if i == 0 else self.token_ms) / 1000)
            if mode == "truncate" and i == 2:
                return False  # the connection closes mid-stream: no last chunk, no [DONE]
            if tool:
                call: dict[str, Any] = {"index": 0, "function": {"arguments": tok}}
                if i == 0:
                    call = {"index": 0, "id": "call_test1", "type": "function",
                            "function": {"name": "get_weather", "arguments": tok}}
                event({"tool_calls": [call]})
            else:
                event({"content": tok})
            truth["token_at"].append(time.perf_counter())
        event({}, "tool_calls" if tool else "stop")
        if usage is not None:
            chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                     "system_fingerprint": "fp_test", "choices": [], "usage": usage}
            _chunk(w, f"data: {json.dumps(chunk)}\n\n".encode())
        if mode != "no_done":
            _chunk(w, b"data: [DONE]\n\n")
        w.write(b"0\r\n\r\n")
        w.flush()
        return True


def _tokens(text: str, by_size: bool = False) -> list[str]:
    if by_size:
        return [text[i:i + 65536] for i in range(0, len(text), 65536)]
    words = text.split(" ")
    return [w if i == 0 else " " + w for i, w in enumerate(words)]


def _chunk(w: Any, data: bytes) -> None:
    w.write(b"%x\r\n%s\r\n" % (len(data), data))
    w.flush()
