"""HTTP/1.1 syntax as the router reads it (fleetspec/router/httpwire.py): what is refused, with
which status, and that what passes is read one way only."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleetspec.router import httpio, httpjson, httpwire, streams
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


def _outcome(call, *args):
    try:
        return call(*args)
    except ProtocolError as exc:
        return ("refused", exc.status, str(exc))


_FIELD_BYTES = st.lists(st.sampled_from([b"a", b"X-Y", b":", b" ", b"\t", b"v", b"\x01", b"\x7f", b"\xe9",
                                         b"\r\n", b"\r", b"\n", b"\0", b"(", b"\r\n ", b""]), max_size=30)


@given(_FIELD_BYTES.map(b"".join))
def test_the_whole_head_parser_reads_fields_as_the_line_parser_does(rest):
    """head_fields (one regex over all field lines) is the fast path of split_head + parse_fields:
    the same fields, or the same refusal with the same message."""
    def by_lines(data):
        return httpwire.parse_fields(httpwire.split_head(data)) if data else []

    def fast(data):
        first, more = httpwire.split_start(b"GET / HTTP/1.1\r\n" + data)
        assert first == b"GET / HTTP/1.1"
        return httpwire.head_fields(more)

    assert _outcome(fast, rest) == _outcome(by_lines, rest)


def test_the_whole_head_parser_keeps_the_field_limit():
    rest = b"\r\n".join(b"X-%d: v" % i for i in range(httpwire.MAX_HEADERS + 1))
    assert status_of(httpwire.head_fields, rest) == 431
    assert len(httpwire.head_fields(rest.rsplit(b"\r\n", 1)[0])) == httpwire.MAX_HEADERS


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
        (b"GET /caf\xc3\xa9 HTTP/1.1", 400),  # a URI is ASCII: anything else is percent-encoded
        (b"GET /a\x7f HTTP/1.1", 400),
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


def test_leading_zeros_in_a_chunk_size_are_not_its_length():
    assert httpwire.chunk_size(b"0" * 40 + b"5") == 5
    assert httpwire.chunk_size(b"0" * 40) == 0
    assert status_of(httpwire.chunk_size, b"0" * 40 + b"1" * 17) == 400


def _head(raw: bytes, method: str = "POST") -> httpio.ResponseHead:
    async def read():
        stream = streams.Stream()
        stream.data_received(raw)
        stream.eof_received()
        return await httpio.read_response_head(stream, method)

    return asyncio.run(read())


def test_engine_answers_framed_two_ways_are_not_kept_alive():
    head = _head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n")
    assert head.chunked and head.length is None and not head.keep_alive
    assert _head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n").keep_alive


def test_engine_interim_answers_are_skipped_and_101_is_refused():
    head = _head(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
        b"HTTP/1.1 204 No Content\r\n\r\n"
    )
    assert (head.status, head.length, head.keep_alive) == (204, 0, True)
    with pytest.raises(ProtocolError) as caught:
        _head(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert caught.value.status == 502


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


@given(
    st.lists(st.binary(min_size=1, max_size=300), max_size=8),
    st.lists(st.integers(min_value=0, max_value=3000), max_size=10),
    st.booleans(),
)
def test_dechunker_reads_any_split_of_a_chunked_body(pieces, cuts, extension):
    """The engine-side decoder sees the bytes split wherever the network split them."""
    wire = b"".join(b"%x%s\r\n%s\r\n" % (len(p), b";x=1" if extension else b"", p) for p in pieces)
    wire += b"0\r\nX-Trailer: t\r\n\r\n"
    bounds = sorted({min(c, len(wire)) for c in cuts} | {0, len(wire)})
    decoder = httpio.Dechunker()
    out = b""
    for start, end in zip(bounds, bounds[1:], strict=False):
        assert not decoder.done
        out += b"".join(decoder.feed(wire[start:end]))
    assert decoder.done and out == b"".join(pieces) and decoder.extra == b""


@pytest.mark.parametrize(
    "wire", [b"5\r\nhelloXX0\r\n\r\n", b"0x5\r\nhello\r\n", b"5\nhello\r\n", b"-1\r\n", b"5;" + b"x" * 5000]
)
def test_dechunker_refuses_broken_framing(wire):
    with pytest.raises(ProtocolError):
        httpio.Dechunker().feed(wire)


def test_dechunker_keeps_what_follows_the_body():
    decoder = httpio.Dechunker()
    assert decoder.feed(b"2\r\nok\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n") == [b"ok"]
    assert decoder.done and decoder.extra == b"HTTP/1.1 200 OK\r\n"


def _outcome(parse, value):
    try:
        return parse(value)
    except httpwire.ProtocolError as exc:
        return (exc.status, str(exc))


_LINE_PIECES = st.lists(st.sampled_from([
    b"POST", b"GET", b"OPTIONS", b"P(ST", b" ", b"  ", b"/v1/completions", b"/a?b=c", b"*", b"http://h/p",
    b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.12", b"http/1.1", b"\t", b"\x7f", b"\xe9", b"\r", b"",
]), max_size=6).map(b"".join)


@given(_LINE_PIECES | st.binary(max_size=30))
def test_the_common_request_line_is_read_as_the_checks_read_it(line):
    assert _outcome(httpwire.parse_request_line, line) == _outcome(httpwire.checked_request_line, line)


@given(st.text(alphabet="0123456789 ,+-_x\t\u0663\u00b2", max_size=22))
def test_a_plain_content_length_is_read_as_the_checks_read_it(value):
    assert _outcome(httpwire.content_length, value) == _outcome(httpwire.checked_content_length, value)
