from __future__ import annotations

import pytest

import base64
import json

from hypothesis import given, strategies as st

from harness.jsonpath import find_all, find_first, set_all, MISSING
from harness.scenario import RedactConfig, SegmentSpec
from harness.traffic.record import CapturedRequest
from harness.traffic.redaction import REDACTED, Redactor
from harness.traffic.segments import OTHER_VALUE, SegmentEvaluator, bucket_label, cross_label, route_template


def req(path: str = "/v1/score", headers: tuple = (), body: object = None) -> CapturedRequest:
    raw = b"" if body is None else json.dumps(body).encode()
    return CapturedRequest(source="t", line=1, ts=0.0, method="POST", path=path, headers=headers, body=raw)


def test_route_templates() -> None:
    assert route_template("/v1/accounts/123/score?x=1") == "/v1/accounts/{id}/score"
    assert route_template("/users/3fa85f64-5717-4562-b3fc-2c963f66afa6/orders/9") == "/users/{id}/orders/{id}"
    assert route_template("/v1/models/fraud-detector") == "/v1/models/fraud-detector"
    assert route_template("/blobs/a1b2c3d4e5f6a7b8c9") == "/blobs/{id}"
    assert route_template("/") == "/"


def test_buckets() -> None:
    assert [bucket_label(x, (1, 8, 32)) for x in (0, 1, 7, 8, 31, 32, 500)] == \
        ["<1", "1-7", "1-7", "8-31", "8-31", "32+", "32+"]
    assert bucket_label(0.5, (0.25, 1.5)) == "[0.25, 1.5)"


def test_segment_kinds_and_cross() -> None:
    ev = SegmentEvaluator([
        SegmentSpec("route", "path_template"),
        SegmentSpec("tenant", "header", "X-Tenant"),
        SegmentSpec("client", "query", "client"),
        SegmentSpec("model", "json_path", "$.model"),
        SegmentSpec("size", "json_array_length", "$.inputs[0].data", buckets=(1, 8, 32)),
        SegmentSpec("bytes", "body_bytes", None, buckets=(100, 1000)),
        SegmentSpec("features", "present", ("$.inputs[0].data", "$.user.country")),
        SegmentSpec("tenant_x_size", "cross", ("tenant", "size")),
    ])
    v = ev.values(req("/v1/accounts/7/score?client=web", (("x-tenant", "pro"),),
                      {"model": "m1", "inputs": [{"data": list(range(10))}], "user": {"country": None}}))
    assert v == {"route": "/v1/accounts/{id}/score", "tenant": "pro", "client": "web", "model": "m1", "size": "8-31",
                 "bytes": "<100", "features": "missing country", "tenant_x_size": "pro & 8-31"}
    none = ev.values(req("/x", (), None))
    assert none["tenant"] == "(none)" and none["size"] == "(none)" and none["features"] == "none"


def test_cardinality_cap_groups_the_rest_as_other() -> None:
    ev = SegmentEvaluator([SegmentSpec("tenant", "header", "X-T", max_values=3)])
    got = [ev.values(req(headers=(("X-T", f"t{i}"),)))["tenant"] for i in range(6)]
    assert got == ["t0", "t1", "t2", OTHER_VALUE, OTHER_VALUE, OTHER_VALUE]
    assert ev.values(req(headers=(("X-T", "t1"),)))["tenant"] == "t1"


def test_captured_values_never_merge_with_harness_own_labels() -> None:
    """A tenant called "(none)" or "(other)" is not the requests without a tenant, nor the overflow of the cap;
    "other" is an ordinary value. Every kind of literal value, compiled and reference path alike."""
    specs = [SegmentSpec("tenant", "header", "X-T", max_values=4), SegmentSpec("client", "query", "c"),
             SegmentSpec("model", "json_path", "$.m")]
    for compiled in (True, False):  # the straight-line values() and the loop it stands for
        ev = SegmentEvaluator(specs)
        values = ev.values if compiled else (lambda r, ev=ev: SegmentEvaluator.values(ev, r))
        missing = values(req("/s", (), {}))
        assert missing["tenant"] == missing["client"] == missing["model"] == "(none)"
        got = [values(req(f"/s?c={v}", (("X-T", v),), {"m": v})) for v in ("(none)", "(other)", "other", "t3", "t4")]
        assert [g["tenant"] for g in got] == ['"(none)"', '"(other)"', "other", OTHER_VALUE, OTHER_VALUE]
        assert [g["client"] for g in got] == [g["model"] for g in got] == ['"(none)"', '"(other)"', "other", "t3", "t4"]
    assert OTHER_VALUE == "(other)"


