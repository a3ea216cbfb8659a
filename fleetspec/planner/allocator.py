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

This module replays that for the large pool (the defaults: no `expandable_segments`, no
`max_split_size_mb`). Addresses are unknown here, so ties between free blocks of one size go to the
older segment, then the lower offset.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable

# c10/cuda/CUDACachingAllocator.cpp (PyTorch 2.x)
MIN_BLOCK_SIZE = 512  # kMinBlockSize: every size is rounded up to 512 bytes
SMALL_SIZE = 1 << 20  # kSmallSize: largest "small" request, 1 MiB
SMALL_BUFFER = 2 << 20  # kSmallBuffer
MIN_LARGE_ALLOC = 10 << 20  # kMinLargeAlloc: requests of 1-10 MiB share a 20 MiB segment
LARGE_BUFFER = 20 << 20  # kLargeBuffer
ROUND_LARGE = 2 << 20  # kRoundLarge: larger requests get a segment rounded up to 2 MiB


def round_size(size: int) -> int:
    """`round_size` without roundup_power2_divisions: a multiple of 512 bytes, at least 512."""
    return max(MIN_BLOCK_SIZE, -(-size // MIN_BLOCK_SIZE) * MIN_BLOCK_SIZE)


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

    def __init__(self) -> None:
        self._segments: list[list[_Block]] = []
        self._live: dict[object, _Block | int] = {}
        self.allocated = 0  # what torch.cuda.memory_allocated() reports

    def malloc(self, key: object, size: int) -> None:
        size = round_size(size)
        if size <= SMALL_SIZE:  # small pool: split whenever 512 bytes remain, so exact
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
def _replay(events: tuple[Event, ...]) -> int:
    allocator = CachingAllocator()
    requested: dict[object, int] = {}
    for op, key, size in events:
        if op == "alloc":
            allocator.malloc(key, size)
            requested[key] = size
        else:
            allocator.free(key)
            requested.pop(key)
    return allocator.allocated - sum(requested.values())


def slack_bytes(events: Iterable[Event]) -> int:
    """Bytes `torch.cuda.memory_allocated()` counts beyond the live tensors' own bytes after
    `events` (allocations and frees in program order)."""
    return _replay(tuple(events))
