"""What PyTorch's CUDA caching allocator counts for a sequence of allocations (issue #18, item 5).

vLLM's "Model loading took X GiB" is `torch.cuda.max_memory_allocated()` after
`reset_peak_memory_stats()` (`CudaPlatform.get_current_memory_usage`, vllm/platforms/cuda.py of
0.7.3 and 0.10.1), taken before and after the model is built (`DeviceMemoryProfiler`). That figure
is the sum of the allocator's *block* sizes, not of the tensors' bytes: `malloc` adds `block->size`
to `stats.allocated_bytes` (c10/cuda/CUDACachingAllocator.cpp). A block can be larger than its
tensor: a request of 10 MiB or more gets a new segment rounded up to 2 MiB (`get_allocation_size`,
kRoundLarge), and a large-pool block is split only when more than 1 MiB would remain
(`should_split`: remaining > kSmallSize). So a 31.5 MiB tensor (Qwen2-7B's qkv_proj) holds a 32 MiB
block, while a 24.5 MiB one (its o_proj) is split out of a 26 MiB segment and holds 24.5 MiB.
Requests between 1 and 10 MiB are cut from 20 MiB segments (kLargeBuffer); requests of 1 MiB or
less come from the small pool in 2 MiB segments and are only rounded to 512 bytes (kMinBlockSize).
A freed block returns to its pool, merges with free neighbours of its segment, and is reused
best-fit (smallest free block that fits, `get_free_block`).

This module replays that for the large pool. Addresses are unknown here, so ties between free
blocks of one size go to the older segment, then the lower offset.

Two settings of `PYTORCH_CUDA_ALLOC_CONF` change the figure (`AllocatorConfig.parse`, after
`CUDAAllocatorConfig::parseArgs`, c10/cuda/CUDAAllocatorConfig.cpp of PyTorch 2.5-2.8):
- `roundup_power2_divisions`: `round_size` rounds a request up to the next of N equal divisions
  of its power-of-two interval (`roundup_power2_next_division`) when N > 1 and the request exceeds
  512 × N bytes; N is looked up per interval [2^k MiB, 2^(k+1) MiB), k = 0 (below 2 MiB) to 15
  (`CUDAAllocatorConfig::roundup_power2_divisions`). `[a:n,...]` sets interval log2(a) to n (the
  first pair fills the intervals below it too), `>:n` fills from the last interval named *onwards*,
  that interval included, and an interval no pair names stays 0 (no power-of-two rounding).
- `expandable_segments:True`: a segment is mapped as it grows and `should_split` splits every
  block whenever 512 bytes remain (`remaining >= kMinBlockSize`), so a block holds exactly its
  rounded request and the 2 MiB segment rounding leaves nothing behind.
Other keys (max_split_size_mb, garbage_collection_threshold, backend, pinned_*) are ignored here:
they do not change what the weights' blocks hold in a replay without frees of large blocks, or
are not modelled (cudaMallocAsync).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Iterable

# c10/cuda/CUDACachingAllocator.cpp (PyTorch 2.x)
MIN_BLOCK_SIZE = 512  # kMinBlockSize: every size is rounded up to 512 bytes
SMALL_SIZE = 1 << 20  # kSmallSize: largest "small" request, 1 MiB
SMALL_BUFFER = 2 << 20  # kSmallBuffer
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc: requests of 1-10 MiB share a 20 MiB segment
LARGE_BUFFER = 20 << 20  # kLargeBuffer
ROUND_LARGE = 2 << 20  # kRoundLarge: larger requests get a segment rounded up to 2 MiB


ROUNDUP_INTERVALS = 16  # kRoundUpPowerOfTwoIntervals: [1 MiB, 2 MiB) ... [32 GiB, 64 GiB)


@dataclasses.dataclass(frozen=True)
class AllocatorConfig:
    """The settings of PYTORCH_CUDA_ALLOC_CONF that change block sizes (defaults: PyTorch's)."""

    expandable_segments: bool = False
    roundup_power2_divisions: tuple[int, ...] = (0,) * ROUNDUP_INTERVALS

    @classmethod
    def parse(cls, conf: str | None) -> AllocatorConfig:
        """Read PYTORCH_CUDA_ALLOC_CONF as `CUDAAllocatorConfig::parseArgs` does (`lexArgs` splits at
        `,` `:` `[` `]` and drops spaces; later keys win). Unknown keys and malformed values are
        skipped here (PyTorch refuses them at the first CUDA allocation)."""
        if not conf:
            return cls()
        tokens = [t for t in re.split(r"([,:\[\]])", conf.replace(" ", "")) if t]
        expandable = False
        divisions = [0] * ROUNDUP_INTERVALS
        i = 0
        while i < len(tokens):
            key = tokens[i]
            if i + 2 < len(tokens) and tokens[i + 1] == ":" and key == "expandable_segments":
                expandable = tokens[i + 2] == "True"
                i += 3
            elif i + 2 < len(tokens) and tokens[i + 1] == ":" and key == "roundup_power2_divisions":
                i = _parse_divisions(tokens, i + 2, divisions)
            else:
                i += 1
        return cls(expandable, tuple(divisions))

    def divisions(self, size: int) -> int:
        """`CUDAAllocatorConfig::roundup_power2_divisions(size)`: the interval of log2(size) − 20,
        clamped to 0..15."""
        index = min(max(size.bit_length() - 1 - 20, 0), ROUNDUP_INTERVALS - 1)
        return self.roundup_power2_divisions[index]


DEFAULT = AllocatorConfig()


def _parse_divisions(tokens: list[str], i: int, divisions: list[int]) -> int:
    """`parseRoundUpPower2Divisions` from the value at tokens[i]; returns the index after it."""
    if tokens[i] != "[":  # the old form: one number for every interval
        if tokens[i].isdigit():
            divisions[:] = [int(tokens[i])] * ROUNDUP_INTERVALS
        return i + 1
    i += 1
    first, last_index = True, 0
    while i + 2 < len(tokens) and tokens[i] != "]":
        mib, value = tokens[i], tokens[i + 2]
        if tokens[i + 1] != ":" or not value.isdigit():
            break
        n = int(value)
        if mib == ">":
            divisions[last_index:] = [n] * (ROUNDUP_INTERVALS - last_index)  # from last_index, included
        elif mib.isdigit() and int(mib) > 0:
            index = min(int(mib).bit_length() - 1, ROUNDUP_INTERVALS - 1)
            if first:
                divisions[:index] = [n] * index
                first = False
            divisions[index] = n
            last_index = index
        i += 3
        if i < len(tokens) and tokens[i] == ",":
            i += 1
    while i < len(tokens) and tokens[i] != "]":
        i += 1
    return i + 1


def roundup_power2_next_division(size: int, divisions: int) -> int:
    """The next of `divisions` equal steps between the powers of two around `size`
    (`roundup_power2_next_division`, c10/cuda/CUDACachingAllocator.cpp): 1200 B in 4 divisions of
    [1024, 2048) is 1280 B."""
    if size <= 4 or divisions <= 1 or size & (size - 1) == 0:
        return size
    floor = 1 << (size.bit_length() - 1)
    step = floor >> (divisions.bit_length() - 1)
    if step == 0:
        return floor << 1
    rounded = size & ~(step - 1)
    return size if rounded == size else rounded + step


def round_size(size: int, config: AllocatorConfig = DEFAULT) -> int:
    """`round_size`: at least 512 bytes; with roundup_power2_divisions N > 1 for the size's interval
    and size > 512 × N, the next power-of-two division; else a multiple of 512 bytes."""
    if size < MIN_BLOCK_SIZE:
        return MIN_BLOCK_SIZE
    n = config.divisions(size)
    if n > 1 and size > MIN_BLOCK_SIZE * n:
        return roundup_power2_next_division(size, n)
    return -(-size // MIN_BLOCK_SIZE) * MIN_BLOCK_SIZE


def allocation_size(size: int) -> int:
    """The segment cudaMalloc'ed for a request no free block can hold (`get_allocation_size`)."""
    if size <= SMALL_SIZE:
        return SMALL_BUFFER
    if size < MIN_LARGE_ALLOC:
        return LARGE_BUFFER
    return -(-size // ROUND_LARGE) * ROUND_LARGE


@dataclasses.dataclass
class _Block:
    segment: int
    offset: int
    size: int
    allocated: bool = False


class CachingAllocator:
    """The large pool of one device's caching allocator; small requests are counted rounded."""

    def __init__(self, config: AllocatorConfig = DEFAULT) -> None:
        self.config = config
        self._segments: list[list[_Block]] = []
        self._live: dict[object, _Block | int] = {}
        self.allocated = 0  # what torch.cuda.memory_allocated() reports

    def malloc(self, key: object, size: int) -> None:
        size = round_size(size, self.config)
        # The small pool splits whenever 512 bytes remain, and so does every pool with expandable
        # segments (should_split): the block is exactly the rounded request.
        if size <= SMALL_SIZE or self.config.expandable_segments:
            self._live[key] = size
            self.allocated += size
            return
        free = [b for seg in self._segments for b in seg if not b.allocated and b.size >= size]
        if free:
            block = min(free, key=lambda b: (b.size, b.segment, b.offset))
        else:
            block = _Block(len(self._segments), 0, allocation_size(size))
            self._segments.append([block])
        if block.size - size > SMALL_SIZE:  # should_split (large pool)
            segment = self._segments[block.segment]
            rest = _Block(block.segment, block.offset + size, block.size - size)
            segment.insert(segment.index(block) + 1, rest)
            block.size = size
        block.allocated = True
        self._live[key] = block
        self.allocated += block.size

    def free(self, key: object) -> None:
        block = self._live.pop(key)
        if isinstance(block, int):
            self.allocated -= block
            return
        self.allocated -= block.size
        block.allocated = False
        segment = self._segments[block.segment]
        i = segment.index(block)
        if i + 1 < len(segment) and not segment[i + 1].allocated:  # merge with the next free block
            block.size += segment.pop(i + 1).size
        if i > 0 and not segment[i - 1].allocated:  # and with the previous one
            segment[i - 1].size += segment.pop(i).size


Event = tuple[str, object, int]  # ("alloc", key, bytes) or ("free", key, 0)


@functools.lru_cache(maxsize=256)
def _replay(events: tuple[Event, ...], config: AllocatorConfig) -> int:
    allocator = CachingAllocator(config)
    requested: dict[object, int] = {}
    for op, key, size in events:
        if op == "alloc":
            allocator.malloc(key, size)
            requested[key] = size
        else:
            allocator.free(key)
            requested.pop(key)
    return allocator.allocated - sum(requested.values())


def slack_bytes(events: Iterable[Event], config: AllocatorConfig = DEFAULT) -> int:
    """Bytes `torch.cuda.memory_allocated()` counts beyond the live tensors' own bytes after
    `events` (allocations and frees in program order) under `config` (PYTORCH_CUDA_ALLOC_CONF)."""
    return _replay(tuple(events), config)
