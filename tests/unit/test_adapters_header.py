"""safetensors headers: parsed from their bytes, refused when they cannot be trusted, read without the data."""

from __future__ import annotations

import json
import struct

import adapter_factory
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetspec.adapters import header


def blob(document, pad: bool = True) -> bytes:
    text = json.dumps(document).encode()
    if pad:
        text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


TWO = {
    "b.lora_B.weight": {"dtype": "BF16", "shape": [64, 8], "data_offsets": [1024, 2048]},
    "a.lora_A.weight": {"dtype": "BF16", "shape": [8, 64], "data_offsets": [0, 1024]},
    "__metadata__": {"format": "pt"},
}


def test_parses_names_shapes_and_sizes_sorted_by_name():
    raw = blob(TWO)
    parsed = header.parse_safetensors_header(raw, file_size=len(raw) + 2048)
    assert [t.name for t in parsed.tensors] == ["a.lora_A.weight", "b.lora_B.weight"]
    assert parsed.tensors[0].shape == (8, 64)
    assert parsed.tensors[1].nbytes == 1024
    assert parsed.metadata == {"format": "pt"}
    assert parsed.data_bytes == 2048
    assert parsed.file_bytes == len(raw) + 2048


@pytest.mark.parametrize(("document", "kind"), [
    ({"x": {"dtype": "F99", "shape": [1], "data_offsets": [0, 1]}}, "InvalidHeaderDeserialization"),
    ({"x": {"dtype": "F16", "shape": [-1], "data_offsets": [0, 2]}}, "InvalidHeaderDeserialization"),
    ({"x": {"dtype": "F16", "shape": [3], "data_offsets": [0, 4]}}, "TensorInvalidInfo"),
    ({"x": {"dtype": "F16", "shape": [1], "data_offsets": [2, 4]}}, "InvalidOffset"),
    ({"x": {"dtype": "F16", "shape": [2], "data_offsets": [0, 4]},
      "y": {"dtype": "F16", "shape": [2], "data_offsets": [2, 6]}}, "InvalidOffset"),
    ({"x": "not an object"}, "InvalidHeaderDeserialization"),
    ({"__metadata__": {"n": 1}}, "InvalidHeaderDeserialization"),
])
def test_refuses_inconsistent_entries(document, kind):
    with pytest.raises(header.HeaderError) as caught:
        header.parse_safetensors_header(blob(document))
    assert caught.value.kind == kind


def test_sub_byte_dtypes_are_sized_in_bits():
    document = {"x": {"dtype": "F4", "shape": [4, 2], "data_offsets": [0, 4]}}
    assert header.parse_safetensors_header(blob(document)).tensors[0].nbytes == 4


@pytest.mark.parametrize(("raw", "kind"), [
    (b"\x01\x00", "HeaderTooSmall"),
    (struct.pack("<Q", 100_000_001) + b"{}", "HeaderTooLarge"),
    (struct.pack("<Q", 50) + b"{}", "InvalidHeaderLength"),
    (struct.pack("<Q", 4) + b"[1] ", "InvalidHeaderDeserialization"),
    (struct.pack("<Q", 4) + b"{x: ", "InvalidHeaderDeserialization"),
    (struct.pack("<Q", 2) + b"\xff\xfe", "InvalidHeader"),
    (struct.pack("<Q", 3) + b"{\xff}", "InvalidHeader"),
])
def test_refuses_malformed_headers(raw, kind):
    with pytest.raises(header.HeaderError) as caught:
        header.parse_safetensors_header(raw)
    assert caught.value.kind == kind


def test_data_section_must_match_the_file_size_exactly():
    raw = blob(TWO)
    with pytest.raises(header.HeaderError) as short:
        header.parse_safetensors_header(raw, file_size=len(raw) + 2047)
    with pytest.raises(header.HeaderError) as long:
        header.parse_safetensors_header(raw, file_size=len(raw) + 2049)
    assert short.value.kind == long.value.kind == "MetadataIncompleteBuffer"
    assert "truncated" in short.value.message and "trailing" in long.value.message


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_any_bytes_give_a_header_or_a_header_error(data):
    try:
        parsed = header.parse_safetensors_header(data)
    except header.HeaderError as error:
        assert error.kind and error.message
    else:
        assert parsed.header_bytes <= len(data)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(max_size=8), st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=8), max_size=4))
def test_any_json_object_gives_a_header_or_a_header_error(document):
    try:
        header.parse_safetensors_header(blob(document))
    except header.HeaderError as error:
        assert error.kind


# ---------------------------------------------------------------------------------------------
# Reading from disk


def test_reads_only_the_header_of_a_100_mib_file(tmp_path):
    tensors = adapter_factory.lora_tensors(adapter_factory.LLAMA_8B, 10, adapter_factory.ATTENTION + adapter_factory.MLP,
                                           dtype="F32")
    path = tmp_path / "adapter_model.safetensors"
    size = adapter_factory.write_safetensors(path, tensors)
    result = header.read_header(path)
    assert result.error is None
    assert result.header.data_bytes == 100 * 1024 * 1024  # 7 modules × 32 layers, rank 10, F32
    assert result.bytes_read == 8 + result.header.header_bytes
    assert result.bytes_read < 64 * 1024
    assert result.file_size == size


def test_an_oversized_length_is_refused_after_reading_eight_bytes(tmp_path):
    path = tmp_path / "adapter_model.safetensors"
    with open(path, "wb") as handle:
        handle.write(struct.pack("<Q", 2**40))
        handle.truncate(1024 * 1024)
    result = header.read_header(path)
    assert result.error.kind == "HeaderTooLarge"
    assert result.bytes_read == 8


def test_a_length_beyond_the_file_is_refused_after_reading_eight_bytes(tmp_path):
    path = tmp_path / "adapter_model.safetensors"
    path.write_bytes(struct.pack("<Q", 5000) + b"{}")
    result = header.read_header(path)
    assert (result.error.kind, result.bytes_read) == ("InvalidHeaderLength", 8)


def test_a_caller_can_lower_the_header_cap(tmp_path):
    path = tmp_path / "adapter_model.safetensors"
    adapter_factory.write_safetensors(path, adapter_factory.lora_tensors(adapter_factory.TINY_LLAMA))
    result = header.read_header(path, max_header_bytes=64)
    assert (result.error.kind, result.bytes_read) == ("HeaderTooLarge", 8)


def test_a_truncated_download_is_refused(tmp_path):
    path = tmp_path / "adapter_model.safetensors"
    tensors = adapter_factory.lora_tensors(adapter_factory.TINY_LLAMA)
    head, data = adapter_factory.safetensors_bytes(tensors)
    adapter_factory.write_safetensors(path, tensors, size=len(head) + data - 100)
    result = header.read_header(path)
    assert result.error.kind == "MetadataIncompleteBuffer"
    assert result.bytes_read == len(head)
