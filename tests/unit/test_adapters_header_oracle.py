"""The safetensors library itself as the oracle: our header verdicts and vLLM-facing words match its own."""

from __future__ import annotations

import struct
import tempfile

import adapter_factory
import pytest
import safetensors  # in the `test` extra: missing it is a broken environment, never a skip
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetspec.adapters import header

PREFIX = "Error while deserializing header: "


def library_verdict(data: bytes) -> str | None:
    """safetensors' refusal text for these file bytes, or None when it accepts the header."""
    with tempfile.NamedTemporaryFile(suffix=".safetensors") as handle:
        handle.write(data)
        handle.flush()
        try:
            with safetensors.safe_open(handle.name, framework="numpy"):
                return None
        except safetensors.SafetensorError as error:
            return str(error)
        except ModuleNotFoundError:
            return None  # header accepted; only building tensors needs numpy


def our_verdict(data: bytes) -> str | None:
    try:
        header.parse_safetensors_header(data, file_size=len(data))
    except header.HeaderError as error:
        return PREFIX + error.library_text
    return None


def valid_file() -> bytes:
    head, size = adapter_factory.safetensors_bytes(adapter_factory.lora_tensors(adapter_factory.TINY_LLAMA, 2, ("q_proj",)))
    return head + bytes(size)


def agree(data: bytes) -> None:
    ours, theirs = our_verdict(data), library_verdict(data)
    assert (ours is None) == (theirs is None), (ours, theirs)
    if ours is not None and "invalid JSON" not in ours:  # serde_json's own wording is not reproduced
        assert ours == theirs


@pytest.mark.parametrize("mutate", [
    lambda b: b,
    lambda b: b[:-1],
    lambda b: b + b"\0",
    lambda b: b[:7],
    lambda b: struct.pack("<Q", 100_000_001) + b[8:],
    lambda b: struct.pack("<Q", len(b)) + b[8:],
    lambda b: b[:8] + b"[" + b[9:],
    lambda b: b[:9] + b"\xff" + b[10:],
    lambda b: b.replace(b'"data_offsets":[0,', b'"data_offsets":[2,', 1),
    lambda b: b.replace(b'"shape":[2,64]', b'"shape":[3,64]', 1),
    lambda b: b.replace(b'"BF16"', b'"F32" ', 1),
])
def test_verdicts_match_the_safetensors_library(mutate):
    agree(mutate(valid_file()))


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_files_get_the_libraries_verdict(data):
    original = valid_file()
    position = data.draw(st.integers(0, len(original) - 1))
    kind = data.draw(st.sampled_from(["flip", "truncate", "append", "digit"]))
    if kind == "flip":
        mutated = original[:position] + bytes([original[position] ^ data.draw(st.integers(1, 255))]) + original[position + 1:]
    elif kind == "truncate":
        mutated = original[:position]
    elif kind == "append":
        mutated = original + bytes(data.draw(st.integers(1, 64)))
    else:  # change one ASCII digit of the header: shapes and offsets go out of step
        digits = [i for i, c in enumerate(original[8:600], 8) if chr(c).isdigit()]
        at = data.draw(st.sampled_from(digits))
        mutated = original[:at] + str((int(chr(original[at])) + 1) % 10).encode() + original[at + 1:]
    agree(mutated)