def test_cross_labels_of_different_combinations_never_collide() -> None:
    """A part holding " & " is quoted: ("a & b", "c") and ("a", "b & c") are two segments, not one. The same in
    the straight-line values() and the loop."""
    specs = [SegmentSpec("tenant", "header", "X-T"), SegmentSpec("geo", "header", "X-G"),
             SegmentSpec("tenant_x_geo", "cross", ("tenant", "geo"))]
    for compiled in (True, False):
        ev = SegmentEvaluator(specs)
        values = ev.values if compiled else (lambda r, ev=ev: SegmentEvaluator.values(ev, r))
        got = [values(req(headers=(("X-T", t), ("X-G", g))))["tenant_x_geo"]
               for t, g in (("a & b", "c"), ("a", "b & c"), ("pro", "eu"), ('"x', "y"))]
        assert got == ['"a & b" & c', 'a & "b & c"', "pro & eu", '"\\"x" & y']


def test_cross_label_reads_back_into_one_combination() -> None:
    """Every pair of parts up to 3 characters of "a", " ", "&", '"' (a brute force: 7,225 labels) gives a label of
    its own."""
    import itertools

    words = [""] + ["".join(w) for n in range(1, 4) for w in itertools.product('a &"', repeat=n)]
    labels: dict[str, tuple[str, str]] = {}
    for combo in itertools.product(words, repeat=2):
        assert labels.setdefault(cross_label(combo), combo) == combo, (combo, labels[cross_label(combo)])
    assert cross_label(("a &", "b")) != cross_label(("a", "& b"))


def test_redaction_of_headers_query_and_body() -> None:
    r = Redactor(RedactConfig(headers=("X-Customer-Email",), query=("email",), json_paths=("$.card.number",)))
    out = r.request(req("/score?api_key=k1&email=a@b.c&x=1",
                        (("Authorization", "Bearer tok"), ("COOKIE", "s=1"), ("x-api-key", "k2"),
                         ("X-Customer-Email", "a@b.c"), ("X-Tenant", "pro")),
                        {"card": {"number": "4111"}, "password": "pw", "nested": [{"access_token": "t"}], "max_tokens": 5}))
    assert dict(out.headers) == {"Authorization": REDACTED, "COOKIE": REDACTED, "x-api-key": REDACTED,
                                 "X-Customer-Email": REDACTED, "X-Tenant": "pro"}
    assert out.path == "/score?api_key=[REDACTED]&email=[REDACTED]&x=1"
    assert "k1" not in out.path and "a@b.c" not in out.path and "x=1" in out.path
    body = json.loads(out.body)
    assert body == {"card": {"number": REDACTED}, "password": REDACTED, "nested": [{"access_token": REDACTED}],
                    "max_tokens": 5}



def test_credentials_under_the_names_common_apis_use_are_masked() -> None:
    """Cloud, gateway and token names (camelCase too), in headers, query parameters and JSON keys; names
    that only look alike are left as they are."""
    secret_headers = ("X-Goog-Api-Key", "X-Vault-Token", "X-Api-Token", "X-Access-Token", "PRIVATE-TOKEN",
                      "Ocp-Apim-Subscription-Key", "X-Functions-Key", "X-Amz-Security-Token", "Set-Cookie")
    plain_headers = ("X-Tenant", "Content-Type", "User-Agent", "Sec-WebSocket-Key", "X-Max-Tokens")
    out = Redactor().headers(tuple((h, "hunter2") for h in secret_headers + plain_headers))
    assert [h for h, v in out if v == REDACTED] == list(secret_headers)
    query = ["key", "X-Amz-Credential", "X-Amz-Signature", "sig", "pwd", "jwt", "access_token"]
    path = Redactor().path("/s?" + "&".join(f"{q}=hunter2" for q in query) + "&q=cats&max_tokens=5")
    assert "hunter2" not in path and path.endswith("&q=cats&max_tokens=5"), path
    keys = ["authToken", "sessionToken", "idToken", "bearerToken", "Authorization", "private_key", "privateKey",
            "secretKey", "accessKey", "credentials", "cookie", "password"]
    plain = {"max_tokens": 5, "maxTokens": 6, "prompt_tokens": 7, "author": "a", "key": "k", "keyword": "w",
             "design": "d", "sig": "s"}
    body = json.loads(Redactor().body(json.dumps({**{k: "hunter2" for k in keys}, **plain}).encode()))
    assert body == {**{k: REDACTED for k in keys}, **plain}


