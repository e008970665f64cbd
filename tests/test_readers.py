"""Capture readers: every format, its quirks, real HAR exports, fuzzing, constant memory."""
from __future__ import annotations

import gzip
import hashlib
import json
import tracemalloc
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.errors import TrafficError
from harness.traffic.goreplay_reader import PAYLOAD_SEPARATOR, iter_gor
from harness.traffic.readers import FORMATS, detect_format, iter_records
from harness.traffic.record import BadRecord, CapturedRequest, CapturedResponse
from harness.traffic.timestamps import TimestampError, parse_ts

DATA = Path(__file__).parent / "data"
HAR = DATA / "har"

# 2024-05-01T00:00:00Z: 54 years since 1970 with 13 leap days (1972..2020) = 19723 days to
# 2024-01-01, + 31 + 29 + 31 + 30 = 19844 days = 1714521600 s; noon adds 43200.
NOON_2024_05_01 = 1714564800


def drain(path: Path, fmt: str | None = None) -> list[CapturedRequest | BadRecord]:
    """All records of a capture, checking the record-model invariants on each."""
    out = list(iter_records(path, fmt))
    for rec in out:
        assert isinstance(rec, (CapturedRequest, BadRecord)), rec
        assert rec.source == str(path)
        assert isinstance(rec.line, int)
        if isinstance(rec, BadRecord):
            assert isinstance(rec.reason, str) and rec.reason
            continue
        assert isinstance(rec.ts, float)
        assert rec.path.startswith("/")
        assert rec.method == rec.method.upper() and rec.method
        assert isinstance(rec.body, bytes)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in rec.headers)
        assert not any(k.startswith(":") for k, _ in rec.headers)
        assert rec.response is None or isinstance(rec.response, CapturedResponse)
    return out


def requests_of(records: list[CapturedRequest | BadRecord]) -> list[CapturedRequest]:
    return [r for r in records if isinstance(r, CapturedRequest)]


def bad_of(records: list[CapturedRequest | BadRecord]) -> list[BadRecord]:
    return [r for r in records if isinstance(r, BadRecord)]


# ------------------------------------------------------------------------------------------
# dispatch


@pytest.mark.parametrize(
    ("name", "fmt"),
    [
        ("a.jsonl", "jsonl"), ("a.JSONL", "jsonl"), ("a.jsonl.gz", "jsonl"), ("a.ndjson", "jsonl"),
        ("a.csv", "csv"), ("a.csv.gz", "csv"), ("a.parquet", "parquet"), ("a.har", "har"),
        ("a.gor", "gor"), ("dir.v2/a.gor.gz", "gor"),
    ],
)
def test_detect_format_from_extension(name: str, fmt: str) -> None:
    assert detect_format(Path(name)) == fmt


def test_detect_format_declared_wins_and_is_checked() -> None:
    assert detect_format(Path("capture.log"), "gor") == "gor"
    assert detect_format(Path("x.csv"), "JSONL") == "jsonl"
    with pytest.raises(TrafficError, match="capture.log.*unknown capture format 'pcap'"):
        detect_format(Path("capture.log"), "pcap")
    with pytest.raises(TrafficError, match=r"capture\.json.*cannot tell the capture format"):
        detect_format(Path("capture.json"))
    assert set(FORMATS) == {"jsonl", "csv", "parquet", "har", "gor", "mooncake", "openai_log"}


def test_missing_or_unreadable_file_is_a_traffic_error(tmp_path: Path) -> None:
    with pytest.raises(TrafficError, match=r"nope\.jsonl.*not found"):
        iter_records(tmp_path / "nope.jsonl")
    folder = tmp_path / "folder.jsonl"
    folder.mkdir()
    with pytest.raises(TrafficError, match=r"folder\.jsonl.*not a regular file"):
        iter_records(folder)


# ------------------------------------------------------------------------------------------
# timestamps


def test_parse_ts_forms() -> None:
    assert parse_ts("2024-05-01T12:00:00Z") == NOON_2024_05_01
    assert parse_ts("2024-05-01T14:00:00.5+02:00") == NOON_2024_05_01 + 0.5
    assert parse_ts("2024-05-01 12:00:00.123456789+00:00") == pytest.approx(NOON_2024_05_01 + 0.123456)
    assert parse_ts(NOON_2024_05_01) == NOON_2024_05_01
    assert parse_ts(" 1714564800.75 ") == NOON_2024_05_01 + 0.75
    for bad, reason in [
        ("2024-05-01T12:00:00", "no time zone"), ("2024-05-01", "no time zone"),
        ("yesterday", "neither ISO"), (True, "boolean"), (None, "string or a number"),
        (float("nan"), "finite"), (1714564800000, "milliseconds"), ("", "empty"),
    ]:
        with pytest.raises(TimestampError, match=reason):
            parse_ts(bad)


