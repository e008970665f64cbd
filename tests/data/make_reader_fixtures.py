"""Writes the small capture fixtures of tests/test_readers.py (run from the repository root).

The files are committed; this script documents their bytes (CRLF vs LF, emoji separators,
gzip) and regenerates them: ``python tests/data/make_reader_fixtures.py``.
The HAR files in tests/data/har/ are real exports, copied as they are (see their README).
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

DATA = Path(__file__).resolve().parent

JSONL_LINES: list[bytes] = [
    # 1: ISO with offset and millis, lower-case method, query string, JSON body, meta fields
    json.dumps({"ts": "2024-05-01T12:00:00.250+00:00", "method": "post", "path": "/score?v=2",
                "headers": {"Content-Type": "application/json", "X-Tenant-Id": "acme"},
                "body": {"inputs": [1, 2.5, "a"]}, "request_id": "r-1", "tenant": "acme"}).encode(),
    # 2: epoch float, full URL, headers as [name, value] pairs with a repeated name
    json.dumps({"ts": 1714564801.5, "method": "GET",
                "url": "http://api.example.com:8080/items?id=7&x=y",
                "headers": [["Accept", "*/*"], ["X-Dup", "1"], ["X-Dup", "2"]]}).encode(),
    # 3: blank line (skipped)
    b"",
    # 4: numeric string ts, string body kept as its UTF-8 bytes
    json.dumps({"ts": "1714564802", "method": "PUT", "path": "/raw",
                "body": "plain text \u00fc"}, ensure_ascii=False).encode(),
    # 5: +02:00 offset, body_b64
    json.dumps({"ts": "2024-05-01T14:00:03+02:00", "method": "POST", "path": "/bin",
                "body_b64": "AAEC/w=="}).encode(),
    # 6: naive ISO time -> bad
    json.dumps({"ts": "2024-05-01T12:00:04", "method": "GET", "path": "/naive"}).encode(),
    # 7: empty object -> bad
    b"{}",
    # 8: not an object -> bad
    b"[1, 2]",
    # 9: invalid JSON -> bad
    b'{"ts": 1714564805, "method": "GET"',
    # 10, 11, 12: a required field missing -> bad
    json.dumps({"ts": 1714564805, "path": "/x"}).encode(),
    json.dumps({"method": "GET", "path": "/x"}).encode(),
    json.dumps({"ts": 1714564805, "method": "GET"}).encode(),
    # 13: headers neither object nor pairs -> bad
    json.dumps({"ts": 1714564806, "method": "GET", "path": "/h", "headers": "Accept: x"}).encode(),
    # 14: invalid base64 -> bad
    json.dumps({"ts": 1714564807, "method": "POST", "path": "/b", "body_b64": "not base64!!"}).encode(),
    # 15: invalid UTF-8 -> bad
    b'{"ts": 1714564808, "method": "GET", "path": "/\xff"}',
    # 16: null body, extra field to meta
    json.dumps({"ts": 1714564809, "method": "DELETE", "path": "/n", "body": None, "zone": "eu"}).encode(),
    # 17: whitespace-only line (skipped)
    b"   \t",
    # 18: "Z" and microseconds
    json.dumps({"ts": "2024-05-01T12:00:10.123456Z", "method": "GET", "path": "/z"}).encode(),
]

GZ_RECORDS = [
    {"ts": 1714564800 + i, "method": "POST", "path": f"/score?i={i}",
     "headers": {"Content-Type": "application/json"}, "body": {"i": i}, "tenant": f"t{i % 2}"}
    for i in range(50)
]

CSV_BYTES = (
    b"ts,method,path,headers,header.X-Tenant-Tier,header.X-Geo-Region,body,body_b64,tenant\r\n"
    b'2024-05-01T12:00:00Z,post,/score?v=1,"{""Content-Type"": ""application/json""}",gold,eu-west,"{""inputs"": [1, 2]}",,acme\r\n'
    b"1714564801.5,GET,http://svc.local/items?id=1,,silver,,,,beta\r\n"
    b"\r\n"
    b'1714564802,POST,/multi,,,,"line one\r\nline two",,gamma\r\n'
    b"2024-05-01T12:00:03,GET,/naive,,,,,,x\r\n"
    b"1714564804,POST,/b64,,,,,AAEC,delta\r\n"
    b"1714564805,GET,/short\r\n"
    b"1714564806,GET,/badheaders,not json,,,,,x\r\n"
    b"1714564807,GET,/utf8,,,,,,caf\xe9\r\n"
)

SEP = "\n🐵🙈🙉\n".encode()
GOR_PAYLOADS: list[bytes] = [
    # 1: request a1, 3-field meta, CRLF, Content-Length body
    b"1 a1 1714564800500000000\n"
    b"POST /score?v=2 HTTP/1.1\r\nHost: model.local\r\nContent-Type: application/json\r\n"
    b"Content-Length: 14\r\n\r\n" b'{"inputs":[1]}',
    # 2: original response of a1, 4-field meta (latency 2.5 ms)
    b"2 a1 1714564800500000000 2500000\n"
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n"
    b'{"score":1}',
    # 3: request b2, 4-field meta, EARLIER timestamp (out of order), LF-only line endings
    b"1 b2 1714564799000000000 0\n"
    b"GET /health?deep=1 HTTP/1.1\nHost: model.local\nUser-Agent: probe\n\n",
    # 4: request c3 with a chunked body (chunk extension on the second chunk)
    b"1 c3 1714564801000000000\n"
    b"POST /stream HTTP/1.1\r\nHost: model.local\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n7;ext=1\r\n, world\r\n0\r\n\r\n",
    # 5: replayed response of a1
    b"3 a1 1714564800500000000 1800000\n"
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n",
    # 6: malformed meta line -> bad
    b"x y z\nGET / HTTP/1.1\r\n\r\n",
    # 7: malformed request line -> bad (its later responses would be dropped quietly)
    b"1 d4 1714564802000000000\nNOT A REQUEST LINE\r\n\r\n",
    # 8: original response of c3, LF-only
    b"2 c3 1714564801000000000 900000\nHTTP/1.1 201 Created\nContent-Length: 2\n\nok",
    # 9: last payload, no trailing separator; absolute-form target
    b"1 e5 1714564803000000000\n"
    b"DELETE http://other.host/items/9 HTTP/1.1\r\nX-Req: 1\r\n\r\n",
]


def main() -> None:
    (DATA / "jsonl").mkdir(exist_ok=True)
    (DATA / "csv").mkdir(exist_ok=True)
    (DATA / "gor").mkdir(exist_ok=True)
    (DATA / "jsonl" / "quirks.jsonl").write_bytes(b"\n".join(JSONL_LINES) + b"\n")
    with open(DATA / "jsonl" / "sample.jsonl.gz", "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
            for rec in GZ_RECORDS:
                gz.write(json.dumps(rec).encode() + b"\n")
    (DATA / "csv" / "quirks.csv").write_bytes(CSV_BYTES)
    gor = b"".join(p + SEP for p in GOR_PAYLOADS[:-1]) + GOR_PAYLOADS[-1]
    (DATA / "gor" / "quirks.gor").write_bytes(gor)


if __name__ == "__main__":
    main()
