"""The header of a safetensors file, read without touching the tensors.

A safetensors file is an 8-byte little-endian header length N, N bytes of JSON mapping each tensor
name to {dtype, shape, data_offsets}, then the raw tensor bytes. Everything fleetspec needs (names,
shapes, dtypes, sizes) is in the header, so a 100 MB adapter costs 8 + N bytes of I/O.

The checks mirror the safetensors library (the reader vLLM uses, safetensors/src/tensor.rs
`read_metadata` and `Metadata::validate`), so a file refused here is a file vLLM refuses too. Each
refusal carries the library's error kind and the sentence safetensors 0.8 prints for it, which is
what vLLM's load error shows.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import stat

# safetensors' own MAX_HEADER_SIZE: beyond this the library refuses the file (HeaderTooLarge).
MAX_HEADER_BYTES = 100_000_000
LENGTH_BYTES = 8

# Bits per element of every safetensors dtype (F4/F6 are packed sub-byte types).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8, "F8_E5M2FNUZ": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64, "C64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}


class HeaderError(ValueError):
    """The header cannot be trusted. `kind` is the safetensors error name (HeaderTooLarge, ...)."""

    def __init__(self, kind: str, message: str, library_text: str = ""):
        super().__init__(message)
        self.kind = kind
        self.message = message  # fleetspec's explanation
        self.library_text = library_text or _LIBRARY_TEXT.get(kind, kind)  # what safetensors 0.8 says


# safetensors 0.8's Display for each error kind (JSON and UTF-8 errors carry their parser's text).
_LIBRARY_TEXT = {
    "HeaderTooSmall": "header too small",
    "HeaderTooLarge": "header too large",
    "InvalidHeaderLength": "invalid header length",
    "TensorInvalidInfo": "invalid shape, data type, or offset for tensor",
    "MetadataIncompleteBuffer": "incomplete metadata, file not fully covered",
}


@dataclasses.dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # offsets into the data section, which starts right after the header
    end: int

    @property
    def nbytes(self) -> int:
        return self.end - self.begin

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


@dataclasses.dataclass(frozen=True)
class Header:
    tensors: tuple[TensorEntry, ...]  # sorted by name, the order safetensors' keys() gives
    metadata: dict[str, str]
    header_bytes: int  # N, the JSON length
    data_bytes: int  # the data section the offsets cover

    @property
    def file_bytes(self) -> int:
        return LENGTH_BYTES + self.header_bytes + self.data_bytes


def header_length(prefix: bytes, file_size: int) -> int:
    """N from the first 8 bytes, refused when it cannot describe a valid file of `file_size` bytes."""
    if len(prefix) < LENGTH_BYTES or file_size < LENGTH_BYTES:
        raise HeaderError("HeaderTooSmall", f"the file is {file_size} bytes, too short to hold a safetensors header")
    length = int.from_bytes(prefix[:LENGTH_BYTES], "little")
    if length > MAX_HEADER_BYTES:
        raise HeaderError(
            "HeaderTooLarge",
            f"the header claims {length:,} bytes, above the {MAX_HEADER_BYTES:,}-byte limit safetensors accepts",
        )
    if LENGTH_BYTES + length > file_size:
        raise HeaderError(
            "InvalidHeaderLength",
            f"the header claims {length:,} bytes but the file has only {file_size - LENGTH_BYTES:,} after the "
            "length field (truncated file?)",
        )
    return length


def parse_safetensors_header(blob: bytes, file_size: int | None = None) -> Header:
    """Parse `8-byte length + JSON header` bytes. Pure.

    With `file_size`, the tensor offsets must cover the rest of the file exactly, as safetensors
    demands: a truncated download or trailing garbage is refused here instead of at load time.
    """
    length = header_length(blob, file_size if file_size is not None else len(blob))
    raw = blob[LENGTH_BYTES:LENGTH_BYTES + length]
    if len(raw) < length:
        raise HeaderError("InvalidHeaderLength", f"only {len(raw):,} of the {length:,} header bytes are present")
    document = _decode(raw)
    metadata = document.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise HeaderError("InvalidHeaderDeserialization", "__metadata__ must map strings to strings")
    tensors = sorted((_entry(name, info) for name, info in document.items()), key=lambda t: t.name)
    data_bytes = _validate_offsets(tensors)
    if file_size is not None and LENGTH_BYTES + length + data_bytes != file_size:
        actual = file_size - LENGTH_BYTES - length
        raise HeaderError(
            "MetadataIncompleteBuffer",
            f"the header describes {data_bytes:,} bytes of tensor data but the file holds {actual:,} "
            f"({'truncated' if actual < data_bytes else 'trailing bytes'})",
        )
    return Header(tuple(tensors), dict(metadata), length, data_bytes)


def _decode(raw: bytes) -> dict:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        library_text = f"invalid UTF-8 in header: {_utf8_text(exc)}"
        raise HeaderError("InvalidHeader", "the header is not valid UTF-8", library_text) from None
    if not text.startswith("{"):
        raise _json_error("the header does not start with '{', so this is not a safetensors file")
    try:
        document = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise _json_error(f"the header is not valid JSON ({exc})") from None
    if not isinstance(document, dict):
        raise _json_error("the header is JSON but not an object")
    return document


def _json_error(message: str) -> HeaderError:
    # serde_json's wording cannot be reproduced; the prefix is safetensors'.
    return HeaderError("InvalidHeaderDeserialization", message, f"invalid JSON in header: {message}")


def _utf8_text(exc: UnicodeDecodeError) -> str:
    """Rust's Utf8Error wording for the same bytes."""
    if exc.reason == "unexpected end of data":
        return f"incomplete utf-8 byte sequence from index {exc.start}"
    return f"invalid utf-8 sequence of {exc.end - exc.start} bytes from index {exc.start}"