# ------------------------------------------------------------------------------------------
# JSONL


def test_jsonl_quirks_exact_values() -> None:
    path = DATA / "jsonl" / "quirks.jsonl"
    recs = drain(path)
    by_line = {r.line: r for r in recs}
    assert sorted(by_line) == [1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 18]  # 3, 17 blank

    r1 = by_line[1]
    assert isinstance(r1, CapturedRequest)
    assert r1.ts == NOON_2024_05_01 + 0.25
    assert (r1.method, r1.path) == ("POST", "/score?v=2")
    assert r1.headers == (("Content-Type", "application/json"), ("X-Tenant-Id", "acme"))
    assert r1.body == b'{"inputs":[1,2.5,"a"]}'
    assert dict(r1.meta) == {"request_id": "r-1", "tenant": "acme"}
    assert r1.header("x-tenant-id") == "acme"

    r2 = by_line[2]
    assert isinstance(r2, CapturedRequest)
    assert r2.ts == NOON_2024_05_01 + 1.5
    assert (r2.method, r2.path) == ("GET", "/items?id=7&x=y")
    assert r2.meta["host"] == "api.example.com:8080"
    assert r2.headers == (("Accept", "*/*"), ("X-Dup", "1"), ("X-Dup", "2"))
    assert r2.body == b""

    r4 = by_line[4]
    assert isinstance(r4, CapturedRequest)
    assert (r4.ts, r4.method, r4.body) == (NOON_2024_05_01 + 2.0, "PUT", "plain text ü".encode())

    r5 = by_line[5]
    assert isinstance(r5, CapturedRequest)
    assert (r5.ts, r5.body) == (NOON_2024_05_01 + 3.0, b"\x00\x01\x02\xff")

    r16 = by_line[16]
    assert isinstance(r16, CapturedRequest)
    assert (r16.method, r16.body, dict(r16.meta)) == ("DELETE", b"", {"zone": "eu"})
    r18 = by_line[18]
    assert isinstance(r18, CapturedRequest)
    assert r18.ts == pytest.approx(NOON_2024_05_01 + 10.123456, abs=1e-6)

    reasons = {r.line: r.reason for r in bad_of(recs)}
    assert "ts has no time zone" in reasons[6]
    assert reasons[7] == "empty record"
    assert "JSON object" in reasons[8]
    assert reasons[9].startswith("invalid JSON: Expecting")
    assert reasons[10] == "missing field 'method'"
    assert reasons[11] == "missing field 'ts'"
    assert reasons[12] == "missing field 'path' (or 'url')"
    assert "headers must be" in reasons[13]
    assert "base64" in reasons[14]
    assert "invalid UTF-8" in reasons[15]


