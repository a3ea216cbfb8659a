"""HTTP/1.1 message syntax, strictly (RFC 9110, RFC 9112): request and status lines, header fields,
message framing and chunk-size lines, as pure functions over bytes.

The router faces clients and forwards to engines that trust it, so anything two HTTP parsers could
read two ways is refused here instead of guessed at: a bare CR or LF, a NUL, obsolete line folding,
a Content-Length that is signed, underscored or says two things, a Transfer-Encoding other than
exactly `chunked` last, an HTTP version other than 1.0 and 1.1. What the router forwards is rebuilt
from what this module parsed, never copied from the client's bytes (`httpio.request_bytes`).
"""

from __future__ import annotations

import dataclasses
import re

MAX_HEADERS = 100  # header fields in one message; more is refused with 431
MAX_CHUNK_LINE = 4096  # a chunk-size line with its extensions; longer is refused

# RFC 9110 §5.6.2: token = 1*tchar
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
# A field value: visible characters, obs-text, spaces and tabs (RFC 9110 §5.5). No CR, LF, NUL or
# other control character can pass, so no header line can smuggle another.
_FIELD_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")
# request-target: visible ASCII only, as in a URI (RFC 9112 §3.2, RFC 3986: anything else is
# percent-encoded); no whitespace, no controls, no raw bytes above 0x7E. The forms are told apart below.
_TARGET = re.compile(rb"[\x21-\x7e]+\Z")
# A whole well-formed field line: token, colon, optional whitespace, a value that starts and ends
# with a visible character (or is empty), optional whitespace (RFC 9112 §5.1).
_FIELD_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*[\x21-\x7e\x80-\xff])?)?)[ \t]*\Z")
_VERSION = re.compile(rb"HTTP/([0-9])\.([0-9])\Z")
_DIGITS = re.compile(r"[0-9]+\Z")
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?\Z")
_STATUS = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: [\t\x20-\x7e\x80-\xff]*)?\Z")
# The request line nearly every request has: a method token, an origin-form target, HTTP/1.0 or 1.1.
# What it matches, parse_request_line would accept and read the same way (a property test holds the
# two equal); anything else goes through the checks that name what is wrong.
_COMMON_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+) (/[\x21-\x7e]*) HTTP/1\.([01])")


