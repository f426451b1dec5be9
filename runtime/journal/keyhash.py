"""The stable hash of an actor key that places it in a partition, stored on its schedule row
so that a worker's due poll can ask the journal for its own partitions only.

The 64-bit hash (BLAKE2b-8, big-endian) is stored as two 32-bit halves: JSON numbers (Cosmos)
hold 2^53 at most, and SQLite integers are signed. The partition is hash % P, computed from
the halves as ((hi % P) * (2^32 % P) + lo % P) % P, which every store can evaluate (products
stay below 2^28 for P <= 16384).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from functools import lru_cache
from typing import NamedTuple


class Scope(NamedTuple):
    """The partitions a due poll is for: `held`, of `partitions` in all."""

    partitions: int
    held: Collection[int]


@lru_cache(maxsize=65536)
def key_hash(actor: str) -> tuple[int, int]:
    """(hi, lo): the two 32-bit halves of the actor key's 64-bit partition hash."""
    value = int.from_bytes(hashlib.blake2b(actor.encode(), digest_size=8).digest(), "big")
    return value >> 32, value & 0xFFFFFFFF


def partition_of_hash(hi: int, lo: int, count: int) -> int:
    return ((hi % count) * ((1 << 32) % count) + lo % count) % count


def in_scope(actor: str, scope: Scope | None) -> bool:
    return scope is None or partition_of_hash(*key_hash(actor), scope.partitions) in scope.held
