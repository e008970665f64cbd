"""The shadow run's recorder: each answer's JSON is parsed once for its leg and its capture record, both
masked; the recorder process takes raw exchanges over a channel that never blocks the proxy (full or
gone: dropped and counted by reason), ignores the terminal's SIGINT and writes everything it was given."""
from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from harness.scenario import Scenario, load_scenario
from harness.shadow.channel import CHANNEL_FULL, RECORDER_GONE, RecorderChannel
from harness.shadow.recorder import Recorder

T0 = 1_790_000_000.0
SECRET = "sk-recorder-secret-123456"
REQUEST = json.dumps({"amount": 12, "api_key": SECRET}).encode()
ANSWER = json.dumps({"prediction": "ok", "confidence": 0.9, "session_token": SECRET}).encode()
JSON = [(b"Content-Type", b"application/json")]  # headers as the proxy read them


def _scenario(tmp: Path, protocol: str = "json", allow: str = "POST /v1/score", **more: Any) -> Scenario:
    path = tmp / "live.yaml"
    path.write_text(yaml.safe_dump({
        "name": "live", "traffic": {"path": str(tmp / "unused.jsonl")},
        "targets": {"baseline": {"url": "http://127.0.0.1:9", "protocol": protocol},
                    "candidate": {"url": "http://127.0.0.1:9", "protocol": protocol}},
        "replay": {"allow": [allow]},
        "promotion_gates": {"error_rate": {"maximum": 0.01}}, **more}))
    return load_scenario(path)


def _items(i: int, body: bytes = REQUEST) -> list[tuple[Any, ...]]:
    rid, ts = f"s{i + 1:09d}", T0 + i * 0.01
    headers = [(b"Content-Type", b"application/json"), (b"Authorization", f"Bearer {SECRET}".encode())]
    return [("b", rid, "/v1/score", True, "POST", "/v1/score", headers, body, ts, 200, JSON, ANSWER, len(ANSWER),
             ts, ts + 0.005, None, [(len(ANSWER), ts + 0.005)]),
            ("c", rid, "/v1/score", ts, 200, JSON, ANSWER, len(ANSWER), ts, ts + 0.006, None, [(len(ANSWER), ts + 0.006)],
             b"", "POST")]


def _lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    return [json.loads(x) for x in (gzip.decompress(data) if path.suffix == ".gz" else data).splitlines()]