class ProtocolError(Exception):
    """The peer spoke broken HTTP; `status` is what to answer a client with (then close)."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status = status
        self.headers = headers  # extra response headers, such as Retry-After with a 503


@dataclasses.dataclass(frozen=True)
class RequestLine:
    method: str
    target: str  # origin-form ("/path?query") or "*"
    version: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Framing:
    """How the body of a message is delimited."""

    length: int | None  # Content-Length; None when chunked (or, for responses, until close)
    chunked: bool


def _shown(data: bytes, limit: int = 60) -> str:
    """Bytes quoted for an error message, short enough for one log line."""
    return repr(data[:limit]) + ("..." if len(data) > limit else "")


def split_head(head: bytes) -> list[bytes]:
    """The lines of a message head (without the blank line that ends it). Only CRLF ends a line:
    a CR or LF on its own, or a NUL, anywhere in the head is refused rather than read one way here
    and another way by the engine."""
    lines = head.split(b"\r\n")
    breaks = len(lines) - 1  # each CRLF made one split; any other CR or LF is a bare one
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks:
        raise ProtocolError(400, "A header line contains a bare CR or LF; lines must end with CRLF.")
    if b"\0" in head:
        raise ProtocolError(400, "The request head contains a NUL byte.")
    return lines


def parse_request_line(line: bytes) -> RequestLine:
    common = _COMMON_LINE.fullmatch(line)
    if common is not None:
        method, target, minor = common.groups()
        return RequestLine(method.decode("ascii"), target.decode("latin-1"), (1, 1 if minor == b"1" else 0))
    return checked_request_line(line)


def checked_request_line(line: bytes) -> RequestLine:
    """parse_request_line one check at a time, each refusal saying what is wrong."""
    parts = line.split(b" ")
    if len(parts) != 3 or not all(parts):
        raise ProtocolError(400, f"Malformed request line {_shown(line)}: expected `METHOD /path HTTP/1.1`.")
    method, target, version = parts
    if not _TOKEN.match(method):
        raise ProtocolError(400, f"Malformed method {_shown(method)}.")
    match = _VERSION.match(version)
    if match is None:
        raise ProtocolError(400, f"Malformed HTTP version {_shown(version)}.")
    numbers = (int(match.group(1)), int(match.group(2)))
    if numbers not in ((1, 0), (1, 1)):
        raise ProtocolError(505, f"HTTP version {version.decode()} is not supported; use HTTP/1.1.")
    if not _TARGET.match(target):
        raise ProtocolError(400, f"Malformed request target {_shown(target)}.")
    return RequestLine(method.decode("ascii"), _origin_form(method, target), numbers)


def _origin_form(method: bytes, target: bytes) -> str:
    """The path and query a request names. Absolute-form (`http://host/path`) must be accepted by a
    server (RFC 9112 §3.2.2) and is reduced to its path; authority-form is only for CONNECT."""
    text = target.decode("latin-1")
    if text.startswith("/"):
        return text
    if text == "*" and method == b"OPTIONS":
        return text
    lowered = text.lower()
    for scheme in ("http://", "https://"):
        if lowered.startswith(scheme):
            rest = text[len(scheme) :]
            slash = rest.find("/")
            query = rest.find("?")
            if slash < 0 or (0 <= query < slash):
                return "/" + rest[query:] if query >= 0 else "/"
            return rest[slash:]
    raise ProtocolError(400, f"Malformed request target {_shown(target)}: it must start with `/`.")


def parse_fields(lines: list[bytes]) -> list[tuple[str, str]]:
    """(name, value) pairs in order; names as sent, values without surrounding whitespace."""
    if len(lines) > MAX_HEADERS:
        raise ProtocolError(
            431, f"The request has {len(lines)} header fields; at most {MAX_HEADERS} are accepted."
        )
    fields = []
    for line in lines:
        match = _FIELD_LINE.match(line)
        if match is not None:  # the one regex a well-formed line needs; the checks below say what is wrong
            fields.append((match.group(1).decode("ascii"), match.group(2).decode("latin-1")))
            continue
        if line[:1] in (b" ", b"\t"):
            raise ProtocolError(
                400, "Obsolete line folding (a header line starting with whitespace) is not accepted."
            )
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError(400, f"Malformed header line {_shown(line)}: no colon.")
        if not _TOKEN.match(name):
            raise ProtocolError(
                400, f"Malformed header name {_shown(name)}: no spaces or separators are allowed."
            )
        value = value.strip(b" \t")
        if not _FIELD_VALUE.match(value):
            raise ProtocolError(400, f"Header {name.decode()} contains a control character.")
        fields.append((name.decode("ascii"), value.decode("latin-1")))
    return fields


# The field lines of a head after its start line, each ending in CRLF, as one text (latin-1): the
# same grammar as _FIELD_LINE. One fullmatch checks every line and one findall takes them apart,
# instead of a regex call per line; a head that does not match goes through parse_fields line by
# line, which says what is wrong.
_FIELD_TEXT = (r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[\x21-\x7e\x80-\xff](?:[\t\x20-\x7e\x80-\xff]*"
               r"[\x21-\x7e\x80-\xff])?)?)[ \t]*\r\n")
_FIELD_BLOCK = re.compile(f"(?:{_FIELD_TEXT})*")
_FIELD_EACH = re.compile(_FIELD_TEXT)


def split_start(head: bytes) -> tuple[bytes, bytes]:
    """A message head (without the blank line that ends it) as its start line and the field lines
    after it, refusing what split_head refuses (a bare CR or LF, a NUL)."""
    breaks = head.count(b"\r\n")
    if head.count(b"\n") != breaks or head.count(b"\r") != breaks or b"\0" in head:
        split_head(head)  # raises, saying which
    first, _, rest = head.partition(b"\r\n")
    return first, rest


def head_fields(rest: bytes) -> list[tuple[str, str]]:
    """The field lines that split_start left, as parse_fields gives them (and refuses them)."""
    if not rest:
        return []
    text = rest.decode("latin-1") + "\r\n"
    if text.count("\r\n") > MAX_HEADERS or _FIELD_BLOCK.fullmatch(text) is None:
        return parse_fields(rest.split(b"\r\n"))  # raises, saying what is wrong
    return _FIELD_EACH.findall(text)


def field_dict(fields: list[tuple[str, str]]) -> dict[str, str]:
    """Lower-case names; repeated fields joined with ", " (RFC 9110 §5.3)."""
    out: dict[str, str] = {}
    for name, value in fields:
        key = name.lower()
        out[key] = f"{out[key]}, {value}" if key in out else value
    return out


def _list(value: str) -> list[str]:
    return [item.strip(" \t").lower() for item in value.split(",") if item.strip(" \t")]


def connection_tokens(headers: dict[str, str]) -> frozenset[str]:
    """The options of the Connection field: `close`, `keep-alive` and the names of other hop-by-hop
    fields, which must not be forwarded (RFC 9110 §7.6.1)."""
    return frozenset(_list(headers.get("connection", "")))


def content_length(value: str, status: int = 400) -> int:
    """Content-Length is 1*DIGIT (RFC 9110 §8.6): no sign, no underscores, no hex. Repeats that agree
    (`5, 5`, or two fields of 5) are one length; repeats that differ are refused."""
    if len(value) <= 18 and value.isdigit() and value.isascii():
        return int(value)  # the one plain length nearly every message has, as checked_content_length reads it
    return checked_content_length(value, status)


def checked_content_length(value: str, status: int = 400) -> int:
    """content_length one check at a time, each refusal saying what is wrong."""
    values = {item.strip(" \t") for item in value.split(",")}
    if len(values) != 1:
        raise ProtocolError(status, f"Conflicting Content-Length values {value[:60]!r}.")
    (text,) = values
    if not _DIGITS.match(text) or len(text) > 18:
        raise ProtocolError(status, f"Content-Length {text[:30]!r} is not a plain decimal number.")
    return int(text)


def request_framing(headers: dict[str, str], version: tuple[int, int]) -> Framing:
    """RFC 9112 §6.3 for requests; anything ambiguous is refused, never guessed."""
    te = headers.get("transfer-encoding")
    if te is not None:
        if version < (1, 1):
            raise ProtocolError(400, "Transfer-Encoding is not allowed in an HTTP/1.0 request.")
        if "content-length" in headers:
            raise ProtocolError(400, "A request may carry Content-Length or Transfer-Encoding, not both.")
        codings = _list(te)
        if not codings or codings[-1] != "chunked":
            raise ProtocolError(
                400, f"Transfer-Encoding {te[:60]!r}: a request body must end with exactly `chunked`."
            )
        if codings.count("chunked") > 1:
            raise ProtocolError(400, "Transfer-Encoding lists `chunked` more than once.")
        if len(codings) > 1:
            raise ProtocolError(501, f"Transfer-Encoding {te[:60]!r}: only `chunked` is supported.")
        return Framing(None, True)
    if "content-length" in headers:
        return Framing(content_length(headers["content-length"]), False)
    return Framing(0, False)


def response_framing(headers: dict[str, str], status: int, method: str) -> Framing:
    """RFC 9112 §6.3 for responses: a HEAD answer and 1xx/204/304 have no body whatever they say;
    chunked last means chunked; otherwise Content-Length, else the body runs until the close."""
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return Framing(0, False)
    te = headers.get("transfer-encoding")
    if te is not None:
        codings = _list(te)
        if codings and codings[-1] == "chunked" and codings.count("chunked") == 1:
            if len(codings) > 1:
                raise ProtocolError(
                    502, f"The engine sent Transfer-Encoding {te[:60]!r}; only chunked is relayed."
                )
            return Framing(None, True)
        return Framing(None, False)  # close-delimited (RFC 9112 §6.3 item 4, for responses)
    if "content-length" in headers:
        return Framing(content_length(headers["content-length"], status=502), False)
    return Framing(None, False)


def parse_status_line(line: bytes) -> tuple[tuple[int, int], int]:
    match = _STATUS.match(line)
    if match is None:
        raise ProtocolError(502, f"The engine sent a malformed status line {_shown(line)}.")
    return (1, int(match.group(1))), int(match.group(2))


def chunk_size(line: bytes) -> int:
    """The size in a chunk-size line (CRLF already removed): 1*HEXDIG, then optional extensions,
    which are ignored. `0x5`, `0_5`, `-1`, `+5` and empty sizes are refused."""
    if len(line) > MAX_CHUNK_LINE:
        raise ProtocolError(400, f"A chunk-size line is longer than {MAX_CHUNK_LINE} bytes.")
    if b"\r" in line or b"\n" in line or b"\0" in line:
        raise ProtocolError(400, "A chunk-size line contains a bare CR, LF or NUL.")
    match = _CHUNK_LINE.match(line)
    if match is None:
        raise ProtocolError(400, f"Malformed chunk size {_shown(line, 40)}: expected hexadecimal digits.")
    digits = match.group(1).lstrip(b"0")  # leading zeros are 1*HEXDIG too; only the value is bounded
    if len(digits) > 16:
        raise ProtocolError(400, f"Chunk size {_shown(line, 40)} is too large.")
    return int(digits or b"0", 16)
