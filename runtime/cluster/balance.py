"""Fair share of partitions per live worker, and the moves that get there.

Pure functions of their inputs (no Redis, no clock), so every decision is unit-testable.
Workers only ever take free partitions and give up their own surplus; nobody steals a
held lease. Which partitions a worker prefers is rendezvous hashing (BLAKE2b of
worker id and partition): different workers reach for different free partitions first,
and a worker keeps the partitions it prefers most when it gives some up.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass


def fair_share(live_workers: Iterable[str], partitions: int) -> dict[str, int]:
    """Each live worker's target: P // n, and one more for the first P % n ids in sorted
    order. The targets add up to P."""
    ids = sorted(set(live_workers))
    if not ids:
        return {}
    base, extra = divmod(partitions, len(ids))
    return {w: base + (1 if i < extra else 0) for i, w in enumerate(ids)}


def preference(worker_id: str, partition: int) -> int:
    """How much `worker_id` wants `partition` (rendezvous hash; higher is preferred)."""
    digest = hashlib.blake2b(f"{worker_id}\x00{partition}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


@dataclass(frozen=True)
class Plan:
    target: int
    acquire: tuple[int, ...]
    """Free partitions to try to take, most preferred first (a try may lose a race)."""
    release: tuple[int, ...]
    """Held partitions to hand over gracefully, least preferred first."""


@dataclass(frozen=True)
class Balancer:
    partitions: int
    max_acquire: int | None = None
    """At most this many acquisitions per round (None: the whole deficit at once)."""
    max_release: int | None = None
    """At most this many releases per round (None: the whole surplus at once)."""

    def plan(self, my_id: str, held: Collection[int], live: Iterable[str],
             free_partitions: Iterable[int]) -> Plan:
        """What `my_id` should do now, holding `held`, with `live` workers (my_id counts as
        live even if its heartbeat is missing) and `free_partitions` unheld."""
        target = fair_share({*live, my_id}, self.partitions)[my_id]
        mine = sorted(set(held), key=lambda p: (preference(my_id, p), p))
        if len(mine) > target:
            surplus = mine[: len(mine) - target]
            if self.max_release is not None:
                surplus = surplus[: self.max_release]
            return Plan(target, (), tuple(surplus))
        want = target - len(mine)
        if self.max_acquire is not None:
            want = min(want, self.max_acquire)
        candidates = sorted(set(free_partitions) - set(mine),
                            key=lambda p: (-preference(my_id, p), p))
        return Plan(target, tuple(candidates[:want]), ())