def test_jsonl_more_edge_cases(tmp_path: Path) -> None:
    path = tmp_path / "edge.jsonl"
    lines = [
        '\ufeff{"ts": 1714564800, "method": "GET", "path": "/bom"}',  # BOM on line 1
        '{"ts": 1714564800, "method": "GET", "path": "/a b"}',
        '{"ts": 1714564800, "method": "GET", "path": "relative"}',
        '{"ts": 1714564800, "method": "G T", "path": "/"}',
        '{"ts": 1714564800, "method": "GET", "path": "/", "headers": {"X": 1}}',
        '{"ts": 1714564800, "method": "GET", "path": "/", "headers": {"X": "a\\r\\nY: b"}}',
        '{"ts": 1714564800, "method": "GET", "path": "/", "body": "x", "body_b64": "eA=="}',
        '{"ts": 1714564800, "method": "GET", "path": "/", "body": [1, {"a": null}]}',
        '{"ts": 1714564800, "method": "GET", "path": "/", "headers": {":authority": "h.example", "A": "1"}}',
        "[" * 100_000,
        '{"ts": 1714564800, "method": "GET", "url": "https://h/p", "path": "/q"}\r',
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    recs = drain(path)
    assert [type(r).__name__ for r in recs] == [
        "CapturedRequest", "BadRecord", "BadRecord", "BadRecord", "BadRecord", "BadRecord",
        "BadRecord", "CapturedRequest", "CapturedRequest", "BadRecord", "CapturedRequest",
    ]
    assert isinstance(recs[0], CapturedRequest) and recs[0].path == "/bom"
    assert isinstance(recs[7], CapturedRequest) and recs[7].body == b'[1,{"a":null}]'
    r9 = recs[8]
    assert isinstance(r9, CapturedRequest)
    assert r9.headers == (("A", "1"),) and r9.meta["host"] == "h.example"
    r11 = recs[10]
    assert isinstance(r11, CapturedRequest)
    assert r11.path == "/q" and r11.meta["url"] == "https://h/p"  # path wins; url kept as meta


def test_jsonl_gz_streams_and_truncated_gz_is_a_bad_record(tmp_path: Path) -> None:
    path = DATA / "jsonl" / "sample.jsonl.gz"
    recs = drain(path)
    assert len(recs) == 50 and not bad_of(recs)
    r7 = recs[7]
    assert isinstance(r7, CapturedRequest)
    assert (r7.line, r7.ts, r7.path, r7.body, r7.meta["tenant"]) == (
        8, NOON_2024_05_01 + 7.0, "/score?i=7", b'{"i":7}', "t1",
    )

    raw = path.read_bytes()
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(raw[: len(raw) - 30])
    recs = drain(cut)
    assert recs and isinstance(recs[-1], BadRecord)
    assert "truncated or corrupt stream" in recs[-1].reason
    assert all(isinstance(r, CapturedRequest) for r in recs[:-1])

    not_gzip = tmp_path / "bogus.jsonl.gz"
    not_gzip.write_bytes(b"\x1f\x8b" + b"\x99" * 40)
    with pytest.raises(TrafficError, match="bogus.jsonl.gz.*not a valid gzip"):
        drain(not_gzip)


def test_gzip_is_recognised_by_magic_not_name(tmp_path: Path) -> None:
    path = tmp_path / "capture.jsonl"
    path.write_bytes(gzip.compress(b'{"ts": 1, "method": "get", "path": "/g"}\n'))
    (rec,) = drain(path)
    assert isinstance(rec, CapturedRequest) and rec.path == "/g"


# ------------------------------------------------------------------------------------------
# CSV


def test_csv_quirks_exact_values() -> None:
    path = DATA / "csv" / "quirks.csv"
    recs = drain(path)
    assert [(type(r).__name__, r.line) for r in recs] == [
        ("CapturedRequest", 2), ("CapturedRequest", 3), ("CapturedRequest", 5),
        ("BadRecord", 7), ("CapturedRequest", 8), ("BadRecord", 9), ("BadRecord", 10),
        ("BadRecord", 11),
    ]
    r2, r3, r5, b7, r8, b9, b10, b11 = recs
    assert isinstance(r2, CapturedRequest)
    assert (r2.ts, r2.method, r2.path) == (NOON_2024_05_01, "POST", "/score?v=1")
    assert r2.headers == (
        ("Content-Type", "application/json"), ("X-Tenant-Tier", "gold"), ("X-Geo-Region", "eu-west"),
    )
    assert r2.body == b'{"inputs": [1, 2]}'
    assert dict(r2.meta) == {"tenant": "acme"}
    assert isinstance(r3, CapturedRequest)
    assert (r3.ts, r3.path, r3.headers) == (NOON_2024_05_01 + 1.5, "/items?id=1", (("X-Tenant-Tier", "silver"),))
    assert dict(r3.meta) == {"tenant": "beta", "host": "svc.local"}
    assert isinstance(r5, CapturedRequest)
    assert r5.body == b"line one\r\nline two"  # a quoted field over two physical lines
    assert isinstance(b7, BadRecord) and "no time zone" in b7.reason
    assert isinstance(r8, CapturedRequest) and r8.body == b"\x00\x01\x02"
    assert isinstance(b9, BadRecord) and b9.reason == "expected 9 fields, got 3"
    assert isinstance(b10, BadRecord) and "headers is not a JSON object" in b10.reason
    assert isinstance(b11, BadRecord) and b11.reason == "invalid UTF-8"


def test_csv_header_problems_are_traffic_errors(tmp_path: Path) -> None:
    no_ts = tmp_path / "no_ts.csv"
    no_ts.write_text("time,method,path\n1,GET,/\n")
    with pytest.raises(TrafficError, match=r"no_ts\.csv.*no column 'ts'"):
        drain(no_ts)
    dup = tmp_path / "dup.csv"
    dup.write_text("ts,method,path,ts\n1,GET,/,2\n")
    with pytest.raises(TrafficError, match="twice"):
        drain(dup)
    bom_gz = tmp_path / "bom.csv.gz"
    bom_gz.write_bytes(gzip.compress("\ufeffts,method,url\n1714564800,get,https://x.org/\n".encode()))
    (rec,) = drain(bom_gz)
    assert isinstance(rec, CapturedRequest) and (rec.path, rec.meta["host"]) == ("/", "x.org")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert drain(empty) == []


# ------------------------------------------------------------------------------------------
# Parquet


def _write_parquet(path: Path, sql: str) -> None:
    con = duckdb.connect()
    try:
        con.execute(f"COPY ({sql}) TO '{path}' (FORMAT parquet)")
    finally:
        con.close()


def test_parquet_duckdb_map_headers_blob_body_and_batches(tmp_path: Path) -> None:
    path = tmp_path / "cap.parquet"
    _write_parquet(
        path,
        """
        SELECT TIMESTAMPTZ '2024-05-01 14:00:00+02' + to_milliseconds(i * 250) AS ts,
               CASE WHEN i % 2 = 0 THEN 'post' ELSE 'GET' END AS method,
               '/score?i=' || i::VARCHAR AS path,
               MAP(['Content-Type', 'X-Tenant-Id'], ['application/json', 't' || (i % 3)::VARCHAR]) AS headers,
               CASE WHEN i = 3 THEN NULL ELSE 'eu' END AS "header.X-Geo-Region",
               ('{"i":' || i::VARCHAR || '}')::BLOB AS body,
               i AS request_seq
        FROM range(25001) t(i)
        """,
    )
    n = 0
    first = third = last = None
    for rec in iter_records(path):
        n += 1
        assert isinstance(rec, CapturedRequest)
        if rec.line == 1:
            first = rec
        elif rec.line == 4:
            third = rec
        last = rec
    assert n == 25001
    assert first is not None and third is not None and last is not None
    assert (first.ts, first.method, first.path) == (NOON_2024_05_01, "POST", "/score?i=0")
    assert first.headers == (
        ("Content-Type", "application/json"), ("X-Tenant-Id", "t0"), ("X-Geo-Region", "eu"),
    )
    assert first.body == b'{"i":0}' and first.meta == {"request_seq": 0}
    assert third.ts == NOON_2024_05_01 + 0.75 and third.header("X-Geo-Region") is None
    assert (last.line, last.path, last.ts) == (25001, "/score?i=25000", NOON_2024_05_01 + 6250.0)


def test_parquet_pyarrow_struct_and_json_headers_and_bad_rows(tmp_path: Path) -> None:
    path = tmp_path / "arrow.parquet"
    table = pa.table(
        {
            "ts": ["2024-05-01T12:00:00Z", "2024-05-01T12:00:01", "1714564802", None],
            "method": ["GET", "GET", "POST", "GET"],
            "url": ["http://a.example/x?q=1", "/y", "/z", "/w"],
            "headers": ['{"Accept": "text/plain"}', None, "[[\"X-A\", \"1\"]]", None],
            "body_b64": [None, None, "aGk=", None],
            "tenant": ["acme", None, "beta", "x"],
        }
    )
    pq.write_table(table, path)
    recs = drain(path)
    assert [(type(r).__name__, r.line) for r in recs] == [
        ("CapturedRequest", 1), ("BadRecord", 2), ("CapturedRequest", 3), ("BadRecord", 4),
    ]
    r1, b2, r3, b4 = recs
    assert isinstance(r1, CapturedRequest)
    assert (r1.ts, r1.path, r1.headers) == (NOON_2024_05_01, "/x?q=1", (("Accept", "text/plain"),))
    assert dict(r1.meta) == {"tenant": "acme", "host": "a.example"}
    assert isinstance(b2, BadRecord) and "no time zone" in b2.reason
    assert isinstance(r3, CapturedRequest) and (r3.body, r3.headers) == (b"hi", (("X-A", "1"),))
    assert isinstance(b4, BadRecord) and b4.reason == "missing field 'ts'"

    struct_path = tmp_path / "struct.parquet"
    _write_parquet(
        struct_path,
        "SELECT 1714564800 AS ts, 'GET' AS method, '/s' AS path, "
        "{'Accept': 'x', 'X-None': NULL::VARCHAR} AS headers, 'body' AS body, "
        "DATE '2024-05-01' AS day, 1.25::DECIMAL(5, 2) AS score",
    )
    (rec,) = drain(struct_path)
    assert isinstance(rec, CapturedRequest)
    assert (rec.headers, rec.body) == ((("Accept", "x"),), b"body")
    assert dict(rec.meta) == {"day": "2024-05-01", "score": 1.25}

    naive = tmp_path / "naive.parquet"
    _write_parquet(naive, "SELECT TIMESTAMP '2024-05-01 12:00:00' AS ts, 'GET' AS method, '/n' AS path")
    (bad,) = drain(naive)
    assert isinstance(bad, BadRecord) and "no time zone" in bad.reason


def test_parquet_file_problems_are_traffic_errors(tmp_path: Path) -> None:
    not_parquet = tmp_path / "junk.parquet"
    not_parquet.write_bytes(b"PAR1 this is not parquet at all")
    with pytest.raises(TrafficError, match=r"junk\.parquet.*not a readable Parquet"):
        drain(not_parquet)
    no_method = tmp_path / "nomethod.parquet"
    _write_parquet(no_method, "SELECT 1 AS ts, '/x' AS path")
    with pytest.raises(TrafficError, match="no column 'method'"):
        drain(no_method)


# ------------------------------------------------------------------------------------------
# HAR (real exports copied from mitmproxy's test data, see tests/data/har/README.md)


def test_har_chrome_export() -> None:
    recs = drain(HAR / "har_chrome_mitmproxy_fixture.har")
    assert len(recs) == 3 and all(isinstance(r, CapturedRequest) for r in recs)
    r0, r1, r2 = requests_of(recs)
    assert [r.line for r in (r0, r1, r2)] == [1, 2, 3]  # 1-based entry number
    # 2023-03-30T00:00:54.250Z: 19358 days to 2023-01-01 (+31 +28 +29) = 19446 days.
    assert r0.ts == 19446 * 86400 + 54.25
    assert (r0.method, r0.path, r0.meta["host"]) == ("GET", "/", "mitmproxy.org")
    names = [k for k, _ in r0.headers]
    assert names[:3] == ["accept", "accept-encoding", "accept-language"]
    assert not any(n.startswith(":") for n in names) and len(names) == 17
    assert r0.response is not None and r0.response.status == 304
    assert r0.response.body.startswith(b"<!DOCTYPE html>")  # base64 content decoded
    assert "har_failed" not in r0.meta

    assert r1.meta["har_failed"] is True and r1.response is None  # status 0: kept
    assert (r1.method, r1.path, r1.meta["host"]) == ("GET", "/", "www.google.com")
    assert r1.header("User-Agent") is not None

    assert r2.path == "/images/branding/googlelogo/2x/googlelogo_light_color_272x92dp.png"
    assert r2.response is not None and r2.response.status == 200
    assert r2.response.body.startswith(b"\x89PNG\r\n\x1a\n")


def test_har_with_bom_post_body_exact() -> None:
    (rec,) = drain(HAR / "har_chrome_postdata_with_bom.har")
    assert isinstance(rec, CapturedRequest)
    assert (rec.method, rec.path) == ("POST", "/metrics")
    assert rec.meta["host"] == "signal-metrics-collector-beta.s-onetag.com"  # from :authority/URL
    assert len(rec.body) == 1310
    assert rec.body.startswith(b'{"metadata":{"pageViewId":1689428126308,"affiliateId":62299,')
    assert rec.body.endswith(b'"adElementId":"#div-gpt-ad-reqbin_com-banner-2-0","type":"impression"}]}')
    assert hashlib.sha256(rec.body).hexdigest() == (
        "94c0d23b4e9f828b4b9062885ba0b785ce53fc374aef106b01fa62ff9f15c35b"
    )
    assert rec.header("content-type") == "text/plain;charset=UTF-8"


def test_har_mitmproxy_form_post_and_microsecond_offset_ts() -> None:
    get, post = requests_of(drain(HAR / "har_mitmproxy_export_post_form.har"))
    # 2023-07-25T10:58:25.577252+00:00: 19358 days to 2023-01-01, + 181 (Jan..Jun) + 24 = 19563
    # days = 1690243200 s; 10:58:25 = 39505 s.
    assert post.ts == pytest.approx(1690243200 + 39505 + 0.577252, abs=1e-6)
    assert (post.method, post.path, post.body) == ("POST", "/post", b"key1=value1&key2=value2")
    assert post.header("content-type") == "application/x-www-form-urlencoded"
    assert post.response is not None and post.response.status == 200
    assert json.loads(post.response.body)["form"] == {"key1": "value1", "key2": "value2"}
    # 10:42:01.726810
    assert get.ts == pytest.approx(1690243200 + 10 * 3600 + 42 * 60 + 1.726810, abs=1e-6)
    assert (get.method, get.path, get.meta["host"]) == ("GET", "/", "example.com")


def _har(entries: object) -> str:
    return json.dumps({"log": {"version": "1.2", "creator": {"name": "t"}, "entries": entries}})


def test_har_params_without_text_and_bad_entries(tmp_path: Path) -> None:
    path = tmp_path / "made.har"
    entry = {
        "startedDateTime": "2024-05-01T12:00:00.125+00:00",
        "request": {
            "method": "POST", "url": "https://svc.example/form?a=1", "httpVersion": "HTTP/1.1",
            "headers": [{"name": "Host", "value": "svc.example:443"}, {"name": ":path", "value": "/x"}],
            "postData": {"mimeType": "application/x-www-form-urlencoded",
                         "params": [{"name": "k", "value": "v 1"}, {"name": "z", "value": "&"}]},
        },
        "response": {"status": 201, "headers": [], "content": {"text": "ok"}},
    }
    broken_response = dict(entry, response={"status": 200, "content": {"text": "@@", "encoding": "base64"}})
    path.write_text(_har([entry, {"request": {}}, "nope", dict(entry, startedDateTime="2024-05-01T12:00:00"),
                          broken_response]))
    recs = drain(path)
    r0 = recs[0]
    assert isinstance(r0, CapturedRequest)
    assert (r0.ts, r0.path, r0.body) == (NOON_2024_05_01 + 0.125, "/form?a=1", b"k=v+1&z=%26")
    assert r0.headers == (("Host", "svc.example:443"),) and r0.meta["host"] == "svc.example:443"
    assert r0.response == CapturedResponse(status=201, headers=(), body=b"ok")
    assert r0.line == 1  # entries are numbered from 1, as messages name them ("entry 1")
    assert [(type(r).__name__, r.line) for r in recs[1:4]] == [
        ("BadRecord", 2), ("BadRecord", 3), ("BadRecord", 4),
    ]
    r4 = recs[4]  # a response that cannot be decoded does not cost the request
    assert isinstance(r4, CapturedRequest) and r4.response is None and r4.line == 5
    assert "base64" in r4.meta["har_response_error"]


def test_har_file_problems_are_traffic_errors(tmp_path: Path) -> None:
    real = (HAR / "har_mitmproxy_export_post_form.har").read_bytes()
    cut = tmp_path / "cut.har"
    cut.write_bytes(real[: len(real) // 2])
    with pytest.raises(TrafficError, match=r"cut\.har.*not valid JSON \(truncated\?\)"):
        drain(cut)
    for name, text, reason in [
        ("nolog.har", '{"entries": []}', "no 'log' object"),
        ("noentries.har", '{"log": {"version": "1.2"}}', "'log.entries' is missing"),
        ("text.har", "hello", "not valid JSON"),
        ("list.har", "[]", "no 'log' object"),
    ]:
        p = tmp_path / name
        p.write_text(text)
        with pytest.raises(TrafficError, match=reason):
            drain(p)


# ------------------------------------------------------------------------------------------
# GoReplay


def test_gor_quirks_exact_values() -> None:
    recs = drain(DATA / "gor" / "quirks.gor")
    assert [(type(r).__name__, r.line) for r in recs] == [
        ("CapturedRequest", 1), ("CapturedRequest", 3), ("CapturedRequest", 4),
        ("BadRecord", 6), ("BadRecord", 7), ("CapturedRequest", 9),
    ]
    a1, b2, c3, bad6, bad7, e5 = recs
    assert isinstance(a1, CapturedRequest)
    assert (a1.ts, a1.method, a1.path) == (NOON_2024_05_01 + 0.5, "POST", "/score?v=2")
    assert a1.headers == (
        ("Host", "model.local"), ("Content-Type", "application/json"), ("Content-Length", "14"),
    )
    assert a1.body == b'{"inputs":[1]}'
    assert a1.response == CapturedResponse(
        status=200, headers=(("Content-Type", "application/json"), ("Content-Length", "11")),
        body=b'{"score":1}',
    )
    assert a1.meta["request_id"] == "a1" and a1.meta["host"] == "model.local"
    assert a1.meta["response_latency_ms"] == 2.5
    assert a1.meta["replayed_response_status"] == 503 and a1.meta["replayed_latency_ms"] == 1.8

    assert isinstance(b2, CapturedRequest)  # LF-only, earlier timestamp, yielded in file order
    assert (b2.ts, b2.method, b2.path, b2.body) == (NOON_2024_05_01 - 1.0, "GET", "/health?deep=1", b"")
    assert b2.headers == (("Host", "model.local"), ("User-Agent", "probe")) and b2.response is None

    assert isinstance(c3, CapturedRequest)  # chunked, de-chunked, LF-only response attached
    assert (c3.ts, c3.body, c3.headers) == (NOON_2024_05_01 + 1.0, b"hello, world", (("Host", "model.local"),))
    assert c3.response == CapturedResponse(status=201, headers=(("Content-Length", "2"),), body=b"ok")

    assert isinstance(bad6, BadRecord) and "malformed GoReplay meta line" in bad6.reason
    assert isinstance(bad7, BadRecord) and "malformed request line" in bad7.reason

    assert isinstance(e5, CapturedRequest)  # last payload, no trailing separator
    assert (e5.method, e5.path, e5.meta["host"], e5.ts) == ("DELETE", "/items/9", "other.host", NOON_2024_05_01 + 3.0)


def _gor(tmp_path: Path, payloads: list[bytes], name: str = "t.gor", sep: bytes = PAYLOAD_SEPARATOR) -> Path:
    path = tmp_path / name
    path.write_bytes(b"".join(p + sep for p in payloads))
    return path


def _req(gid: str, path: str = "/", ts_ns: int = NOON_2024_05_01 * 10**9) -> bytes:
    return f"1 {gid} {ts_ns}\nGET {path} HTTP/1.1\r\nHost: h\r\n\r\n".encode()


def _resp(gid: str, status: int = 200, kind: int = 2) -> bytes:
    return f"{kind} {gid} {NOON_2024_05_01 * 10**9} 1000000\nHTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode()


def test_gor_pending_window_is_bounded_and_orphans_are_reported(tmp_path: Path) -> None:
    path = _gor(tmp_path, [_req("a"), _req("b"), _req("c"), _req("d"), _resp("a"), _resp("c", 404)])
    # a window of 3 payloads: "a" (payload 1) is yielded without its response when payload 4 is
    # read; its response (payload 5) is then an orphan. "c" (3) gets its response at payload 6.
    recs = list(iter_gor(path, pending_limit=3))
    assert [(type(r).__name__, r.line) for r in recs] == [
        ("CapturedRequest", 1), ("CapturedRequest", 2), ("CapturedRequest", 3),
        ("CapturedRequest", 4), ("BadRecord", 5),
    ]
    assert isinstance(recs[0], CapturedRequest) and recs[0].response is None
    assert isinstance(recs[2], CapturedRequest) and recs[2].response is not None
    assert recs[2].response.status == 404
    assert "request is not within 3 payloads" in recs[4].reason
    # default window: everything matched
    recs = drain(path)
    assert [r.response.status if isinstance(r, CapturedRequest) and r.response else None for r in recs] == [
        200, None, 404, None,
    ]


def test_gor_response_before_request_crlf_separators_and_gzip(tmp_path: Path) -> None:
    payloads = [_resp("z", 201), _resp("z", 502, kind=3), _req("z", "/late")]
    path = _gor(tmp_path, payloads, sep="\r\n🐵🙈🙉\r\n".encode())
    (rec,) = drain(path)
    assert isinstance(rec, CapturedRequest) and rec.line == 3 and rec.path == "/late"
    assert rec.response is not None and rec.response.status == 201
    assert rec.meta["replayed_response_status"] == 502
    assert rec.headers == (("Host", "h"),)

    gz = tmp_path / "t.gor.gz"
    gz.write_bytes(gzip.compress((DATA / "gor" / "quirks.gor").read_bytes()))
    assert [r.line for r in drain(gz)] == [1, 3, 4, 6, 7, 9]
    empty = tmp_path / "empty.gor"
    empty.write_bytes(b"")
    assert drain(empty) == []


def test_gor_bodies_content_length_and_bad_chunks(tmp_path: Path) -> None:
    ts = NOON_2024_05_01 * 10**9
    payloads = [
        f"1 a {ts}\nPOST /cl HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcEXTRA".encode(),
        f"1 b {ts}\nPOST /short HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc".encode(),
        f"1 c {ts}\nPOST /chunk HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n".encode(),
        f"1 d {ts}\nPOST /nocl HTTP/1.0\nX: y\n\nraw body".encode(),
        f"1 e {ts} 5 6\nGET / HTTP/1.1\r\n\r\n".encode(),
        f"4 f {ts}\nGET / HTTP/1.1\r\n\r\n".encode(),
        f"1 g {ts}\nGET / HTTP/1.1\r\nno colon here\r\n\r\n".encode(),
        f"2 h {ts}\nnot a status line\r\n\r\n".encode(),
    ]
    recs = drain(_gor(tmp_path, payloads))
    cl, short, chunk, nocl, five, four, nocolon, badresp = recs
    assert isinstance(cl, CapturedRequest) and cl.body == b"abc"
    assert isinstance(short, CapturedRequest) and short.body == b"abc" and short.meta["body_truncated"] is True
    assert isinstance(chunk, BadRecord) and "chunk" in chunk.reason
    assert isinstance(nocl, CapturedRequest) and nocl.body == b"raw body" and nocl.meta["http_version"] == "HTTP/1.0"
    assert isinstance(five, BadRecord) and isinstance(four, BadRecord)
    assert isinstance(nocolon, BadRecord) and "malformed header line" in nocolon.reason
    assert isinstance(badresp, BadRecord) and "malformed status line" in badresp.reason


# ------------------------------------------------------------------------------------------
# fuzzing: bad input never raises anything but TrafficError


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


@pytest.fixture(scope="module")
def valid_samples(fuzz_dir: Path) -> dict[str, list[bytes]]:
    pq_path = fuzz_dir / "sample.parquet"
    _write_parquet(
        pq_path,
        "SELECT 1714564800 + i AS ts, 'GET' AS method, '/p?i=' || i::VARCHAR AS path, "
        "MAP(['A'], ['b']) AS headers, 'body' AS body, 'acme' AS tenant FROM range(20) t(i)",
    )
    return {
        "jsonl": [(DATA / "jsonl" / "quirks.jsonl").read_bytes(), (DATA / "jsonl" / "sample.jsonl.gz").read_bytes()],
        "csv": [(DATA / "csv" / "quirks.csv").read_bytes()],
        "parquet": [pq_path.read_bytes()],
        "har": [(HAR / "har_mitmproxy_export_post_form.har").read_bytes(),
                (HAR / "har_chrome_postdata_with_bom.har").read_bytes()],
        "gor": [(DATA / "gor" / "quirks.gor").read_bytes()],
        "mooncake": [b'{"timestamp": 0, "input_length": 700, "output_length": 5, "hash_ids": [1, 2]}\n'
                     b'{"timestamp": 20.5, "input_length": 12, "output_length": 3}\n'
                     b'{"timestamp": 40, "text_input": "hi", "messages": [{"role": "user", "content": "x"}]}\n'],
        "openai_log": [b'{"timestamp": 1, "request": {"messages": [{"role": "user", "content": "q"}]}, '
                       b'"response": {"usage": {"prompt_tokens": 3, "completion_tokens": 4}}}\n'
                       b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "ts": 2, '
                       b'"body": {"model": "m"}, "response": {"created": 3, "usage": {"prompt_tokens": 9}}}\n'],
    }


def _survives(path: Path, fmt: str) -> None:
    try:
        drain(path, fmt)
    except TrafficError:
        pass


FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture],
)


@pytest.mark.integration  # 150 examples x 5 formats: seconds, not a unit test's budget
@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.binary(max_size=2000))
def test_fuzz_arbitrary_bytes(fuzz_dir: Path, fmt: str, data: bytes) -> None:
    path = fuzz_dir / f"bytes.{fmt}"
    path.write_bytes(data)
    _survives(path, fmt)


