"""OpenAI-compatible chat/completions answers, plain JSON or streamed as server-sent events.

A stream (`text/event-stream`) is a series of `data: {chat.completion.chunk}` events ended by
`data: [DONE]`. It is parsed as the SSE specification says (lines end in CRLF, LF or CR; `data:` lines
of one event are joined with LF; a blank line dispatches the event; `:` lines are comments) and folded
into the chat.completion document a non-streaming call would have returned, so schemas, detectors and
the output diff treat both alike.

Timing comes from the client's arrival record: `arrivals` lists (bytes received so far, ms since the
request's last byte was written) per read, so an event's arrival time is that of the read that completed it
(plain HTTP on Linux: the kernel's receive time of that read's bytes, however late the client's loop read
them; TLS: the read time).
- time_to_first_token_ms: from the send to the first event carrying generated tokens (content,
  reasoning content, refusal, legacy `text`, or tool-call name/arguments); the opening `role` event is
  not a token;
- inter_token_ms_mean / _p95: the gaps between consecutive token-bearing events;
- prompt/completion tokens: from `usage` (the last chunk when stream_options.include_usage is set; the
  body of a non-streaming answer).
A stream that ends without `data: [DONE]` is truncated (error kind truncated_stream); what arrived is
still read.
"""
from __future__ import annotations

import bisect
import json
import re
from typing import Any, Sequence

from ..jsonpath import find_first
from .json_protocol import OutputRead, label_of, loads, number_of, parse_body

__all__ = ["read_openai_output", "is_event_stream", "tool_calls_valid"]

_LINE = re.compile(rb"([^\r\n]*)(\r\n|\n|\r)")
# `reasoning` is vLLM's (0.10 on) and OpenRouter's name for what others stream as `reasoning_content`
_TOKEN_FIELDS = ("content", "reasoning_content", "reasoning", "refusal", "text")


def is_event_stream(content_type: str | None, body: bytes) -> bool:
    if content_type and content_type.split(";")[0].strip().lower() == "text/event-stream":
        return True
    return body.lstrip()[:5] == b"data:"


def read_openai_output(status: int, body: bytes, prediction_path: str, confidence_path: str, *,
                       content_type: str | None = None, arrivals: Sequence[tuple[int, float]] = ()) -> OutputRead:
    if is_event_stream(content_type, body):
        return _read_stream(body, arrivals, prediction_path, confidence_path)
    doc = parse_body(status, body)
    if isinstance(doc, OutputRead):
        return doc
    message = find_first(doc, "$.choices[0].message")
    message = message if isinstance(message, dict) else {}
    calls = _calls_of(message)
    return _finish(doc, prediction_path, confidence_path, content=_text(message.get("content")),
                   tool_calls=calls, finish_reason=find_first(doc, "$.choices[0].finish_reason", None))


def _finish(doc: Any, prediction_path: str, confidence_path: str, *, content: str | None,
            tool_calls: list[Any] | None, finish_reason: Any, **stream: Any) -> OutputRead:
    usage = doc.get("usage") if isinstance(doc, dict) else None
    usage = usage if isinstance(usage, dict) else {}
    model = doc.get("model") if isinstance(doc, dict) else None
    error = doc.get("error") if isinstance(doc, dict) else None
    return OutputRead(doc=doc, prediction=label_of(find_first(doc, prediction_path)),
                      model_error=_error_text(error, stream.get("streamed", False)) if error else None,
                      confidence=number_of(find_first(doc, confidence_path)),
                      model_version=str(model) if model is not None else None,
                      prompt_tokens=_int(usage.get("prompt_tokens")), completion_tokens=_int(usage.get("completion_tokens")),
                      content=content, tool_calls_valid=tool_calls_valid(tool_calls),
                      finish_reason=str(finish_reason) if finish_reason is not None else None, **stream)


def _error_text(error: Any, streamed: bool) -> str:
    """What a model error says, by its type and code only: its message may quote the prompt."""
    where = "a stream event" if streamed else "the answer"
    fields = [f"{k} {str(error[k])[:60]}" for k in ("type", "code") if isinstance(error, dict) and error.get(k)]
    return f"{where} is an error object" + (f" ({', '.join(fields)})" if fields else "") + \
        " where a result was due (the OpenAI client raises on it)"


def tool_calls_valid(calls: list[Any] | None) -> bool | None:
    """None without tool calls; else whether every call's function.arguments is a JSON object, as the
    function-calling contract requires (a string that parses to a number or a list is not valid arguments)."""
    if not calls:
        return None
    for call in calls:
        fn = call.get("function") if isinstance(call, dict) else None
        args = fn.get("arguments") if isinstance(fn, dict) else None
        if not isinstance(args, str):
            return False
        try:
            if not isinstance(json.loads(args), dict):
                return False
        except (ValueError, RecursionError):
            return False
    return True


def _calls_of(message: dict[str, Any]) -> list[Any] | None:
    calls = message.get("tool_calls")
    if isinstance(calls, list) and calls:
        return calls
    legacy = message.get("function_call")  # the deprecated single-call form
    return [{"function": legacy}] if isinstance(legacy, dict) else None


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        parts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        return "".join(parts) if parts else None
    return None


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, int) and not isinstance(v, bool) else None


