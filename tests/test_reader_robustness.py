"""Capture readers take any line without raising anything but a HarnessError: odd values (integers past
the float range, lone surrogates, NaN, deep nesting, wrong types) are bad records with their line, or are
read. A raise of another kind would end `harness run` / `traffic inspect` with a traceback."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.capture.logger_sink import _event
from harness.errors import HarnessError
from harness.traffic.readers import iter_records
from harness.traffic.record import BadRecord, CapturedRequest

BIG = 10 ** 400


def _read(path: Path, fmt: str | None = None) -> list[CapturedRequest | BadRecord]:
    try:
        return list(iter_records(path, fmt))
    except HarnessError:
        return []


def _write(path: Path, docs: list[Any]) -> Path:
    # json writes lone surrogates as \\ud800 escapes, big integers exactly, NaN as NaN: what real logs hold
    path.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    return path


def test_integer_timestamps_and_durations_past_the_float_range(tmp_path: Path) -> None:
    trace = _write(tmp_path / "t.jsonl", [{"timestamp": BIG, "input_length": 10, "output_length": 5},
                                         {"timestamp": 5, "input_length": 10, "output_length": 5}])
    items = _read(trace, "mooncake")
    assert isinstance(items[0], BadRecord) and "timestamp" in items[0].reason and items[0].line == 1
    assert isinstance(items[1], CapturedRequest)
    har = {"log": {"entries": [{"startedDateTime": "2026-11-02T14:03:11Z", "time": BIG,
                                "request": {"method": "GET", "url": "http://m/health", "headers": []},
                                "response": {"status": 200, "headers": [], "content": {"text": "ok"}}}]}}
    (tmp_path / "c.har").write_text(json.dumps(har), encoding="utf-8")
    (req,) = _read(tmp_path / "c.har")
    assert isinstance(req, CapturedRequest) and "har_time_ms" not in req.meta


def test_a_logged_answer_with_a_lone_surrogate_is_kept(tmp_path: Path) -> None:
    log = _write(tmp_path / "log.jsonl", [{"timestamp": 1764583201.0,
                                           "request": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                                           "response": {"text": "\ud800", "n": BIG}}])
    (req,) = _read(log, "openai_log")
    assert isinstance(req, CapturedRequest) and req.response is not None
    assert json.loads(req.response.body) == {"text": "\ud800", "n": BIG}


def test_a_cloudevent_whose_data_holds_a_long_integer() -> None:
    body = json.dumps({"id": "e1", "type": "org.kubeflow.serving.inference.response",
                       "data": {"outputs": [{"data": [BIG]}]}}).encode()
    event = _event({"Content-Type": "application/cloudevents+json"}, body)
    assert json.loads(event["body"]) == {"outputs": [{"data": [BIG]}]}


ODD = st.sampled_from([None, True, -1, 0, 1.5, float("nan"), float("inf"), BIG, -BIG, "", "\ud800", "\x00", "NaN",
                       "2026-13-45T99:99:99Z", "POST", "/", "http://[::1", [], {}, [[[]]]])
VALUES = st.recursive(ODD | st.text(max_size=8) | st.integers() | st.floats(),
                      lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                      max_leaves=8)
KEYS = ["ts", "timestamp", "method", "path", "url", "body", "headers", "request", "response", "status", "input_length",
        "output_length", "hash_ids", "messages", "captureData", "eventMetadata", "custom_id", "usage", "tenant"]
RECORDS = st.dictionaries(st.sampled_from(KEYS), VALUES, max_size=6)
SAGEMAKER = st.fixed_dictionaries({"captureData": st.fixed_dictionaries({"endpointInput": st.dictionaries(
    st.sampled_from(["data", "encoding", "observedContentType", "mode"]), VALUES, max_size=4)}),
    "eventMetadata": st.dictionaries(st.sampled_from(["eventId", "inferenceTime", "customAttributes"]), VALUES,
                                     max_size=3)})


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=st.lists(RECORDS | SAGEMAKER, min_size=1, max_size=4),
       fmt=st.sampled_from([None, "mooncake", "openai_log", "sagemaker"]))
def test_no_line_makes_a_reader_raise(tmp_path: Path, docs: list[Any], fmt: str | None) -> None:
    items = _read(_write(tmp_path / "c.jsonl", docs), fmt)
    assert all(isinstance(i, (CapturedRequest, BadRecord)) for i in items)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.dictionaries(st.sampled_from(["startedDateTime", "time", "request", "response"]), VALUES,
                                        max_size=4), min_size=1, max_size=3))
def test_no_har_entry_makes_the_reader_raise(tmp_path: Path, entries: list[Any]) -> None:
    (tmp_path / "c.har").write_text(json.dumps({"log": {"entries": entries}}), encoding="utf-8")
    assert all(isinstance(i, (CapturedRequest, BadRecord)) for i in _read(tmp_path / "c.har"))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(VALUES)
def test_compact_text_is_json_dumps_text(value: Any) -> None:
    """The excerpts and capture records use one C encoder made once; its text must be json.dumps's."""
    from harness.traffic.jsonl_reader import compact_text

    assert compact_text(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False)
