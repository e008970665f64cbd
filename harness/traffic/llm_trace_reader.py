"""LLM load-test traces as captures: Mooncake/AIPerf trace JSONL and OpenAI-style request logs.

``mooncake`` (the trace format of Mooncake and NVIDIA AIPerf), one JSON object per line::

    {"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, 48, ...]}

* ``timestamp``: milliseconds from the start of the trace (required; a number >= 0);
* ``input_length``: prompt tokens; ``output_length``: completion tokens (becomes ``max_tokens``);
* ``hash_ids``: one id per block of ``block_tokens`` (512) prompt tokens; two requests with the same
  leading ids share that prompt prefix (the KV-cache blocks a serving stack can reuse);
* instead of a length, ``text_input`` (the prompt), ``messages`` (a chat) or ``payload`` (the request
  body, sent verbatim) may be given; every other field goes to ``meta``.

The prompt is synthetic: words drawn from a fixed vocabulary by a generator seeded with (seed, hash id)
for each block, and with (seed, line) for the part beyond the listed blocks, so the same trace and seed
always give the same bytes, and shared hash ids give shared prefixes. A prompt of N tokens is N words
separated by single spaces: a server that counts whitespace words counts N; a real tokenizer counts
about N (each vocabulary word is one common English word).

``openai_log``: one logged call per line, either ``{"timestamp": ..., "request": {...}, "response":
{...}}`` (``ts``, ``time`` or ``created_at`` also name the time; without one, ``response.created``),
or an OpenAI Batch API line (``custom_id``, ``method``, ``url``, ``body``) with a time field. The
request body is kept as logged; ``max_tokens`` is set from ``response.usage.completion_tokens`` when the
request names no limit; a request whose messages were not logged (only ``usage.prompt_tokens``) gets a
synthetic prompt of that length. The logged response is kept as the production reference.

A line without a usable length, with a negative or absurd one (beyond ``max_prompt_tokens`` /
``max_output_tokens``), or without a timestamp is a BadRecord naming the field. Records come in file
order; the replay sorts them by time, as for any capture.
"""
from __future__ import annotations

import random
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Mapping

from ..numbers import finite_number
from ..scenario import TraceOptions
from .jsonl_reader import RecordError, _load_record, _Reason, compact_json, iter_raw_lines, split_target
from .record import BadRecord, CapturedRequest, CapturedResponse
from .timestamps import TimestampError, parse_ts

__all__ = ["TraceOptions", "iter_mooncake", "iter_openai_log", "synthetic_prompt", "PromptMaker"]

_JSON_HEADERS = (("Content-Type", "application/json"),)
# Common English words, each a single token in the BPE vocabularies of current chat models (with its
# leading space), so a prompt of N words is about N tokens for a real server too.
_VOCABULARY = tuple("""the of and to in is it you that he was for on are with as his they be at one have this
from or had by word but what some we can out other were all there when up use your how said an each she
which do their time if will way about many then them write would like so these her long make thing see him
two has look more day could go come did number sound no most people my over know water than call first who
may down side been now find any new work part take get place made live where after back little only round
man year came show every good me give our under name very through just form sentence great think say help
low line differ turn cause much mean before move right boy old too same tell does set three want air well
also play small end put home read hand port large spell add even land here must big high such follow act
why ask men change went light kind off need house picture try us again animal point mother world near build
self earth father head stand own page should country found answer school grow study still learn plant
cover food sun four between state keep eye never last let thought city tree cross farm hard start might
story saw far sea draw left late run while press close night real life few north open seem together next
white children begin got walk example ease paper group always music those both mark often letter until
mile river car feet care second book carry took science eat room friend began idea fish mountain stop once
base hear horse cut sure watch color face wood main enough plain girl usual young ready above ever red list
though feel talk bird soon body dog family direct pose leave song measure door product black short numeral
class wind question happen complete ship area half rock order fire south problem piece told knew pass since
top whole king space heard best hour better true during hundred five remember step early hold west ground
interest reach fast verb sing listen six table travel less morning ten simple several vowel toward war lay
against pattern slow center love person money serve appear road map rain rule govern pull cold notice voice
unit power town fine certain fly fall lead cry dark machine note wait plan figure star box noun field rest
correct able pound done beauty drive stood contain front teach week final gave green quick develop ocean
warm free minute strong special mind behind clear tail produce fact street inch multiply nothing course stay
wheel full force blue object decide surface deep moon island foot system busy test record boat common gold
possible plane stead dry wonder laugh thousand ago ran check game shape equate miss brought heat snow tire
bring yes distant fill east paint language among""".split())