_LINE = st.one_of(
    st.text(max_size=80),
    st.sampled_from([
        "{}", "[]", "null", '{"ts": 1, "method": "GET", "path": "/"}', "ts,method,path",
        "1,GET,/", '"unterminated', "🐵🙈🙉", "1 id 1714564800000000000", "GET / HTTP/1.1",
        "Transfer-Encoding: chunked", "Content-Length: 99999", "", '{"log": {"entries": [{}]}}',
        '{"ts": "2024-01-01T00:00:00", "method": "x y", "path": "//"}',
    ]),
)


@pytest.mark.integration  # 150 examples x 5 formats: seconds, not a unit test's budget
@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(lines=st.lists(_LINE, max_size=30), newline=st.sampled_from(["\n", "\r\n"]))
def test_fuzz_text_lines(fuzz_dir: Path, fmt: str, lines: list[str], newline: str) -> None:
    path = fuzz_dir / f"lines.{fmt}"
    path.write_bytes(newline.join(lines).encode("utf-8", "surrogatepass"))
    _survives(path, fmt)


@pytest.mark.integration  # 150 examples x 5 formats: seconds, not a unit test's budget
@pytest.mark.parametrize("fmt", FORMATS)
@FUZZ
@given(data=st.data())
def test_fuzz_mutated_valid_files(
    fuzz_dir: Path, valid_samples: dict[str, list[bytes]], fmt: str, data: st.DataObject
) -> None:
    blob = bytearray(data.draw(st.sampled_from(valid_samples[fmt])))
    if data.draw(st.booleans()):
        blob = blob[: data.draw(st.integers(0, len(blob)))]
    flips = data.draw(st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=8))
    for pos, xor in flips:
        if blob:
            blob[pos % len(blob)] ^= xor
    path = fuzz_dir / f"mutated.{fmt}"
    path.write_bytes(bytes(blob))
    _survives(path, fmt)


