"""LLM traces as captures: Mooncake/AIPerf trace JSONL and OpenAI-style request logs -> requests with
synthetic prompts of the stated lengths (reproducible by seed, prefixes shared by hash id), max_tokens
from the output length, bad lines counted with their line; the prompt-length segment."""
from __future__ import annotations

import json
from pathlib import Path

import duckdb
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.scenario import SegmentSpec, TraceOptions, scenario_from_dict
from harness.traffic.llm_trace_reader import iter_mooncake, iter_openai_log, synthetic_prompt
from harness.traffic.prepare import prepare_traffic
from harness.traffic.readers import iter_records
from harness.traffic.record import BadRecord, CapturedRequest
from harness.traffic.segments import SegmentEvaluator
from replay_helpers import write_capture


def body(req: CapturedRequest) -> dict:
    return json.loads(req.body)


def prompt(req: CapturedRequest) -> list[str]:
    return body(req)["messages"][0]["content"].split(" ")


def test_a_mooncake_line_becomes_a_streamed_chat_request_of_the_stated_lengths(tmp_path: Path) -> None:
    cap = write_capture(tmp_path / "t.jsonl", [
        {"timestamp": 1500, "input_length": 700, "output_length": 52, "hash_ids": [7, 8], "session_id": "s1"}])
    [req] = list(iter_records(cap, "mooncake", TraceOptions(model="m1")))
    assert isinstance(req, CapturedRequest)
    assert (req.method, req.path, req.ts, req.line) == ("POST", "/v1/chat/completions", 1.5, 1)
    doc = body(req)
    assert doc["model"] == "m1" and doc["max_tokens"] == 52 and doc["stream"] is True
    assert doc["stream_options"] == {"include_usage": True}
    assert len(prompt(req)) == 700 and all(prompt(req))  # 700 words, single spaces
    assert req.meta == {"session_id": "s1", "input_length": 700, "output_length": 52, "prefix_blocks": 2}
    assert req.header("content-type") == "application/json"


def test_prompts_are_reproducible_by_seed_and_share_prefixes_by_hash_id(tmp_path: Path) -> None:
    cap = write_capture(tmp_path / "t.jsonl", [
        {"timestamp": 0, "input_length": 1100, "output_length": 5, "hash_ids": [1, 2, 3]},
        {"timestamp": 1, "input_length": 900, "output_length": 5, "hash_ids": [1, 2]},
        {"timestamp": 2, "input_length": 600, "output_length": 5, "hash_ids": [1, 9]},
        {"timestamp": 3, "input_length": 600, "output_length": 5, "hash_ids": [4, 2]},
        {"timestamp": 4, "input_length": 700, "output_length": 5}])
    opts = TraceOptions(seed=3, block_tokens=256)
    a = [prompt(r) for r in iter_mooncake(cap, opts)]
    again = [prompt(r) for r in iter_mooncake(cap, opts)]
    other = [prompt(r) for r in iter_mooncake(cap, TraceOptions(seed=4, block_tokens=256))]
    assert a == again and all(x != y for x, y in zip(a, other))
    assert a[0][:512] == a[1][:512]  # blocks 1, 2 shared
    assert a[0][512:768] != a[1][512:768]  # block 3 vs the second record's own tail
    assert a[0][:256] == a[2][:256] and a[0][256:512] != a[2][256:512]
    assert a[3][:256] != a[0][:256] and a[3][256:512] == a[0][256:512]  # same block id, same text, wherever it sits
    assert [len(p) for p in a] == [1100, 900, 600, 600, 700]
    assert synthetic_prompt(300, seed=3, hash_ids=[1, 2], block_tokens=256).split(" ") == a[0][:300]