class PromptMaker:
    """Synthetic prompts of stated lengths; blocks of shared hash ids are made once and cached (bounded)."""

    _CACHE_BLOCKS = 2048

    def __init__(self, seed: int, block_tokens: int) -> None:
        self.seed, self.block_tokens = seed, block_tokens
        self._blocks: OrderedDict[int, list[str]] = OrderedDict()

    def block(self, hash_id: int) -> list[str]:
        words = self._blocks.get(hash_id)
        if words is None:
            # A str seed is hashed with SHA-512 by random.seed: the same words on every machine and run.
            words = random.Random(f"{self.seed}:block:{hash_id}").choices(_VOCABULARY, k=self.block_tokens)
            self._blocks[hash_id] = words
            if len(self._blocks) > self._CACHE_BLOCKS:
                self._blocks.popitem(last=False)
        else:
            self._blocks.move_to_end(hash_id)
        return words

    def prompt(self, n_tokens: int, hash_ids: list[int], unique_key: str) -> str:
        words: list[str] = []
        for h in hash_ids:
            if len(words) >= n_tokens:
                break
            words.extend(self.block(h))
        del words[n_tokens:]
        if len(words) < n_tokens:
            words.extend(random.Random(f"{self.seed}:tail:{unique_key}").choices(_VOCABULARY, k=n_tokens - len(words)))
        return " ".join(words)


def synthetic_prompt(n_tokens: int, *, seed: int = 0, hash_ids: list[int] | None = None, block_tokens: int = 512,
                     unique_key: str = "") -> str:
    """One synthetic prompt of `n_tokens` words (see the module docstring)."""
    return PromptMaker(seed, block_tokens).prompt(n_tokens, list(hash_ids or ()), unique_key)


def _length(obj: Mapping[str, Any], key: str, limit: int, *, required: bool) -> int | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise RecordError(f"missing field {key!r}" + (" (or text_input, messages or payload)" if key == "input_length" else ""))
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise RecordError(f"{key} must be a whole number of tokens, not {value!r}")
    n = int(value)
    if n < 1:
        raise RecordError(f"{key} must be at least 1, not {n}")
    if n > limit:
        raise RecordError(f"{key} {n:,} is beyond the {limit:,}-token limit (traffic.trace)")
    return n


def _hash_ids(obj: Mapping[str, Any]) -> list[int]:
    ids = obj.get("hash_ids")
    if ids is None:
        return []
    if not isinstance(ids, list) or not all(isinstance(h, int) and not isinstance(h, bool) for h in ids):
        raise RecordError("hash_ids must be a list of integers")
    return ids


def _chat_body(opts: TraceOptions, messages: list[Any], max_tokens: int | None) -> dict[str, Any]:
    body: dict[str, Any] = {"model": opts.model, "messages": messages}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
        if opts.ignore_eos:
            body["min_tokens"] = max_tokens
            body["ignore_eos"] = True
    if opts.stream is not False:  # None: the format's default, streamed
        body["stream"] = True
        if opts.include_usage:
            body["stream_options"] = {"include_usage": True}
    return body


_MOONCAKE_FIELDS = frozenset({"timestamp", "input_length", "output_length", "hash_ids", "text_input", "messages",
                              "payload"})


def _mooncake_record(obj: dict[str, Any], source: str, lineno: int, opts: TraceOptions,
                     maker: PromptMaker) -> CapturedRequest:
    ts_ms = obj.get("timestamp")
    if ts_ms is None:
        raise RecordError("missing field 'timestamp' (milliseconds from the start of the trace)")
    if finite_number(ts_ms) is None or ts_ms < 0:
        raise RecordError(f"timestamp must be a number of milliseconds >= 0, not {ts_ms!r}")
    has_text = any(obj.get(k) is not None for k in ("text_input", "messages", "payload"))
    n_in = _length(obj, "input_length", opts.max_prompt_tokens, required=not has_text)
    n_out = _length(obj, "output_length", opts.max_output_tokens, required=False)
    ids = _hash_ids(obj)
    meta = {k: v for k, v in obj.items() if k not in _MOONCAKE_FIELDS}
    if n_in is not None:
        meta["input_length"] = n_in
    if n_out is not None:
        meta["output_length"] = n_out
    if ids:
        meta["prefix_blocks"] = len(ids)
    payload = obj.get("payload")
    if payload is not None:
        if not isinstance(payload, dict):
            raise RecordError("payload must be a JSON object (the request body)")
        body: Any = payload
    else:
        messages = obj.get("messages")
        if messages is not None:
            if not isinstance(messages, list) or not messages:
                raise RecordError("messages must be a non-empty list")
        else:
            text = obj.get("text_input")
            if text is not None and not isinstance(text, str):
                raise RecordError("text_input must be a string")
            if text is None:
                text = maker.prompt(n_in or 0, ids, str(lineno))
            messages = [{"role": "user", "content": text}]
        body = _chat_body(opts, messages, n_out)
    return CapturedRequest(source=source, line=lineno, ts=float(ts_ms) / 1000.0, method="POST", path=opts.path,
                           headers=_JSON_HEADERS, body=compact_json(body), meta=meta)


