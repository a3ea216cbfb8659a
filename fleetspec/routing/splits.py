"""Weighted version splits: a key's bucket (0..99) picks the version, the same on every router.

Buckets come from blake2b, never Python's `hash()` (salted per process), so a user keeps their
version across router restarts and replicas. Versions take consecutive bucket ranges in declared
order, so growing a canary from 5 % to 10 % only moves users into the canary, never out of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping

BUCKETS = 100


def bucket(key: str, salt: str = "") -> int:
    """0..99 for a key; the salt (the specialist's name) keeps splits of different specialists independent."""
    digest = hashlib.blake2b(f"{salt}\x00{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


@dataclasses.dataclass(frozen=True)
class Split:
    specialist: str
    ranges: tuple[tuple[int, str], ...]  # (exclusive upper bucket, version), ascending

    @classmethod
    def from_weights(cls, specialist: str, weights: Mapping[str, int]) -> Split:
        ranges, upper = [], 0
        for version, weight in weights.items():
            if weight <= 0:
                continue
            upper += weight
            ranges.append((upper, version))
        return cls(specialist, tuple(ranges))

    def pick(self, key: str) -> tuple[str | None, int]:
        """(version, bucket); version None when the weights cover none of the buckets."""
        where = bucket(key, self.specialist)
        for upper, version in self.ranges:
            if where < upper:
                return version, where
        # Weights that sum under 100 (an invalid file) leave the last version the remainder.
        return (self.ranges[-1][1] if self.ranges else None), where