# ------------------------------------------------------------------------------------------
# streaming: memory does not grow with the file


@pytest.mark.integration
def test_jsonl_reading_is_constant_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    body = "x" * 300
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(200_000):
            fh.write(
                f'{{"ts": {NOON_2024_05_01 + i * 0.01:.2f}, "method": "POST", "path": "/score?i={i}", '
                f'"headers": {{"Content-Type": "text/plain", "X-Tenant-Id": "t{i % 7}"}}, '
                f'"body": "{body}", "request_id": "r{i}"}}\n'
            )
    assert path.stat().st_size > 60_000_000  # the file is far larger than the memory bound
    tracemalloc.start()
    try:
        count = 0
        for rec in iter_records(path):
            assert isinstance(rec, CapturedRequest)
            count += 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 200_000
    assert peak < 20 * 1024 * 1024, f"peak {peak / 1e6:.1f} MB"


def test_a_number_beyond_a_double_is_a_bad_record_not_a_null(tmp_path: Path) -> None:
    """1e400 in a JSON body was read as infinity and replayed (and converted) as null: a request the capture
    never had. It is a bad record that names the number; ordinary numbers stay as they were."""
    from harness.traffic.jsonl_reader import iter_jsonl

    p = tmp_path / "n.jsonl"
    p.write_text('{"ts": 1700000000, "method": "POST", "path": "/s", "body": {"amount": 1e400}}\n'
                 '{"ts": 1700000001, "method": "POST", "path": "/s", "body": {"amount": 1e300, "id": 12345678901234567890}}\n')
    bad, good = list(iter_jsonl(p))
    assert bad.line == 1 and "the number 1e400 is beyond a double" in bad.reason
    assert json.loads(good.body) == {"amount": 1e300, "id": 12345678901234567890}