def test_an_answer_that_repeats_the_requests_secrets_is_masked_by_value() -> None:
    """An echo server's answer: the request's credentials under keys that do not say so, inside strings and as a
    number; the record's production_body holds none of them and is still JSON."""
    from harness.capture.exchange import Exchange, ExchangeRecords

    headers = (("Authorization", "Bearer sk-CAPSECRET"), ("Cookie", "s=CAPCOOKIE"), ("X-Tenant", "gold"))
    path = "/v1/score?api_key=CAPQKEY&x=1"
    body = json.dumps({"x": 0.3, "api_key": "CAPJSONKEY", "password": 987654}).encode()
    echo = json.dumps({"headers": dict(headers), "seen": {"path": path, "body": body.decode(), "number": 987654},
                       "tenant": "gold"}).encode()
    text = b"you sent " + echo
    for answer, ctype in ((echo, "application/json"), (text, "text/plain")):
        (rec,) = ExchangeRecords()(Exchange(1.0, "POST", path, headers, body, 200, 5.0,
                                            (("Content-Type", ctype),), answer, len(answer)))
        stored = json.dumps(rec)
        for secret in ("sk-CAPSECRET", "CAPCOOKIE", "CAPQKEY", "CAPJSONKEY", "987654"):
            assert secret not in stored, (secret, stored)
        assert "gold" in json.dumps(rec["production_body"])
    (rec,) = ExchangeRecords()(Exchange(1.0, "POST", path, headers, body, 200, 5.0,
                                        (("Content-Type", "application/json"),), echo, len(echo)))
    assert rec["production_body"]["seen"]["number"] == REDACTED and rec["production_body"]["tenant"] == "gold"


def test_secret_values_are_those_an_answer_could_repeat() -> None:
    """A scheme's token, a cookie's token-like values (not its preferences: "dark" must not mask "the dark side"),
    a query credential as sent and %-escaped, a JSON credential; longest first."""
    values = Redactor().secret_values((("Authorization", "Bearer sk-abc123"),
                                       ("Cookie", "theme=dark; consent=true; sid=a8f3k2j9d8s7x6")),
                                      "/x?sig=abc%2Bdef%3D&q=cats", b'{"password": "hunter22", "q": "cats"}')
    assert {"sk-abc123", "a8f3k2j9d8s7x6", "abc+def=", "abc%2Bdef%3D", "hunter22"} <= set(values)
    assert not {"dark", "true", "cats"} & set(values)
    assert [len(v) for v in values] == sorted((len(v) for v in values), reverse=True)


def test_a_basic_credential_is_masked_as_a_server_decodes_it() -> None:
    """A server that echoes who called it decodes Basic's token: user:password and the password are masked too
    (the user name alone is not a secret)."""
    token = base64.b64encode(b"svc-reader:pw-9f8e7d6c").decode()
    values = Redactor().secret_values((("Authorization", f"Basic {token}"),), "/x", b"")
    assert {token, "svc-reader:pw-9f8e7d6c", "pw-9f8e7d6c"} <= set(values) and "svc-reader" not in values
    assert Redactor().secret_values((("Authorization", "Basic not*base64"),), "/x", b"") == ("Basic not*base64",
                                                                                            "not*base64")


def test_test_credentials_are_masked_longest_first_whatever_order_they_come_in() -> None:
    """A credential inside a longer one, masked first, would leave the longer one's rest in the excerpt; values
    under MIN_SECRET_CHARS are not masked (they would mask ordinary words)."""
    assert Redactor().text("key xx-abcd-yy, abc", ("abcd", "xx-abcd-yy", "abc")) == f"key {REDACTED}, abc"