_LOG_TIME_FIELDS = ("timestamp", "ts", "time", "created_at")


def _log_record(obj: dict[str, Any], source: str, lineno: int, opts: TraceOptions,
                maker: PromptMaker) -> CapturedRequest:
    batch_line = "body" in obj and "request" not in obj
    request = obj.get("body") if batch_line else obj.get("request")
    if not isinstance(request, dict):
        raise RecordError("missing field 'request' (the logged request body, a JSON object)")
    response = obj.get("response")
    if response is not None and not isinstance(response, dict):
        raise RecordError("response must be a JSON object")
    when = next((obj[k] for k in _LOG_TIME_FIELDS if obj.get(k) is not None), None)
    if when is None and response is not None:
        when = response.get("created")
    if when is None:
        raise RecordError(f"missing time: one of {', '.join(_LOG_TIME_FIELDS)} (or response.created)")
    try:
        ts = parse_ts(when)
    except TimestampError as exc:
        raise RecordError(str(exc)) from None
    usage = (response or {}).get("usage")
    usage = usage if isinstance(usage, dict) else {}
    n_out = _length(usage, "completion_tokens", opts.max_output_tokens, required=False)
    body = dict(request)
    if body.get("messages") is None and body.get("prompt") is None:
        n_in = _length(usage, "prompt_tokens", opts.max_prompt_tokens, required=False)
        if n_in is None:
            raise RecordError("the request has no messages or prompt and the response no usage.prompt_tokens")
        body["messages"] = [{"role": "user", "content": maker.prompt(n_in, [], str(lineno))}]
    if not any(k in body for k in ("max_tokens", "max_completion_tokens")) and n_out is not None:
        body["max_tokens"] = n_out
    body.setdefault("model", opts.model)
    if opts.stream is not None:
        body["stream"] = opts.stream
        if opts.stream and opts.include_usage:
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        elif not opts.stream:
            body.pop("stream_options", None)
    target = obj.get("url") or obj.get("path") or obj.get("endpoint")
    if target is None:
        target = opts.path if "messages" in body else "/v1/completions"
    path, host = split_target(target)
    meta = {k: v for k, v in obj.items()
            if k not in ("request", "response", "body", "url", "path", "endpoint", "method", *_LOG_TIME_FIELDS)}
    if host is not None:
        meta["host"] = host
    for key in ("prompt_tokens", "completion_tokens"):
        if isinstance(usage.get(key), int):
            meta["input_length" if key == "prompt_tokens" else "output_length"] = usage[key]
    captured = CapturedResponse(status=200, body=compact_json(response)) if response is not None else None
    method = obj.get("method", "POST")
    if not isinstance(method, str) or method.upper() != "POST":
        raise RecordError(f"method must be POST for an OpenAI call, not {method!r}")
    return CapturedRequest(source=source, line=lineno, ts=ts, method="POST", path=path, headers=_JSON_HEADERS,
                           body=compact_json(body), meta=meta, response=captured)


def _iter(path: Path, opts: TraceOptions, build: Any) -> Iterator[CapturedRequest | BadRecord]:
    source = str(path)
    maker = PromptMaker(opts.seed, opts.block_tokens)
    for item in iter_raw_lines(path):
        if isinstance(item, BadRecord):
            yield item  # a broken gzip stream: one BadRecord, then the end
            return
        lineno, raw = item
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        raw = raw.rstrip(b"\r\n")
        if not raw.strip():
            continue
        obj = _load_record(raw)
        if isinstance(obj, _Reason):
            yield BadRecord(source, lineno, obj)
            continue
        if not isinstance(obj, dict):
            yield BadRecord(source, lineno, f"a record must be a JSON object, not {type(obj).__name__}")
            continue
        try:
            yield build(obj, source, lineno, opts, maker)
        except RecordError as exc:
            yield BadRecord(source, lineno, str(exc))


def iter_mooncake(path: Path, opts: TraceOptions | None = None) -> Iterator[CapturedRequest | BadRecord]:
    """Requests of a Mooncake/AIPerf trace, in file order."""
    return _iter(path, opts or TraceOptions(), _mooncake_record)


def iter_openai_log(path: Path, opts: TraceOptions | None = None) -> Iterator[CapturedRequest | BadRecord]:
    """Requests of an OpenAI-style request log, in file order (streaming as logged unless opts.stream says)."""
    return _iter(path, opts or TraceOptions(), _log_record)