def test_bad_trace_lines_are_counted_with_their_line(tmp_path: Path) -> None:
    cap = write_capture(tmp_path / "t.jsonl", [
        {"timestamp": 0, "input_length": 10, "output_length": 3},
        {"timestamp": 1, "output_length": 3},  # no length
        {"timestamp": 2, "input_length": 10_000_000, "output_length": 3},  # absurd
        {"timestamp": 3, "input_length": -5, "output_length": 3},
        {"timestamp": 4, "input_length": 10, "output_length": 2.5},
        {"input_length": 10, "output_length": 3},  # no timestamp
        {"timestamp": -1, "input_length": 10},
        {"timestamp": 5, "input_length": 10, "hash_ids": ["a"]},
        "{not json",
        "[1, 2]",
        "",
        {"timestamp": 6, "text_input": "hello there", "output_length": 2},
    ])
    items = list(iter_mooncake(cap))
    bad = {b.line: b.reason for b in items if isinstance(b, BadRecord)}
    good = [r.line for r in items if isinstance(r, CapturedRequest)]
    assert good == [1, 12]
    assert sorted(bad) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert "input_length" in bad[2] and "10,000,000" in bad[3] and "at least 1" in bad[4]
    assert "whole number" in bad[5] and "timestamp" in bad[6] and "timestamp" in bad[7] and "hash_ids" in bad[8]
    assert "invalid JSON" in bad[9] and "JSON object" in bad[10]


def test_the_prompt_limit_is_a_scenario_key(tmp_path: Path) -> None:
    cap = write_capture(tmp_path / "t.jsonl", [{"timestamp": 0, "input_length": 5000, "output_length": 3}])
    [item] = list(iter_mooncake(cap, TraceOptions(max_prompt_tokens=4096)))
    assert isinstance(item, BadRecord) and "4,096-token limit" in item.reason


def test_text_messages_and_payload_are_taken_as_given(tmp_path: Path) -> None:
    cap = write_capture(tmp_path / "t.jsonl", [
        {"timestamp": 0, "text_input": "hi there", "output_length": 4},
        {"timestamp": 1, "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q"}]},
        {"timestamp": 2, "payload": {"model": "x", "prompt": "verbatim", "max_tokens": 9}},
    ])
    a, b, c = (body(r) for r in iter_mooncake(cap, TraceOptions(ignore_eos=True)))
    assert a["messages"] == [{"role": "user", "content": "hi there"}]
    assert (a["max_tokens"], a["min_tokens"], a["ignore_eos"]) == (4, 4, True)
    assert b["messages"][0] == {"role": "system", "content": "be brief"} and "max_tokens" not in b
    assert c == {"model": "x", "prompt": "verbatim", "max_tokens": 9}


def test_out_of_order_timestamps_are_sorted_and_bad_lines_land_in_bad_records(tmp_path: Path) -> None:
    cap = write_capture(tmp_path / "t.jsonl", [
        {"timestamp": 300, "input_length": 10, "output_length": 3},
        {"timestamp": 100, "input_length": 20, "output_length": 3},
        {"timestamp": 200, "output_length": 3},
        {"timestamp": 0, "input_length": 30, "output_length": 3}])
    s = scenario_from_dict({"name": "t", "traffic": {"path": str(cap), "format": "mooncake", "trace": {"seed": 1}},
                            "segments": {"prompt": {"prompt_tokens": True, "buckets": [16, 25]}},
                            "targets": {"baseline": {"url": "http://127.0.0.1:1"}, "candidate": {"url": "http://127.0.0.1:2"}},
                            "replay": {"allow": ["POST /v1/chat/completions"]}})
    p = prepare_traffic(s, tmp_path / "work")
    con = duckdb.connect()
    rows = con.execute(f"select source_line, offset_s, seg__prompt from read_parquet('{p.schedule_path}') "
                       "order by order_idx").fetchall()
    assert [(r[0], round(r[1], 3), r[2]) for r in rows] == [(4, 0.0, "25+"), (2, 0.1, "16-24"), (1, 0.3, "<16")]
    bad = con.execute(f"select line, reason from read_parquet('{p.bad_path}')").fetchall()
    assert bad == [(3, "missing field 'input_length' (or text_input, messages or payload)")]