def test_a_captured_production_answer_is_masked_when_read() -> None:
    """A capture written elsewhere (or by an older harness) may hold the answer unmasked: `traffic convert` masks
    it by keys and by the request's secret values, as the capture proxy does, before it writes it back (a JSON
    text in a string too; an integer beyond 64 bits stays exact)."""
    r = req("/v1/score?api_key=CAPQKEY", (("Authorization", "Bearer sk-CAPSECRET"),), {"x": 1})
    answer = {"echo": "Bearer sk-CAPSECRET /v1/score?api_key=CAPQKEY", "Authorization": "zzz-secret", "p": "ok"}
    from dataclasses import replace as _replace
    out = Redactor().request_and_answer(_replace(r, meta={"production_body": {**answer, "id": 2 ** 70}}))
    assert out.meta["production_body"] == {"echo": "[REDACTED] /v1/score?api_key=[REDACTED]",
                                           "Authorization": REDACTED, "p": "ok", "id": 2 ** 70}
    assert answer["Authorization"] == "zzz-secret"  # the record read is left as it was
    text = Redactor().request_and_answer(_replace(r, meta={"production_body": json.dumps({"access_token": "tok-abcdef"})}))
    assert "tok-abcdef" not in text.meta["production_body"]


@pytest.mark.parametrize("raw", [
    rb'{"p\u0061ssword": "hunter2", "x": 1}',  # a JSON escape spells the key in other bytes
    rb'{"API_KEY": "hunter2"}', rb'[{"Session_Id": "hunter2"}]',
    b"p%61ssword=hunter2&x=1",  # so does a form's %-escape
    b"user=a&Client_Secret=hunter2",
])
def test_secret_keys_are_masked_however_they_are_spelled(raw: bytes) -> None:
    out = Redactor().body(raw)
    assert b"hunter2" not in out and REDACTED.encode() in out.replace(b"%5B", b"[").replace(b"%5D", b"]")


@pytest.mark.parametrize("pad", [0, 400, 480, 520, 2000])  # short bodies and long ones are scanned differently
def test_secret_keys_are_found_in_short_and_long_bodies(pad: int) -> None:
    raw = json.dumps({"text": "x" * pad, "Access_Token": "hunter2"}).encode()
    assert b"hunter2" not in Redactor().body(raw)
    plain = json.dumps({"text": "x" * pad, "prediction": "ok"}).encode()
    assert Redactor().body(plain) is plain


_MULTIPART = (b"--XyZ\r\nContent-Disposition: form-data; name=\"user\"\r\n\r\nalice\r\n"
              b"--XyZ\r\nContent-Disposition: form-data; name=\"password\"\r\n\r\nhunter2-mp\r\n"
              b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.bin\"\r\n"
              b"Content-Type: application/octet-stream\r\n\r\n\x00\xffkey\r\n--XyZ--\r\n")


