"""Content-Encoding decoding: every coding, in pieces, chained, capped (bombs), and refused when it lies."""
from __future__ import annotations

import gzip
import ssl
import sys
import zlib

import brotli
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.content_encoding import (BodyDecoder, DecodedTooLarge, EncodingError, content_codings,
                                             decode_answer)
from harness.replay.wire import SendResult, error_result

if sys.version_info >= (3, 14):
    from compression import zstd
else:
    from backports import zstd


def _raw_deflate(data: bytes) -> bytes:
    c = zlib.compressobj(wbits=-15)
    return c.compress(data) + c.flush()


ENCODERS = {"gzip": gzip.compress, "x-gzip": gzip.compress, "deflate": zlib.compress, "br": brotli.compress,
            "zstd": zstd.compress}
PAYLOAD = b'{"outputs": [{"name": "predict_proba", "data": [' + b", ".join(b"0.%d" % i for i in range(3000)) + b"]}]}"


def _feed_all(decoder: BodyDecoder, data: bytes, step: int) -> bytes:
    out = b"".join(decoder.feed(data[i:i + step]) for i in range(0, len(data), step))
    decoder.finish()
    return out


@pytest.mark.parametrize("coding", sorted(ENCODERS))
@pytest.mark.parametrize("step", [1, 7, 4096, 10**9])
def test_each_coding_decodes_in_any_pieces(coding: str, step: int) -> None:
    encoded = ENCODERS[coding](PAYLOAD)
    decoder = BodyDecoder([coding], cap=10**7)
    assert _feed_all(decoder, encoded, step) == PAYLOAD
    assert decoder.decoded_bytes == len(PAYLOAD)


def test_raw_deflate_as_some_servers_send_it() -> None:
    assert _feed_all(BodyDecoder(["deflate"], 10**7), _raw_deflate(PAYLOAD), 100) == PAYLOAD


def test_chained_codings_are_undone_right_to_left() -> None:
    encoded = brotli.compress(gzip.compress(PAYLOAD))  # Content-Encoding: gzip, br
    assert content_codings("gzip, identity, BR") == ["gzip", "br"]
    assert _feed_all(BodyDecoder(content_codings("gzip, br"), 10**7), encoded, 333) == PAYLOAD


def test_several_gzip_members_and_zstd_frames() -> None:
    assert _feed_all(BodyDecoder(["gzip"], 100), gzip.compress(b"ab") + gzip.compress(b"cd"), 5) == b"abcd"
    assert _feed_all(BodyDecoder(["zstd"], 100), zstd.compress(b"ab") + zstd.compress(b"cd"), 5) == b"abcd"
    for coding in ("gzip", "zstd"):  # a member or frame that ends exactly where a piece of the body ends
        first, second = ENCODERS[coding](b"ab"), ENCODERS[coding](b"cd")
        decoder = BodyDecoder([coding], 100)
        assert decoder.feed(first) + decoder.feed(second) == b"abcd"
        decoder.finish()


@given(st.binary(max_size=5000), st.sampled_from(sorted(ENCODERS)), st.integers(1, 600))
@settings(max_examples=60, deadline=None)
def test_round_trip_property(data: bytes, coding: str, step: int) -> None:
    assert _feed_all(BodyDecoder([coding], 10**6), ENCODERS[coding](data), step) == data


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_a_bomb_stops_at_the_cap(coding: str) -> None:
    one = ENCODERS[coding](b"\0" * (1 << 20))
    # gzip and zstd: 1,024 members/frames of 1 MiB each, a 1 GiB answer
    if coding in ("gzip", "zstd"):
        bomb = one * 1024
    else:  # one 16 MiB stream
        zeros = b"\0" * (16 << 20)
        bomb = brotli.compress(zeros, quality=1) if coding == "br" else zlib.compress(zeros, 1)
    cap = 4 << 20
    decoder = BodyDecoder([coding], cap)
    with pytest.raises(DecodedTooLarge) as caught:
        for i in range(0, len(bomb), 65536):
            decoder.feed(bomb[i:i + 65536])
    # stopped within one bounded step (256 KiB) of the cap: memory is bounded by the cap, not the bomb
    assert cap < caught.value.decoded <= cap + (256 << 10) + 1


@pytest.mark.parametrize("coding,junk", [("gzip", b"this is plain text, not gzip"), ("br", b"{\"not\": \"brotli\"}"),
                                         ("zstd", b"{\"a\": 1}"), ("deflate", b"\xff\xfe\xfd\xfc")])
def test_bytes_that_are_not_the_coding_name_it(coding: str, junk: bytes) -> None:
    with pytest.raises(EncodingError, match=f"Content-Encoding {coding}: the answer is not {coding}"):
        _feed_all(BodyDecoder([coding], 10**6), junk, 1000)


def test_unknown_and_truncated_codings() -> None:
    with pytest.raises(EncodingError, match="'compress' is not supported"):
        BodyDecoder(["compress"], 10)
    with pytest.raises(EncodingError, match="gzip data ends before its end marker"):
        _feed_all(BodyDecoder(["gzip"], 10**6), gzip.compress(PAYLOAD)[:-30], 1000)


def _answer(body: bytes, encoding: str | None, status: int = 200, kind: str | None = None) -> SendResult:
    headers = {"content-type": "application/json"} | ({"content-encoding": encoding} if encoding else {})
    return SendResult(status, body, kind, None, len(body), headers)


def test_decode_answer_keeps_wire_bytes_and_records_the_decoded_size() -> None:
    wire = gzip.compress(PAYLOAD)
    out = decode_answer(_answer(wire, "gzip"), cap=10**7)
    assert (out.body, out.response_bytes, out.decoded_bytes, out.error_kind) == (PAYLOAD, len(wire), len(PAYLOAD), None)
    plain = decode_answer(_answer(PAYLOAD, None), cap=10**7)
    assert (plain.body, plain.decoded_bytes) == (PAYLOAD, len(PAYLOAD))
    empty = decode_answer(_answer(b"", "gzip", status=204), cap=10)  # HEAD, 204, 304: nothing to decode
    assert (empty.error_kind, empty.decoded_bytes) == (None, 0)


def test_decode_answer_error_kinds() -> None:
    big = decode_answer(_answer(gzip.compress(b"x" * 100_000), "gzip"), cap=50_000)
    assert big.error_kind == "too_large" and big.body == b"" and "decoded answer (gzip)" in big.error_detail
    lying = decode_answer(_answer(b'{"prediction": 1}', "gzip"), cap=10**6)
    assert lying.error_kind == "bad_encoding" and "Content-Encoding gzip" in lying.error_detail
    unknown = decode_answer(_answer(b"abc", "compress"), cap=10**6)
    assert unknown.error_kind == "bad_encoding" and "'compress'" in unknown.error_detail
    server_error = decode_answer(_answer(b"oops", "gzip", status=503, kind="http_5xx"), cap=10**6)
    assert server_error.error_kind == "http_5xx" and "Content-Encoding gzip" in server_error.error_detail


def test_tls_failures_mid_run_are_their_own_kind() -> None:
    assert error_result(ssl.SSLCertVerificationError(1, "certificate verify failed")).error_kind == "tls"
    assert error_result(ssl.SSLError(1, "tlsv13 alert certificate required")).error_kind == "tls"
    assert error_result(ssl.SSLEOFError(8, "EOF occurred in violation of protocol")).error_kind == "reset"
