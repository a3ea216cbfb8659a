"""HTTP/1.1 syntax as the router reads it (fleetspec/router/httpwire.py): what is refused, with
which status, and that what passes is read one way only."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetspec.router import httpjson, httpwire
from fleetspec.router.httpwire import ProtocolError


def status_of(call, *args) -> int:
    with pytest.raises(ProtocolError) as caught:
        call(*args)
    return caught.value.status


@given(st.binary(max_size=20), st.sampled_from([b"\r", b"\n", b"\0"]), st.binary(max_size=20))
def test_no_cr_lf_or_nul_survives_in_a_head(before, bad, after):
    head = b"POST / HTTP/1.1\r\nHost: r\r\nX-A: " + before + bad + after
    try:
        lines = httpwire.split_head(head)
        fields = httpwire.parse_fields(lines[1:])
    except ProtocolError as exc:
        assert exc.status == 400
    else:  # a CR followed by LF is a line end, and the next line a field of its own
        assert all("\r" not in v and "\n" not in v and "\0" not in v for _, v in fields)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40))
def test_visible_values_pass_and_are_trimmed(value):
    ((name, parsed),) = httpwire.parse_fields([b"X-A: " + value.encode()])
    assert (name, parsed) == ("X-A", value.strip(" \t"))


@pytest.mark.parametrize(
    ("line", "status"),
    [
        (b"GET / HTTP/1.2", 505),
        (b"GET / HTTP/2.0", 505),
        (b"GET / HTTP/1.1 ", 400),
        (b"GET / http/1.1", 400),
        (b"GET /a b HTTP/1.1", 400),
        (b"G(T / HTTP/1.1", 400),
        (b"GET foo HTTP/1.1", 400),
        (b"CONNECT h:443 HTTP/1.1", 400),
    ],
)
def test_bad_request_lines(line, status):
    assert status_of(httpwire.parse_request_line, line) == status


def test_absolute_form_is_reduced_to_the_path():
    assert httpwire.parse_request_line(b"POST http://h:8080/v1/x?q=1 HTTP/1.1").target == "/v1/x?q=1"
    assert httpwire.parse_request_line(b"GET http://h?q=1 HTTP/1.0").target == "/?q=1"
    assert httpwire.parse_request_line(b"OPTIONS * HTTP/1.1").target == "*"


@pytest.mark.parametrize("value", ["+3", "-1", "1_0", "0x10", "", " ", "1 0", "5, 6", "1e3", "٣"])
def test_content_length_must_be_plain_digits(value):
    assert status_of(httpwire.request_framing, {"content-length": value}, (1, 1)) == 400


def test_agreeing_content_length_repeats_are_one_length():
    assert httpwire.request_framing({"content-length": "5, 5"}, (1, 1)) == httpwire.Framing(5, False)


@pytest.mark.parametrize(
    ("te", "status"),
    [
        ("notchunked", 400),
        ("xchunked", 400),
        ("chunked, gzip", 400),
        ("chunked, chunked", 400),
        ("", 400),
        ("gzip, chunked", 501),
    ],
)
def test_transfer_encoding_other_than_chunked_last(te, status):
    assert status_of(httpwire.request_framing, {"transfer-encoding": te}, (1, 1)) == status


def test_chunked_is_case_insensitive_and_excludes_content_length():
    assert httpwire.request_framing({"transfer-encoding": "Chunked"}, (1, 1)) == httpwire.Framing(None, True)
    assert (
        status_of(httpwire.request_framing, {"transfer-encoding": "chunked", "content-length": "3"}, (1, 1))
        == 400
    )
    assert status_of(httpwire.request_framing, {"transfer-encoding": "chunked"}, (1, 0)) == 400


@given(st.integers(min_value=0, max_value=2**60))
def test_hex_chunk_sizes_round_trip(size):
    assert httpwire.chunk_size(b"%x" % size) == size
    assert httpwire.chunk_size(b"%X;name=value" % size) == size


@pytest.mark.parametrize(
    "line", [b"0x5", b"0_5", b"-5", b"+5", b" 5", b"5 ", b"", b"zz", b"5\n", b"1" * 17, b"5;" + b"x" * 5000]
)
def test_bad_chunk_size_lines(line):
    assert status_of(httpwire.chunk_size, line) == 400


def test_responses_without_bodies():
    for status, method in [(204, "POST"), (304, "GET"), (200, "HEAD")]:
        assert httpwire.response_framing({"content-length": "100"}, status, method) == httpwire.Framing(
            0, False
        )
    assert httpwire.response_framing({}, 200, "POST") == httpwire.Framing(None, False)  # until the close
    assert status_of(httpwire.response_framing, {"content-length": "1, 2"}, 200, "POST") == 502


def test_connection_tokens_name_hop_by_hop_fields():
    assert httpwire.connection_tokens({"connection": "Keep-Alive, X-Secret ,"}) == {"keep-alive", "x-secret"}


def test_json_depth_limit():
    assert httpjson.loads(b'{"a": [[1]]}', 3) == {"a": [[1]]}
    with pytest.raises(httpjson.TooDeep):
        httpjson.loads(b'{"a": [[[1]]]}', 3)
    with pytest.raises(httpjson.TooDeep):
        httpjson.loads(b"[" * 100_000 + b"]" * 100_000, 64)
    assert httpjson.loads(b'["[[[[[[", {"k": "{{{{{{"}]', 2) == [
        "[[[[[[",
        {"k": "{{{{{{"},
    ]  # brackets in strings