def _entry(name: str, info) -> TensorEntry:
    def bad(why: str) -> HeaderError:
        return _json_error(f"tensor {name!r}: {why}")

    if not isinstance(info, dict):
        raise bad("its entry is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in DTYPE_BITS:
        raise bad(f"unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise bad("shape must be a list of non-negative integers")
    if not isinstance(offsets, list) or len(offsets) != 2 or not all(_is_count(o) for o in offsets):
        raise bad("data_offsets must be two non-negative integers")
    return TensorEntry(name, dtype, tuple(shape), offsets[0], offsets[1])


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _validate_offsets(tensors: list[TensorEntry]) -> int:
    """The data section is the tensors back to back, each exactly its size; returns its length.

    Same order as safetensors: by offsets, the offset check before the size check.
    """
    position = 0
    for entry in sorted(tensors, key=lambda t: (t.begin, t.end)):
        if entry.begin != position or entry.end < entry.begin:
            raise HeaderError(
                "InvalidOffset",
                f"tensor {entry.name!r} starts at byte {entry.begin:,} of the data, expected {position:,} "
                "(overlapping or gapped offsets)",
                f"invalid offset for tensor `{entry.name}`",
            )
        position = entry.end
        bits = entry.numel * DTYPE_BITS[entry.dtype]
        if bits % 8 or bits // 8 != entry.nbytes:
            raise HeaderError(
                "TensorInvalidInfo",
                f"tensor {entry.name!r}: shape {list(entry.shape)} of {entry.dtype} needs {bits / 8:g} bytes but its "
                f"offsets span {entry.nbytes}",
            )
    return position


# ---------------------------------------------------------------------------------------------
# I/O


@dataclasses.dataclass(frozen=True)
class HeaderRead:
    header: Header | None
    error: HeaderError | None
    bytes_read: int
    file_size: int


def read_header(path: str | os.PathLike, max_header_bytes: int = MAX_HEADER_BYTES) -> HeaderRead:
    """Read only the length field and the JSON header of `path`; never the tensor data.

    A length above `max_header_bytes` or beyond the end of the file is refused after reading the
    8-byte length alone. OSErrors (permission, vanished file) propagate to the caller.
    """
    # Unbuffered, so the kernel hands over exactly the bytes asked for: 8, then the header.
    with open(path, "rb", buffering=0) as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return HeaderRead(None, HeaderError("NotAFile", f"{path} is not a regular file"), 0, 0)
        size = info.st_size
        prefix = _read_exactly(handle, LENGTH_BYTES)
        try:
            length = header_length(prefix, size)
            if length > max_header_bytes:
                raise HeaderError(
                    "HeaderTooLarge", f"the header claims {length:,} bytes, above the {max_header_bytes:,}-byte limit")
        except HeaderError as error:
            return HeaderRead(None, error, len(prefix), size)
        body = _read_exactly(handle, length)
    bytes_read = len(prefix) + len(body)
    try:
        return HeaderRead(parse_safetensors_header(prefix + body, size), None, bytes_read, size)
    except HeaderError as error:
        return HeaderRead(None, error, bytes_read, size)


def _read_exactly(handle, count: int) -> bytes:
    """Up to `count` bytes; fewer only at end of file (raw reads may return short)."""
    chunks, remaining = [], count
    while remaining:
        chunk = handle.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