def test_each_body_is_parsed_once_and_the_leg_and_the_record_are_masked(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rec = Recorder(_scenario(tmp_path), str(tmp_path / "c.jsonl.gz"), str(tmp_path / "legs.jsonl"))
    parses = []
    for module, name in ((orjson, "loads"), (json, "loads")):
        real = getattr(module, name)

        def spy(data: Any, *args: Any, _real: Any = real, **kwargs: Any) -> Any:
            parses.append(bytes(data) if not isinstance(data, str) else data.encode())
            return _real(data, *args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    for item in _items(0):
        rec.handle(item)
    monkeypatch.undo()
    counts = rec.close()
    # the request body once, the baseline's answer once (its leg and its record), the candidate's once
    assert sorted(parses) == sorted([REQUEST, ANSWER, ANSWER]), parses
    assert counts["dropped"] == {} and counts["capture"]["records_written"] == 1
    assert counts["legs"]["records_written"] == 2
    (record,) = _lines(tmp_path / "c.jsonl.gz")
    legs = _lines(tmp_path / "legs.jsonl")
    assert record["body"] == {"amount": 12, "api_key": "[REDACTED]"}
    assert record["production_body"] == {"prediction": "ok", "confidence": 0.9, "session_token": "[REDACTED]"}
    assert record["headers"]["Authorization"] == "[REDACTED]" and record["request_id"] == "s000000001"
    assert sorted(leg["version"] for leg in legs) == ["baseline", "candidate"]
    for leg in legs:
        assert leg["prediction"] == "ok" and leg["confidence"] == 0.9 and leg["error_kind"] is None
        assert json.loads(leg["output_json"]) == record["production_body"]
    assert SECRET not in json.dumps([record, legs])



@pytest.mark.parametrize("candidate_first", [False, True])
def test_answers_that_echo_the_users_credentials_are_masked_by_value(tmp_path: Path, candidate_first: bool) -> None:
    """A live request carries real credentials; answers that repeat them under keys that do not say so (an
    echo) are masked in both legs and in the capture record, whichever answer reaches the recorder first."""
    rec = Recorder(_scenario(tmp_path), str(tmp_path / "c.jsonl.gz"), str(tmp_path / "legs.jsonl"))
    echo = json.dumps({"prediction": "ok", "confidence": 0.9, "echo": f"Bearer {SECRET} body {REQUEST.decode()}"}).encode()
    b, c = _items(0)
    b = b[:11] + (echo, len(echo)) + b[13:]
    c = c[:6] + (echo, len(echo)) + c[8:]
    for item in (c, b) if candidate_first else (b, c):
        rec.handle(item)
    counts = rec.close()
    assert counts["legs"]["records_written"] == 2 and counts["dropped"] == {}
    legs = _lines(tmp_path / "legs.jsonl")
    (record,) = _lines(tmp_path / "c.jsonl.gz")
    assert {leg["version"] for leg in legs} == {"baseline", "candidate"}
    for leg in legs:
        assert leg["prediction"] == "ok" and json.loads(leg["output_json"])["echo"].startswith("[REDACTED] body")
    assert record["production_body"]["echo"].startswith("[REDACTED] body")
    assert SECRET not in json.dumps([record, legs])


def test_a_copy_whose_request_was_never_recorded_keeps_no_excerpt(tmp_path: Path) -> None:
    """The run ended before the user's answer was recorded: the request's secret values are unknown, so the
    candidate's leg is recorded without an excerpt of its answer (an echo of a credential cannot slip through)."""
    rec = Recorder(_scenario(tmp_path), str(tmp_path / "c.jsonl.gz"), str(tmp_path / "legs.jsonl"))
    rec.handle(_items(0)[1])
    assert rec.close()["legs"]["records_written"] == 1
    (leg,) = _lines(tmp_path / "legs.jsonl")
    assert leg["version"] == "candidate" and leg["status_code"] == 200 and leg["prediction"] == "ok"
    assert leg["output_json"] is None


def test_a_candidate_that_echoes_its_test_credentials_is_masked(tmp_path: Path) -> None:
    """The copy carries the scenario's test credentials for the candidate; an answer that repeats them is masked
    as a replay's excerpts are."""
    path = tmp_path / "creds.yaml"
    path.write_text(yaml.safe_dump({
        "name": "live", "traffic": {"path": str(tmp_path / "unused.jsonl")},
        "targets": {"baseline": {"url": "http://127.0.0.1:9"},
                    "candidate": {"url": "http://127.0.0.1:9", "headers": {"Authorization": "Bearer test-token-98765"}}},
        "replay": {"allow": ["POST /v1/score"]}, "promotion_gates": {"error_rate": {"maximum": 0.01}}}))
    rec = Recorder(load_scenario(path), str(tmp_path / "c.jsonl.gz"), str(tmp_path / "legs.jsonl"))
    echo = json.dumps({"prediction": "ok", "confidence": 0.9, "seen": "Bearer test-token-98765"}).encode()
    b, c = _items(0)
    for item in (b, c[:6] + (echo, len(echo)) + c[8:]):
        rec.handle(item)
    rec.close()
    legs = {leg["version"]: leg for leg in _lines(tmp_path / "legs.jsonl")}
    assert json.loads(legs["candidate"]["output_json"])["seen"] == "[REDACTED]"
    assert "test-token-98765" not in (tmp_path / "legs.jsonl").read_text()


def test_every_leg_row_has_the_leg_schema_columns_in_order(tmp_path: Path) -> None:
    from harness.replay.leg import LEG_SCHEMA
    from harness.shadow.legs import LegBuilder

    builder = LegBuilder(_scenario(tmp_path))
    rows = [builder.leg("s1", "baseline", "/v1/score", T0, T0, T0 + 0.01, 200, None, (), ANSWER, len(ANSWER), 1 << 20),
            builder.leg("s2", "baseline", "/v1/score", T0, T0, T0 + 0.01, 200, None, (), b"<html>", 6, 1 << 20),
            builder.leg("s3", "candidate", "/v1/score", T0, T0, T0 + 0.01, None, "connect", (), b"", 0, 1 << 20)]
    for row in rows:
        assert tuple(row) == tuple(LEG_SCHEMA.names)
    assert rows[0]["prediction"] == "ok" and rows[0]["streamed"] is False
    assert rows[1]["error_kind"] == "invalid_json" and rows[1]["output_json"] == "<html>"
    assert rows[2]["error_kind"] == "connect" and rows[2]["streamed"] is None and rows[2]["prediction"] is None


@pytest.mark.integration
def test_the_recorder_process_writes_all_it_was_given_and_drops_are_counted(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path)
    capture, legs = tmp_path / "c.jsonl.gz", tmp_path / "legs.jsonl"

    async def main() -> tuple[Any, ...]:
        dropped: list[tuple[str, str]] = []
        channel = RecorderChannel(lambda item, reason: dropped.append((item[1], reason)), max_buffered_bytes=0)
        await channel.start(scenario, capture, legs)
        assert channel._proc is not None
        os.kill(channel._proc.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches it too: it keeps going
        for i in range(200):
            for item in _items(i):
                channel.put(item)
        cut = await channel.barrier()
        # over the bound (0 bytes waiting here): a 4 MiB batch fills the pipe, the batch after it is dropped
        big = b'{"x":"' + b"y" * (4 << 20) + b'"}'
        for i in (200, 201):
            channel.put(_items(i, big)[0])
            channel.send()
        counts = await channel.close()
        gone = RecorderChannel(lambda item, reason: dropped.append((item[1], reason)))
        gone._proc, gone._loop = channel._proc, asyncio.get_running_loop()
        gone.put(_items(300)[0])
        gone.send()
        return cut, counts, dropped, dict(channel.dropped), dict(gone.dropped)

    cut, counts, dropped, full, after = asyncio.run(main())
    assert cut is not None and cut["capture"] == str(capture) and cut["capture_size"] > 0 and cut["legs_size"] > 0
    assert counts is not None and counts["dropped"] == {}
    assert counts["capture"]["records_written"] == 201 and counts["legs"]["records_written"] == 401
    assert full == {CHANNEL_FULL: 1} and after == {RECORDER_GONE: 1}
    assert dropped == [("s000000202", CHANNEL_FULL), ("s000000301", RECORDER_GONE)]
    records = _lines(capture)
    assert [r["request_id"] for r in records] == [f"s{i + 1:09d}" for i in range(201)]
    assert len(_lines(legs)) == 401 and SECRET not in capture.read_bytes().decode("latin-1")


def test_a_streamed_answer_is_timed_from_its_reads(tmp_path: Path) -> None:
    """protocol openai through harness shadow: the proxy notes when each read of the body came, and the leg's
    time to first token and inter-token gap are measured from them, as a replay's are (they were null, and a
    TTFT gate could never be judged on live shadow traffic)."""
    rec = Recorder(_scenario(tmp_path, "openai", "POST /v1/chat/completions"), str(tmp_path / "c.jsonl.gz"),
                   str(tmp_path / "legs.jsonl"))
    events = [b'data: {"id": "x", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}\n\n',
              b'data: {"id": "x", "choices": [{"index": 0, "delta": {"content": "Hel"}}]}\n\n',
              b'data: {"id": "x", "choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]}\n\n',
              b"data: [DONE]\n\n"]
    body = b"".join(events)
    ends = [sum(len(e) for e in events[:i + 1]) for i in range(len(events))]
    sse = [(b"Content-Type", b"text/event-stream")]
    for version, first_ms in (("b", 120.0), ("c", 250.0)):
        arrivals = [(ends[0], T0 + 0.010), (ends[1], T0 + first_ms / 1000), (ends[3], T0 + (first_ms + 40) / 1000)]
        item = (("b", "s000000001", "/v1/chat/completions", True, "POST", "/v1/chat/completions", JSON, b"{}", T0,
                 200, sse, body, len(body), T0, T0 + 0.3, None, arrivals) if version == "b" else
                ("c", "s000000001", "/v1/chat/completions", T0, 200, sse, body, len(body), T0, T0 + 0.3, None,
                 arrivals, b"", "POST"))
        rec.handle(item)
    counts = rec.close()
    assert counts["dropped"] == {}
    legs = {leg["version"]: leg for leg in _lines(tmp_path / "legs.jsonl")}
    assert legs["baseline"]["time_to_first_token_ms"] == pytest.approx(120.0)
    assert legs["candidate"]["time_to_first_token_ms"] == pytest.approx(250.0)
    assert legs["candidate"]["inter_token_ms_mean"] == pytest.approx(40.0)
    assert legs["candidate"]["token_chunks"] == 2 and legs["candidate"]["error_kind"] is None


@pytest.mark.parametrize("coding", ["gzip", "br"])
def test_a_compressed_answer_is_read_decoded_and_its_secrets_masked(tmp_path: Path, coding: str) -> None:
    """The candidate answers `Content-Encoding: gzip` (or br at a low quality, where the text stays
    readable in the bytes): the leg reads the decoded answer (it was invalid_json on every leg, BLOCK) and the
    capture record keeps the decoded answer masked (the raw bytes went in as text, secrets readable)."""
    import brotli

    packed = gzip.compress(ANSWER) if coding == "gzip" else brotli.compress(ANSWER, quality=0)
    if coding == "br":
        assert SECRET.encode() in packed  # a light compression leaves the text in the bytes
    rec = Recorder(_scenario(tmp_path), str(tmp_path / "c.jsonl.gz"), str(tmp_path / "legs.jsonl"))
    headers = [*JSON, (b"Content-Encoding", coding.encode())]
    rid, ts = "s000000001", T0
    rec.handle(("b", rid, "/v1/score", True, "POST", "/v1/score", JSON, REQUEST, ts, 200, headers, packed,
                len(packed), ts, ts + 0.005, None, [(len(packed), ts + 0.005)]))
    rec.handle(("c", rid, "/v1/score", ts, 200, headers, b"\x1f\x8bnot really", 12, ts, ts + 0.006, None, [], b"", "POST"))
    assert rec.close()["dropped"] == {}
    legs = {leg["version"]: leg for leg in _lines(tmp_path / "legs.jsonl")}
    base = legs["baseline"]
    assert base["error_kind"] is None and base["prediction"] == "ok" and base["content_encoding"] == coding
    assert base["decoded_bytes"] == len(ANSWER) and SECRET not in base["output_json"]
    assert legs["candidate"]["error_kind"] == "bad_encoding" and coding in legs["candidate"]["error_detail"]
    (record,) = _lines(tmp_path / "c.jsonl.gz")
    assert record["production_body"] == {"prediction": "ok", "confidence": 0.9, "session_token": "[REDACTED]"}
    for path in (tmp_path / "c.jsonl.gz", tmp_path / "legs.jsonl"):
        raw = path.read_bytes()
        assert SECRET.encode() not in (gzip.decompress(raw) if path.suffix == ".gz" else raw)


def test_batched_answers_are_read_row_by_row_and_their_rows_counted(tmp_path: Path) -> None:
    """kserve_v1 with output.rows: a candidate answering 2 rows to a 3-row request is a row_count_mismatch in
    live shadow as in a replay (the legs' rows were never read: PROMOTE)."""
    scenario = _scenario(tmp_path, "kserve_v1", "POST /v1/models/*",
                         output={"rows": {"path": "$.predictions", "label": "label", "score": "probability"}})
    rec = Recorder(scenario, str(tmp_path / "c.jsonl.gz"), str(tmp_path / "legs.jsonl"))
    request = json.dumps({"instances": [[1, 2], [3, 4], [5, 6]]}).encode()
    row = {"label": "a", "probability": 0.7}
    three, two = (json.dumps({"predictions": [row] * k}).encode() for k in (3, 2))
    route = "/v1/models/m:predict"
    rec.handle(("b", "s000000001", route, True, "POST", route, JSON, request, T0, 200, JSON, three, len(three),
                T0, T0 + 0.01, None, [], ))
    rec.handle(("c", "s000000001", route, T0, 200, JSON, two, len(two), T0, T0 + 0.01, None, [], request, "POST"))
    assert rec.close()["dropped"] == {}
    legs = {leg["version"]: leg for leg in _lines(tmp_path / "legs.jsonl")}
    assert legs["baseline"]["row_count"] == 3 and legs["baseline"]["error_kind"] is None
    assert legs["baseline"]["row_labels"] == ["a", "a", "a"]
    assert legs["candidate"]["row_count"] == 2 and legs["candidate"]["error_kind"] == "row_count_mismatch"
    assert legs["candidate"]["error_detail"] == "3 rows asked for, 2 answered"