@pytest.mark.parametrize("raw, masked, secrets", [
    # a multipart form (`curl -F password=...`): the credential-named field's value, the rest byte for byte
    (_MULTIPART, _MULTIPART.replace(b"hunter2-mp", REDACTED.encode()), ("hunter2-mp",)),
    # its line breaks bare
    (_MULTIPART.replace(b"\r\n", b"\n"), _MULTIPART.replace(b"\r\n", b"\n").replace(b"hunter2-mp", REDACTED.encode()),
     ("hunter2-mp",)),
    # JSON lines (NDJSON): each line masked as a JSON body is
    (b'{"a":1,"api_key":"sk-ndjson-1"}\n{"b":2}\n{"token":"tok-abcdef"}\n',
     b'{"a":1,"api_key":"[REDACTED]"}\n{"b":2}\n{"token":"[REDACTED]"}\n', ("sk-ndjson-1", "tok-abcdef")),
    # JSON behind a UTF-8 byte-order mark: masked, written back without it
    (b'\xef\xbb\xbf{"password": "bom-secret"}', b'{"password":"[REDACTED]"}', ("bom-secret",)),
    # a multipart part that is itself JSON, or a form, with a credential inside; a field named as a query
    # credential is (`sig`)
    (b'--B\r\nContent-Disposition: form-data; name="meta"\r\nContent-Type: application/json\r\n\r\n'
     b'{"api_key": "sk-part-12345"}\r\n--B\r\nContent-Disposition: form-data; name="sig"\r\n\r\nsig-9f8e7d\r\n--B--\r\n',
     b'--B\r\nContent-Disposition: form-data; name="meta"\r\nContent-Type: application/json\r\n\r\n'
     b'{"api_key":"[REDACTED]"}\r\n--B\r\nContent-Disposition: form-data; name="sig"\r\n\r\n[REDACTED]\r\n--B--\r\n',
     ("sk-part-12345", "sig-9f8e7d")),
])
def test_credentials_in_multipart_forms_json_lines_and_bom_json_are_masked(raw: bytes, masked: bytes,
                                                                           secrets: tuple[str, ...]) -> None:
    """Read as plain text, these bodies went into captures and results.duckdb with their credentials, and an
    answer that echoed one was not masked by value."""
    assert Redactor().body(raw) == masked
    assert Redactor().secret_values((), "/upload", raw) == secrets


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd", "gzip, br"])
def test_a_coded_request_body_is_masked_decoded_and_coded_again(coding: str) -> None:
    """A client that compresses its uploads (`Content-Encoding: gzip`): its body was kept as the coded bytes
    (body_b64), credentials inside, and an answer that echoed one was not masked. Now it is decoded, masked
    and coded again as it came (a replay sends what the client sent but for the credentials)."""
    from harness.capture.exchange import Exchange, ExchangeRecords
    from harness.content_encoding import decode_body, encode_body

    plain = json.dumps({"prompt": "hi", "api_key": "sk-coded-1234567"}).encode()
    headers = (("Content-Type", "application/json"), ("Content-Encoding", coding))
    r = CapturedRequest(source="t", line=1, ts=0.0, method="POST", path="/v1/score", headers=headers,
                        body=encode_body(coding, plain))
    masked = Redactor().request(r).body
    assert decode_body(coding, masked, 1 << 20) == (b'{"prompt":"hi","api_key":"[REDACTED]"}', None, None)
    assert Redactor().secret_values(headers, "/v1/score", r.body) == ("sk-coded-1234567",)
    (rec,) = ExchangeRecords()(Exchange(0.0, "POST", "/v1/score", headers, r.body, 200, 1.0,
                                        (("Content-Type", "application/json"),), b'{"echo": "sk-coded-1234567"}', 28))
    assert decode_body(coding, base64.b64decode(rec["body_b64"]), 1 << 20)[0] == b'{"prompt":"hi","api_key":"[REDACTED]"}'
    assert rec["production_body"] == {"echo": REDACTED}
    # one that is not what its header says is masked as it is (`Content-Encoding: UTF-8`, a client's mistake)
    liar = CapturedRequest(source="t", line=1, ts=0.0, method="POST", path="/v1/score", headers=headers, body=b"\x00junk")
    assert Redactor().request(liar).body == b"\x00junk"
    mistaken = (("Content-Type", "application/x-www-form-urlencoded"), ("Content-Encoding", "UTF-8"))
    form = CapturedRequest(source="t", line=1, ts=0.0, method="POST", path="/login", headers=mistaken,
                           body=b"user=a&password=hunter22")
    assert Redactor().request(form).body == b"user=a&password=[REDACTED]"
    assert Redactor().secret_values(mistaken, "/login", form.body) == ("hunter22",)


def test_bodies_without_secret_names_pass_unchanged() -> None:
    cjk = json.dumps({"prompt": "\u4f60\u597d"}).encode()  # \u escapes that cannot spell an ASCII name
    lines = b'{"prediction": "approve"}\n{"prediction": "deny"}\n'
    multipart = _MULTIPART.replace(b"password", b"comment")
    for raw in (b'{"prediction": "approve", "confidence": 0.9}', cjk, b"a=1&b=2", b"plain text with a key word",
                lines, multipart, b"--not a multipart form, a key word"):
        assert Redactor().body(raw) is raw

def test_jsonpath() -> None:
    doc = {"a": [{"b": 1}, {"b": 2}], "c": {"d-e": 3}}
    assert list(find_all(doc, "$.a[*].b")) == [1, 2]
    assert find_first(doc, "$.a[-1].b") == 2
    assert find_first(doc, "$.c['d-e']") == 3
    assert find_first(doc, "$.nope") is MISSING
    assert set_all(doc, "$.a[*].b", 0) == 2 and doc["a"] == [{"b": 0}, {"b": 0}]


@given(st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                    max_leaves=20))
def test_redacted_body_is_still_json_and_never_grows_secrets(doc: object) -> None:
    raw = json.dumps(doc).encode()
    out = Redactor().body(raw)
    json.loads(out)  # still a JSON document


def test_json_behind_a_byte_order_mark_is_masked_by_the_scenarios_json_paths() -> None:
    raw = b'\xef\xbb\xbf{"user": {"ssn": "123-45-6789"}}'
    assert Redactor(RedactConfig(json_paths=("$.user.ssn",))).body(raw) == b'{"user":{"ssn":"[REDACTED]"}}'