def _events(body: bytes) -> list[tuple[int, str]]:
    """(end offset, data) per dispatched event; an event not ended by a blank line is never dispatched."""
    events: list[tuple[int, str]] = []
    data: list[bytes] = []
    for m in _LINE.finditer(body):
        line = m.group(1)
        if not line:
            if data:
                events.append((m.end(), b"\n".join(data).decode("utf-8", "replace")))
            data = []
            continue
        if line[:1] == b":":
            continue
        name, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if name == b"data":
            data.append(value)
    return events


def _read_stream(body: bytes, arrivals: Sequence[tuple[int, float]], prediction_path: str,
                 confidence_path: str) -> OutputRead:
    sizes = [a[0] for a in arrivals]

    def at(offset: int) -> float | None:
        i = bisect.bisect_left(sizes, offset)
        return arrivals[i][1] if i < len(arrivals) else (arrivals[-1][1] if arrivals else None)

    events = _events(body)
    done = False
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    usage: Any = None
    token_times: list[float] = []
    carried_events = 0
    for end, data in events:
        if data.strip() == "[DONE]":
            done = True
            break
        try:
            chunk = loads(data.encode(), strict=True)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            return OutputRead(invalid_json=True, streamed=True,
                              invalid_reason=f"a stream event is not JSON: {str(exc).splitlines()[0][:160]}")
        if not isinstance(chunk, dict):
            return OutputRead(invalid_json=True, streamed=True, invalid_reason="a stream event is not a JSON object")
        for key in ("id", "created", "model", "system_fingerprint"):
            if key in chunk and key not in head:
                head[key] = chunk[key]
        if chunk.get("usage") is not None:
            usage = chunk["usage"]
        if "error" in chunk and "choices" not in chunk:
            head.setdefault("error", chunk["error"])
        carried = False
        listed = chunk.get("choices")
        for choice in listed if isinstance(listed, list) else ():
            if isinstance(choice, dict):
                carried |= _fold(choices, choice)
        if carried:
            carried_events += 1
            t = at(end)
            if t is not None:
                token_times.append(t)
    doc = _assemble(head, choices, usage)
    first = choices.get(0, {})
    gaps = sorted(b - a for a, b in zip(token_times, token_times[1:]))
    calls = [first["tool_calls"][k] for k in sorted(first.get("tool_calls", {}))] or None
    return _finish(doc, prediction_path, confidence_path,
                   content="".join(first["content"]) if "content" in first else None,
                   tool_calls=calls, finish_reason=first.get("finish_reason"),
                   streamed=True, truncated_stream=not done,
                   time_to_first_token_ms=token_times[0] if token_times else None,
                   inter_token_ms_mean=sum(gaps) / len(gaps) if gaps else None,
                   inter_token_ms_p95=_quantile(gaps, 0.95) if gaps else None, token_chunks=carried_events)


def _fold(choices: dict[int, dict[str, Any]], choice: dict[str, Any]) -> bool:
    """Adds one streamed choice delta to the assembled choices; True when it carried generated tokens."""
    index = choice.get("index", 0) if isinstance(choice.get("index", 0), int) else 0
    acc = choices.setdefault(index, {})
    delta = choice.get("delta") if isinstance(choice.get("delta"), dict) else {}
    carried = False
    if isinstance(delta.get("role"), str):
        acc.setdefault("role", delta["role"])
    for key in _TOKEN_FIELDS:
        piece = delta.get(key) if key != "text" else choice.get("text", delta.get("text"))
        if isinstance(piece, str):
            acc.setdefault("content" if key == "text" else key, []).append(piece)
            carried |= bool(piece)
    for call in delta.get("tool_calls") or ():
        if not isinstance(call, dict):
            continue
        slot = acc.setdefault("tool_calls", {}).setdefault(call.get("index", 0), {})
        for key in ("id", "type"):
            if call.get(key) is not None:
                slot[key] = call[key]
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        into = slot.setdefault("function", {})
        for key in ("name", "arguments"):
            if isinstance(fn.get(key), str):
                into[key] = into.get(key, "") + fn[key]
                carried |= bool(fn[key])
    if choice.get("finish_reason") is not None:
        acc["finish_reason"] = choice["finish_reason"]
    return carried


def _assemble(head: dict[str, Any], choices: dict[int, dict[str, Any]], usage: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {k: head[k] for k in ("id",) if k in head}
    doc["object"] = "chat.completion"
    doc.update({k: head[k] for k in ("created", "model", "system_fingerprint", "error") if k in head})
    out = []
    for index in sorted(choices):
        acc = choices[index]
        message: dict[str, Any] = {"role": acc.get("role", "assistant"),
                                   "content": "".join(acc["content"]) if "content" in acc else None}
        for key in ("reasoning_content", "reasoning", "refusal"):
            if key in acc:
                message[key] = "".join(acc[key])
        if acc.get("tool_calls"):
            message["tool_calls"] = [acc["tool_calls"][k] for k in sorted(acc["tool_calls"])]
        out.append({"index": index, "message": message, "finish_reason": acc.get("finish_reason")})
    doc["choices"] = out
    if usage is not None:
        doc["usage"] = usage
    return doc


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default), on an already sorted list."""
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)