def test_an_openai_request_log_keeps_the_request_and_takes_max_tokens_from_usage(tmp_path: Path) -> None:
    usage = {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52}
    cap = write_capture(tmp_path / "log.jsonl", [
        {"timestamp": "2026-12-01T10:00:00.500Z", "request": {"model": "gpt-x", "messages": [{"role": "user", "content": "hello"}]},
         "response": {"id": "c1", "created": 1, "usage": usage}, "user": "u1"},
        {"timestamp": 1764583201.0, "request": {"model": "gpt-x", "messages": [{"role": "user", "content": "x"}],
                                                "max_tokens": 7, "stream": True}},
        {"custom_id": "r3", "method": "POST", "url": "/v1/chat/completions", "ts": 1764583202,
         "body": {"model": "gpt-x", "messages": None}, "response": {"usage": usage}},  # messages not logged
        {"request": {"messages": []}},  # no time
        {"timestamp": 1, "request": {"model": "m"}},  # no messages, no usage
        {"timestamp": 1, "request": {"messages": [{"role": "user", "content": "x"}]}, "method": "GET"},
    ])
    items = list(iter_openai_log(cap))
    a, b, c = items[:3]
    assert all(isinstance(x, CapturedRequest) for x in (a, b, c))
    assert a.ts == 1796119200.5 and a.path == "/v1/chat/completions"
    assert body(a) == {"model": "gpt-x", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 40}
    assert a.meta == {"user": "u1", "input_length": 12, "output_length": 40}
    assert a.response is not None and json.loads(a.response.body)["id"] == "c1"
    assert body(b)["max_tokens"] == 7 and body(b)["stream"] is True  # as logged
    assert len(prompt(c)) == 12 and body(c)["max_tokens"] == 40 and c.meta["custom_id"] == "r3"
    bad = {x.line: x.reason for x in items[3:]}
    assert "missing time" in bad[4] and "no messages or prompt" in bad[5] and "POST" in bad[6]
    streamed = [body(r) for r in iter_openai_log(cap, TraceOptions(stream=True)) if isinstance(r, CapturedRequest)]
    assert all(d["stream"] is True and d["stream_options"] == {"include_usage": True} for d in streamed)


def test_prompt_length_segment_reads_the_stated_length_or_counts_words() -> None:
    ev = SegmentEvaluator([SegmentSpec("prompt", "prompt_tokens", None, (100, 1000))])
    chat = json.dumps({"messages": [{"role": "user", "content": "one two three"},
                                    {"role": "user", "content": [{"type": "text", "text": "four five"}]}]}).encode()
    stated = CapturedRequest("t", 1, 0.0, "POST", "/v1/chat/completions", body=chat, meta={"input_length": 4000})
    counted = CapturedRequest("t", 2, 0.0, "POST", "/v1/chat/completions", body=chat)
    nothing = CapturedRequest("t", 3, 0.0, "GET", "/v1/models")
    assert [ev.values(r)["prompt"] for r in (stated, counted, nothing)] == ["1000+", "<100", "<100"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["timestamp", "input_length", "output_length", "hash_ids", "text_input",
                                        "messages", "payload", "request", "response", "ts", "body", "url"]),
                       st.recursive(st.none() | st.booleans() | st.integers(-10, 10**8) | st.floats() | st.text(max_size=5),
                                    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=3), c, max_size=3),
                                    max_leaves=6)))
def test_no_trace_line_crashes_a_reader(tmp_path_factory, line: dict) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("h") / "t.jsonl"
    path.write_text(json.dumps(line) + "\n")
    for read in (iter_mooncake, iter_openai_log):
        for item in read(path, TraceOptions(max_prompt_tokens=10_000)):
            assert isinstance(item, (CapturedRequest, BadRecord)) and item.line == 1


def test_inspect_and_convert_read_a_declared_trace(tmp_path: Path) -> None:
    from harness.traffic.convert import convert_capture
    from harness.traffic.inspect import inspect_capture

    cap = write_capture(tmp_path / "t.jsonl", [
        {"timestamp": 500, "input_length": 40, "output_length": 3},
        {"timestamp": 0, "input_length": 50, "output_length": 4},
        {"timestamp": 900, "input_length": 0, "output_length": 4}])
    ins = inspect_capture(cap, "mooncake")
    assert (ins.records, ins.bad, ins.out_of_order) == (2, 1, 1)
    out = convert_capture(cap, "jsonl", "mooncake", str(tmp_path / "out.jsonl"))
    assert out is not None
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["body"]["max_tokens"] for r in recs] == [3, 4]
    assert [len(r["body"]["messages"][0]["content"].split(" ")) for r in recs] == [40, 50]
    assert recs[0]["input_length"] == 40  # kept as metadata: the prompt_tokens segment reads it back
