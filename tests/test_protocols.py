"""Protocols and output checks, against real servers on 127.0.0.1: the seed's output schema, an
OpenAI-compatible server streaming SSE (token timing, usage, detectors, tool calls, truncation), a
KServe V2 server, and answers that are not JSON, truncated or too large. No mocks: every answer crosses
a socket and a real Locust replay."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import urllib.request
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fault_server import FaultServer
from kserve_v2_server import KServeV2Server
from openai_server import ABSTAIN_TEXT, OpenAIServer
from replay_helpers import replay, scenario_dict, write_capture

from harness.compat import OutputValidator
from harness.errors import ScenarioError
from harness.protocols import read_output
from harness.protocols.openai import read_openai_output, tool_calls_valid
from harness.scenario import DetectorConfig, scenario_from_dict

REPO = Path(__file__).resolve().parents[1]
SEED_SCHEMA = REPO / "scenarios" / "schemas" / "fraud_output.schema.json"
T0 = 1_700_000_000.0
DETECTORS = {"abstention": {"pattern": r"(?i)\bI'm sorry\b|\bcannot help\b"},
             "citations": {"pattern": r"\[\d+\]", "field": "$.citations"},
             "fallback_model": {"expected_model": "tiny-chat-1"}}


def chat(mode: str, *, stream: bool, usage: bool = True, i: int = 0, tools: bool = False) -> dict:
    body: dict = {"model": "tiny-chat-1", "messages": [{"role": "user", "content": "what is six times seven"}]}
    if stream:
        body["stream"] = True
        if usage:
            body["stream_options"] = {"include_usage": True}
    if tools:
        body["tools"] = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    return {"ts": T0 + i * 0.02, "method": "POST", "path": "/v1/chat/completions",
            "headers": {"Content-Type": "application/json", "X-Test-Mode": mode}, "body": body}


def openai_scenario(cap: Path, url: str, **replay_opts: object) -> dict:
    sc = scenario_dict(cap, url, None, timeout_s=replay_opts.pop("timeout_s", 5), **replay_opts)
    sc["targets"]["baseline"]["protocol"] = "openai"
    sc["output"] = {"detectors": DETECTORS}
    return sc


def legs(con, cols: str) -> list[dict]:
    cur = con.execute(f"select {cols} from legs order by order_idx")
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


# ------------------------------------------------------------------------------------------ schema

def test_mlserver_sklearn_outputs_give_label_and_score_without_rows() -> None:
    """MLServer's scikit-learn runtime names its outputs predict / predict_proba; with output.rows off the
    label comes from predict and the confidence from predict_proba, never from the 0/1 label tensor."""
    from harness.protocols.kserve_v2 import read_kserve_v2_output

    body = json.dumps({"model_name": "m", "outputs": [
        {"name": "predict", "shape": [1, 1], "datatype": "INT64", "data": [1]},
        {"name": "predict_proba", "shape": [1, 2], "datatype": "FP64", "data": [0.3, 0.7]}]}).encode()
    out = read_kserve_v2_output(200, body)
    assert (out.prediction, out.confidence) == ("1", 0.7)


def test_the_seed_output_schema_ships_and_judges() -> None:
    v = OutputValidator(None, {"/v1/score": SEED_SCHEMA})
    assert v.validate("/v1/score", {"prediction": "legit", "confidence": 0.2, "model_version": "1.4"}) == (True, None)
    for bad, where in [({"prediction": "legit", "confidence": 0.2}, "model_version"),
                       ({"prediction": "legit", "confidence": 1.5, "model_version": "1"}, "confidence"),
                       ({"prediction": "legit", "confidence": -0.1, "model_version": "1"}, "confidence"),
                       ({"prediction": "legit", "confidence": "0.3", "model_version": "1"}, "confidence"),
                       ({"confidence": 0.3, "model_version": "1"}, "prediction")]:
        ok, errors = v.validate("/v1/score", bad)
        assert ok is False and where in errors
    assert v.validate("/v1/other", {"anything": 1}) == (None, None)  # no schema for that route


# ------------------------------------------------------------------------------------------ SSE parsing

def sse(*chunks: dict | str, done: bool = True, eol: str = "\n") -> bytes:
    out = "".join(f"data: {c if isinstance(c, str) else json.dumps(c)}{eol}{eol}" for c in chunks)
    return (out + (f"data: [DONE]{eol}{eol}" if done else "")).encode()


def delta(**d: object) -> dict:
    return {"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [{"index": 0, "delta": d,
                                                                                      "finish_reason": None}]}


@pytest.mark.parametrize("eol", ["\n", "\r\n", "\r"])
def test_sse_is_parsed_per_the_specification(eol: str) -> None:
    body = sse(delta(role="assistant", content=""), delta(content="Hel"), delta(content="lo"), eol=eol)
    body = (": keep-alive comment" + eol).encode() + body
    out = read_openai_output(200, body, "$.prediction", "$.confidence", content_type="text/event-stream")
    assert out.streamed and not out.truncated_stream and out.content == "Hello" and out.token_chunks == 2
    assert out.doc["choices"][0]["message"] == {"role": "assistant", "content": "Hello"}


def test_token_times_come_from_the_read_that_completed_each_event() -> None:
    e0, e1, e2 = sse(delta(role="assistant"), done=False), sse(delta(content="a"), done=False), sse(delta(content="b"))
    body = e0 + e1 + e2
    # three reads: role event at 1 ms, half of the first token at 5 ms, its end + the rest at 30 ms
    arrivals = [(len(e0), 1.0), (len(e0) + 5, 5.0), (len(body), 30.0)]
    out = read_openai_output(200, body, "$.p", "$.c", content_type="text/event-stream", arrivals=arrivals)
    assert out.time_to_first_token_ms == 30.0 and out.inter_token_ms_mean == 0.0
    arrivals = [(len(e0), 1.0), (len(e0 + e1), 12.0), (len(body), 30.0)]
    out = read_openai_output(200, body, "$.p", "$.c", content_type="text/event-stream", arrivals=arrivals)
    assert out.time_to_first_token_ms == 12.0 and out.inter_token_ms_mean == 18.0 and out.inter_token_ms_p95 == 18.0


def test_multi_line_data_and_a_stream_without_done() -> None:
    body = b'data: {"choices": [{"index": 0,\ndata: "delta": {"content": "x"}}]}\n\n'
    out = read_openai_output(200, body, "$.p", "$.c", content_type="text/event-stream")
    assert out.content == "x" and out.truncated_stream  # joined data lines; no [DONE]
    out = read_openai_output(200, b"data: not json\n\n", "$.p", "$.c", content_type="text/event-stream")
    assert out.invalid_json


def test_streamed_tool_calls_are_assembled_and_checked() -> None:
    body = sse(delta(role="assistant"),
               delta(tool_calls=[{"index": 0, "id": "call_1", "type": "function",
                                  "function": {"name": "f", "arguments": '{"a": '}}]),
               delta(tool_calls=[{"index": 0, "function": {"arguments": "1}"}}]),
               delta(tool_calls=[{"index": 1, "id": "call_2", "type": "function",
                                  "function": {"name": "g", "arguments": "[1]"}}]))
    out = read_openai_output(200, body, "$.p", "$.c", content_type="text/event-stream")
    calls = out.doc["choices"][0]["message"]["tool_calls"]
    assert [c["function"]["arguments"] for c in calls] == ['{"a": 1}', "[1]"]
    assert out.tool_calls_valid is False  # arguments must be a JSON object: "[1]" is not
    assert tool_calls_valid([{"function": {"arguments": '{"a": 1}'}}]) is True
    assert tool_calls_valid([{"function": {"arguments": '{"a": '}}]) is False
    assert tool_calls_valid(None) is None


def test_detectors_read_fields_and_headers() -> None:
    doc = json.dumps({"model": "big-2024-08", "choices": [{"message": {"content": "see [2]"}}], "refs": []}).encode()
    cfg = DetectorConfig(citation_field="$.refs", expected_model=r"big-\d{4}-\d{2}")
    out = read_output("openai", 200, doc, "$.p", "$.c", headers={"content-type": "application/json"}, detectors=cfg)
    assert out.cited is False and out.fallback_model is False and out.abstained is None
    cfg = DetectorConfig(citation_pattern=r"\[\d\]", fallback_header="X-Served-By-Fallback")
    out = read_output("openai", 200, doc, "$.p", "$.c", headers={"x-served-by-fallback": "true"}, detectors=cfg)
    assert out.cited is True and out.fallback_model is True
    out = read_output("openai", 200, doc, "$.p", "$.c", headers={"x-served-by-fallback": "0"}, detectors=cfg)
    assert out.fallback_model is False
    # plain JSON answers: the content by JSON path
    cfg = DetectorConfig(content="$.answer", abstention_pattern="(?i)cannot")
    out = read_output("json", 200, b'{"answer": "I cannot say"}', "$.p", "$.c", detectors=cfg)
    assert out.abstained is True
    out = read_output("json", 500, b'{"answer": "I cannot say"}', "$.p", "$.c", detectors=cfg)
    assert out.abstained is None  # errors are not judged


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=400), protocol=st.sampled_from(["json", "kserve_v2", "openai"]),
       ctype=st.sampled_from([None, "text/event-stream", "application/json"]))
def test_no_answer_crashes_a_reader(body: bytes, protocol: str, ctype: str | None) -> None:
    cfg = DetectorConfig(content="$.x", abstention_pattern="a", citation_pattern="b", citation_field="$.c",
                         expected_model="m")
    read_output(protocol, 200, body, "$.prediction", "$.confidence", headers={"content-type": ctype or ""},
                arrivals=[(len(body), 1.0)], detectors=cfg)


json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
                           lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
                           max_leaves=12)


@pytest.mark.integration
@settings(max_examples=300, deadline=None)
@given(chunks=st.lists(json_values, max_size=5), done=st.booleans())
def test_no_stream_of_odd_chunks_crashes_the_openai_reader(chunks: list, done: bool) -> None:
    body = sse(*[json.dumps(c) for c in chunks], done=done)
    out = read_output("openai", 200, body, "$.prediction", "$.confidence",
                      headers={"content-type": "text/event-stream"}, detectors=DetectorConfig(abstention_pattern="x"))
    assert out.streamed


# ------------------------------------------------------------------------------------------ OpenAI, for real

@pytest.mark.integration
def test_openai_streaming_replay_records_timing_tokens_and_detectors(tmp_path: Path) -> None:
    ttft_ms, token_ms = 60.0, 15.0
    with OpenAIServer(ttft_ms=ttft_ms, token_ms=token_ms) as srv:
        modes = ["normal", "abstain", "cite", "fallback", "tool", "bad_tool"]
        recs = [chat(m, stream=True, i=i, tools=m.endswith("tool")) for i, m in enumerate(modes)]
        recs.append(chat("normal", stream=True, usage=False, i=len(recs)))
        recs.append(chat("normal", stream=False, i=len(recs)))
        cap = write_capture(tmp_path / "c.jsonl", recs)
        con, _ = replay(tmp_path, openai_scenario(cap, srv.url))
        rows = legs(con, "*")
    by_mode = dict(zip(modes + ["no_usage", "plain"], rows))
    for name, r in by_mode.items():
        assert r["error_kind"] is None, (name, r["error_detail"])
    for name in modes + ["no_usage"]:
        r = by_mode[name]
        assert r["streamed"] is True
        # planted: ttft_ms before the first token, token_ms between tokens (lower bounds only)
        assert r["time_to_first_token_ms"] >= ttft_ms
        k = r["token_chunks"]
        assert k >= 2 and r["inter_token_ms_mean"] >= 0 and r["inter_token_ms_p95"] >= 0
        assert r["time_to_first_token_ms"] + r["inter_token_ms_mean"] * (k - 1) >= ttft_ms + token_ms * (k - 1) - 1e-6
        assert r["service_ms"] >= r["time_to_first_token_ms"] - 1.0
    normal = by_mode["normal"]
    assert normal["prompt_tokens"] == 5 and normal["completion_tokens"] == 5 and normal["token_chunks"] == 5
    assert json.loads(normal["output_json"])["choices"][0]["message"]["content"] == "The answer is 42 ."
    assert normal["finish_reason"] == "stop" and normal["model_version"] == "tiny-chat-1"
    assert (normal["abstained"], normal["cited"], normal["fallback_model"], normal["tool_calls_valid"]) == \
        (False, False, False, None)
    assert by_mode["abstain"]["abstained"] is True and by_mode["abstain"]["completion_tokens"] == len(ABSTAIN_TEXT.split())
    assert by_mode["cite"]["cited"] is True
    assert by_mode["fallback"]["fallback_model"] is True and by_mode["fallback"]["model_version"] == "tiny-chat-fallback"
    assert by_mode["tool"]["tool_calls_valid"] is True and by_mode["tool"]["finish_reason"] == "tool_calls"
    assert by_mode["bad_tool"]["tool_calls_valid"] is False
    assert by_mode["no_usage"]["prompt_tokens"] is None and by_mode["no_usage"]["completion_tokens"] is None
    plain = by_mode["plain"]
    assert plain["streamed"] is False and plain["time_to_first_token_ms"] is None
    assert plain["prompt_tokens"] == 5 and plain["completion_tokens"] == 5 and plain["abstained"] is False


@pytest.mark.integration
def test_truncated_streams_and_answers_that_are_not_json(tmp_path: Path) -> None:
    with OpenAIServer(token_ms=5) as srv:
        recs = [chat("truncate", stream=True, i=0), chat("no_done", stream=True, i=1),
                chat("not_json", stream=True, i=2), chat("not_json", stream=False, i=3),
                chat("normal", stream=True, i=4)]
        cap = write_capture(tmp_path / "c.jsonl", recs)
        con, outcome = replay(tmp_path, openai_scenario(cap, srv.url))
        rows = legs(con, "error_kind, token_chunks, output_json, status_code, time_to_first_token_ms")
    kinds = [r["error_kind"] for r in rows]
    assert kinds == ["truncated_stream", "truncated_stream", "invalid_json", "invalid_json", None]
    # what arrived before the cut is kept: the first two tokens
    assert rows[0]["token_chunks"] == 2 and rows[0]["time_to_first_token_ms"] is not None
    assert json.loads(rows[0]["output_json"])["choices"][0]["message"]["content"] == "The answer"
    assert rows[1]["token_chunks"] == 5  # complete, but never said [DONE]
    assert outcome.stats.completed_legs == 5  # the run went on


@pytest.mark.integration
def test_a_20_mb_answer_is_too_large_under_a_smaller_cap_and_the_run_goes_on(tmp_path: Path) -> None:
    cap_bytes = 2 * 1024 * 1024
    with OpenAIServer(huge_mb=20) as srv, FaultServer() as fault:
        recs = [chat("huge", stream=True, i=0), chat("huge", stream=False, i=1), chat("normal", stream=True, i=2)]
        cap = write_capture(tmp_path / "c.jsonl", recs)
        con, _ = replay(tmp_path, openai_scenario(cap, srv.url, max_response_bytes=cap_bytes))
        rows = legs(con, "error_kind, response_bytes, output_json")
        assert [r["error_kind"] for r in rows] == ["too_large", "too_large", None]
        assert rows[0]["response_bytes"] > cap_bytes and rows[0]["output_json"] is None
        # a plain JSON target too: Content-Length says 20 MB
        run2 = tmp_path / "fault"
        run2.mkdir()
        cap2 = write_capture(run2 / "c.jsonl", [{"ts": T0, "method": "GET", "path": "/big?mb=20"},
                                                {"ts": T0 + 0.05, "method": "GET", "path": "/ok"}])
        con2, _ = replay(run2, scenario_dict(cap2, fault.url, None, max_response_bytes=cap_bytes))
        assert [r[0] for r in con2.execute("select error_kind from legs order by order_idx").fetchall()] == \
            ["too_large", None]


def test_detectors_and_protocols_are_scenario_keys() -> None:
    base = {"name": "t", "traffic": {"path": "x.jsonl"}, "targets": {"baseline": {"url": "http://127.0.0.1:1",
                                                                                  "protocol": "openai"}},
            "replay": {"mode": "baseline-only"}}
    s = scenario_from_dict({**base, "output": {"detectors": DETECTORS, "ignore_paths": ["$.id"]}}, check_files=False)
    d = s.output.detectors
    assert d.abstention_pattern and d.citation_field == "$.citations" and d.expected_model == "tiny-chat-1"
    assert s.output.ignore_paths == ("$.id",)
    for bad, words in [({"detectors": {"abstention": {"pattern": "("}}}, "abstention.pattern"),
                       ({"detectors": {"fallback_model": {"field": "$.model"}}}, "needs expected_model or header"),
                       ({"detectors": {"abstention": {"regex": "x"}}}, "regex"),
                       ({"ignore_paths": ["id"]}, "ignore_paths[0]")]:
        with pytest.raises(ScenarioError, match=words.replace("[", r"\[").replace("]", r"\]")):
            scenario_from_dict({**base, "output": bad}, check_files=False)


@pytest.mark.integration
def test_detectors_travel_to_distributed_workers(tmp_path: Path) -> None:
    from harness.replay.dispatcher import DispatchPlan, TargetPlan
    from harness.replay.distributed import plan_from_message, plan_to_message

    cfg = DetectorConfig(abstention_pattern="sorry", fallback_header="X-F")
    plan = DispatchPlan(schedule_path=tmp_path / "s.parquet", targets=(TargetPlan("baseline", "http://x", "openai", {}),),
                        speed=1, timeout_s=1, connect_timeout_s=1, max_in_flight=1, max_response_bytes=10,
                        prediction_path="$.p", confidence_path="$.c", schema=None, route_schemas={}, max_duration_s=None,
                        detectors=cfg)
    back = plan_from_message(json.loads(json.dumps(plan_to_message(plan))), tmp_path)
    assert back.detectors == cfg and asdict(back)["detectors"] == asdict(cfg)


# ------------------------------------------------------------------------------------------ KServe V2

def kserve_records(n: int) -> list[dict]:
    return [{"ts": T0 + i * 0.02, "method": "POST", "path": "/v2/models/fraud/infer",
             "headers": {"Content-Type": "application/json"},
             "body": {"id": f"r{i}", "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP32",
                                                 "data": [[i * 5.0, 1.0, 2.0, 3.0]]}]}} for i in range(n)]


def kserve_scenario(cap: Path, url: str) -> dict:
    sc = scenario_dict(cap, url, None)
    sc["targets"]["baseline"]["protocol"] = "kserve_v2"
    return sc


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:  # noqa: S310 - 127.0.0.1 only
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.integration
def test_kserve_v2_replay_extracts_label_and_probability(tmp_path: Path) -> None:
    """Against tests/kserve_v2_server.py: a server of our own that follows the Open Inference Protocol
    (kserve itself is too heavy a test dependency; see that module, and the opt-in test below)."""
    with KServeV2Server() as srv:
        assert get(srv.url + "/v2/health/ready") == (200, {"ready": True})
        assert get(srv.url + "/v2/models/fraud/ready") == (200, {"name": "fraud", "ready": True})
        status, meta = get(srv.url + "/v2/models/fraud")
        assert status == 200 and [o["name"] for o in meta["outputs"]] == ["label", "probability"]
        assert get(srv.url + "/v2/models/nope")[0] == 404
        recs = kserve_records(20)
        recs.append({**recs[0], "ts": T0 + 1, "path": "/v2/models/nope/infer"})
        recs.append({**recs[0], "ts": T0 + 1.02, "body": {"inputs": [{"name": "features", "shape": [1, 4],
                                                                        "datatype": "FP32", "data": [1.0]}]}})
        cap = write_capture(tmp_path / "c.jsonl", recs)
        con, _ = replay(tmp_path, kserve_scenario(cap, srv.url))
        rows = legs(con, "error_kind, status_code, prediction, confidence, model_version, output_json")
    for i, r in enumerate(rows[:20]):
        p = min(1.0, (i * 5 + 6) / 100)
        assert r["error_kind"] is None and r["model_version"] == "1"
        assert r["prediction"] == ("fraud" if p > 0.5 else "legit")
        assert r["confidence"] == pytest.approx(p, rel=1e-6)
        assert json.loads(r["output_json"])["id"] == f"r{i}"
    assert [(r["status_code"], r["error_kind"]) for r in rows[20:]] == [(404, "http_4xx"), (400, "http_4xx")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_KSERVE_VENV_PYTHON = Path(__file__).resolve().parents[1] / ".venv-kserve" / "bin" / "python"
KSERVE_PYTHON = os.environ.get("HARNESS_KSERVE_PYTHON") or (str(_KSERVE_VENV_PYTHON) if _KSERVE_VENV_PYTHON.exists()
                                                            else None)


@pytest.mark.integration
@pytest.mark.skipif(not KSERVE_PYTHON, reason="no .venv-kserve (make stacks) and no HARNESS_KSERVE_PYTHON: a Python "
                    "with kserve installed")
def test_faithful_server_matches_real_kserve(tmp_path: Path) -> None:
    """Real KServe (kserve from PyPI, in its own interpreter) serving the same model: its answers match
    tests/kserve_v2_server.py's, and a replay against it reads the same labels and confidences."""
    port = _free_port()
    proc = subprocess.Popen([str(KSERVE_PYTHON), str(Path(__file__).parent / "kserve_real_model.py"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if get(url + "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        with KServeV2Server() as ours:
            for path in ("/v2/health/live", "/v2/health/ready", "/v2/models/fraud/ready"):
                assert get(url + path) == get(ours.url + path)
            assert get(url + "/v2/models/nope")[0] == get(ours.url + "/v2/models/nope")[0] == 404
            for rec in kserve_records(5):
                answers = []
                for base in (url, ours.url):
                    req = urllib.request.Request(base + rec["path"], data=json.dumps(rec["body"]).encode(),
                                                 headers={"Content-Type": "application/json"})
                    with urllib.request.urlopen(req, timeout=5) as r:  # noqa: S310
                        answers.append(json.loads(r.read()))
                assert answers[0] == answers[1]
        cap = write_capture(tmp_path / "c.jsonl", kserve_records(10))
        con, _ = replay(tmp_path, kserve_scenario(cap, url))
        rows = legs(con, "error_kind, prediction, confidence")
        assert all(r["error_kind"] is None for r in rows)
        assert [r["prediction"] for r in rows] == ["fraud" if (i * 5 + 6) / 100 > 0.5 else "legit" for i in range(10)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_long_answers_keep_a_comparable_json_excerpt() -> None:
    from harness.replay.dispatcher import OUTPUT_EXCERPT_CHARS, _fit_json

    doc = {"choices": [{"message": {"content": "a" * 5000}}], "usage": {"completion_tokens": 900}}
    text = _fit_json(doc, OUTPUT_EXCERPT_CHARS)
    assert len(text) <= OUTPUT_EXCERPT_CHARS and json.loads(text)["usage"] == {"completion_tokens": 900}
    other = _fit_json({**doc, "choices": [{"message": {"content": "a" * 4999 + "b"}}]}, OUTPUT_EXCERPT_CHARS)
    assert text != other and text == _fit_json(json.loads(json.dumps(doc)), OUTPUT_EXCERPT_CHARS)
    short = {"prediction": "legit"}
    assert _fit_json(short, OUTPUT_EXCERPT_CHARS) == '{"prediction":"legit"}'


def test_answers_parse_as_the_standard_library_parses_them() -> None:
    """orjson reads the answers where it agrees with json.loads; where it would not (integers past 64 bits,
    NaN, UTF-16), the standard library's reading is the one kept."""
    from harness.protocols.json_protocol import loads

    for body in (b'{"id": 123456789012345678901234567890, "p": 0.1}', b'{"c": NaN}', '{"a": [1, "é"]}'.encode("utf-16"),
                 b'{"s": "\\ud800"}', b'  [1, 2.5e3, true, null] '):
        got, want = loads(body), json.loads(body)
        assert repr(got) == repr(want), body
    for body in (b"{", b"\xff", b"[1,]"):
        with pytest.raises(ValueError):
            loads(body)


def test_short_json_answers_are_stored_as_sent_with_secrets_masked() -> None:
    from harness.protocols import read_output
    from harness.replay.dispatcher import Dispatcher

    class Plan:
        secrets = ("test-token-123",)

    d = Dispatcher.__new__(Dispatcher)
    d.plan = Plan()  # type: ignore[assignment]
    from harness.traffic.redaction import Redactor
    d._redactor = Redactor()
    body = b'{"prediction": "a", "echo": "Bearer test-token-123", "api_key": "sk-live-1"}'
    out = read_output("json", 200, body, "$.prediction", "$.confidence")
    text = d._excerpt(out, body)
    assert "test-token-123" not in text and "sk-live-1" not in text
    assert json.loads(text)["prediction"] == "a"
    plain = b'{"prediction": "a",\n "confidence": 0.5}'
    assert d._excerpt(read_output("json", 200, plain, "$.prediction", "$.confidence"), plain) == plain.decode()


def test_long_numeric_answers_keep_a_valid_json_excerpt() -> None:
    from harness.replay.dispatcher import OUTPUT_EXCERPT_CHARS, _fit_json

    # A KServe V2 answer with 10,000 floats, an embedding-like list of lists, and an object with many keys:
    # each excerpt parses, fits, keeps the leading values, and differs when the tail differs.
    v2 = {"model_name": "m", "outputs": [{"name": "predict_proba", "shape": [5000, 2], "datatype": "FP64",
                                           "data": [i / 10000 for i in range(10000)]}]}
    text = _fit_json(v2, OUTPUT_EXCERPT_CHARS)
    doc = json.loads(text)
    assert len(text) <= OUTPUT_EXCERPT_CHARS
    assert doc["model_name"] == "m" and doc["outputs"][0]["shape"] == [5000, 2]
    assert doc["outputs"][0]["data"][:2] == [0.0, 0.0001]
    changed = json.loads(json.dumps(v2))
    changed["outputs"][0]["data"][-1] = 5.0
    assert _fit_json(changed, OUTPUT_EXCERPT_CHARS) != text
    nested = {"embeddings": [[float(i + j) for j in range(384)] for i in range(64)]}
    assert len(_fit_json(nested, OUTPUT_EXCERPT_CHARS)) <= OUTPUT_EXCERPT_CHARS
    json.loads(_fit_json(nested, OUTPUT_EXCERPT_CHARS))
    wide = {f"feature_{i}": i for i in range(5000)}
    wide_text = _fit_json(wide, OUTPUT_EXCERPT_CHARS)
    assert len(wide_text) <= OUTPUT_EXCERPT_CHARS and json.loads(wide_text)["feature_0"] == 0


@pytest.mark.parametrize("body", [b'{"prediction": "fraud", "confidence": NaN}', b'{"confidence": Infinity}',
                                  b'{"scores": [-Infinity, 0.5]}'])
def test_nan_and_infinity_make_an_answer_not_json(body: bytes) -> None:
    """Python's json writes and reads NaN and Infinity; JSON has neither (RFC 8259), and a strict consumer
    (JSON.parse, Go, Java) rejects the whole answer: invalid_json, not an answer whose confidence is left out."""
    out = read_output("json", 200, body, "$.prediction", "$.confidence")
    assert out.invalid_json and out.confidence is None
    assert not read_output("json", 200, body.replace(b"NaN", b"0.5").replace(b"-Infinity", b"1").replace(
        b"Infinity", b"1"), "$.prediction", "$.confidence").invalid_json
    stream = b'data: {"choices": [{"index": 0, "delta": {"content": "hi"}, "logprobs": NaN}]}\n\ndata: [DONE]\n\n'
    assert read_output("openai", 200, stream, "$.prediction", "$.confidence",
                       headers={"content-type": "text/event-stream"}).invalid_json


def test_an_unreadable_answer_says_why_without_quoting_it() -> None:
    """invalid_json carries its reason into legs.error_detail: where the JSON broke, a byte that is not UTF-8
    and the charset the answer declared (a candidate answering ISO-8859-1 was blocked with no word why)."""
    latin = '{"prediction": "legit", "model_version": "modèle"}'.encode("iso-8859-1")
    out = read_output("json", 200, latin, "$.prediction", "$.confidence",
                      headers={"content-type": "application/json; charset=ISO-8859-1"})
    assert out.invalid_json and out.invalid_reason == (
        "the answer is not UTF-8 (byte 0xe8 at offset 45); the answer declares charset iso-8859-1, and JSON between "
        "systems is UTF-8 (RFC 8259)")
    out = read_output("json", 200, b'{"prediction": "secret-ish text", ', "$.prediction", "$.confidence")
    assert out.invalid_json and out.invalid_reason.startswith("not JSON: ") and "secret" not in out.invalid_reason
    assert read_output("json", 200, b"", "$.p", "$.c").invalid_reason == "the answer is empty"


def test_an_error_object_where_a_result_was_due_is_a_model_error() -> None:
    """vLLM ends a failing stream with an error event and [DONE]; an answer can be a 200 whose JSON is an error
    object. The OpenAI client raises on both; they were read as successes (a candidate failing 6 % of its
    streams so PROMOTEd). The detail names the error's type and code, never its message (it may quote the
    prompt)."""
    stream = (b'data: {"id": "c1", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n'
              b'data: {"error": {"message": "prompt: my secret text", "type": "InternalServerError", "code": 500}}\n\n'
              b"data: [DONE]\n\n")
    out = read_output("openai", 200, stream, "$.p", "$.c", headers={"content-type": "text/event-stream"})
    assert out.streamed and not out.truncated_stream and out.model_error == (
        "a stream event is an error object (type InternalServerError, code 500) where a result was due (the OpenAI "
        "client raises on it)")
    plain = json.dumps({"error": {"message": "secret", "type": "server_error"}}).encode()
    out = read_output("openai", 200, plain, "$.p", "$.c", headers={"content-type": "application/json"})
    assert out.model_error.startswith("the answer is an error object (type server_error)")
    assert "secret" not in out.model_error
    ok = b'{"choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}]}'
    assert read_output("openai", 200, ok, "$.p", "$.c", headers={"content-type": "application/json"}).model_error is None


def test_reasoning_tokens_under_vllms_field_name_are_tokens() -> None:
    """vLLM (0.10 on) and OpenRouter stream thinking as `delta.reasoning`, others as `reasoning_content`: both
    are tokens (the first token is the first reasoning one), and the assembled answer keeps the text."""
    for field in ("reasoning_content", "reasoning"):
        events = [{"choices": [{"index": 0, "delta": {"role": "assistant"}}]},
                  {"choices": [{"index": 0, "delta": {field: "Let me think."}}]},
                  {"choices": [{"index": 0, "delta": {"content": "42"}, "finish_reason": "stop"}]}]
        body = b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
        ends = [len(b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events[:i + 1])) for i in range(3)]
        out = read_output("openai", 200, body, "$.p", "$.c", headers={"content-type": "text/event-stream"},
                          arrivals=[(ends[0], 5.0), (ends[1], 80.0), (ends[2], 300.0), (len(body), 301.0)])
        assert out.time_to_first_token_ms == 80.0 and out.token_chunks == 2, field
        assert out.doc["choices"][0]["message"][field] == "Let me think."
