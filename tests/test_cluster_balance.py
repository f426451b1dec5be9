"""Partitioning, key layout and the balancer's decisions: pure functions, no Redis."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
from redis.crc import key_slot

from runtime import errors
from runtime.cluster import Balancer, ClusterKeys, fair_share, partition_of
from runtime.cluster.partitions import check_count


def test_partition_of_is_stable_across_processes_and_spreads() -> None:
    # Pinned values: a hash that changed (or Python's randomised hash()) would move actors.
    assert [partition_of(f"counter/{i}", 12) for i in range(6)] == PINNED
    code = ("from runtime.cluster import partition_of;"
            "print([partition_of(f'counter/{i}', 12) for i in range(6)])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONHASHSEED": "123", "PYTHONPATH": "."}, check=True)
    assert out.stdout.strip() == str(PINNED)
    counts = [0] * 16
    for i in range(16_000):
        counts[partition_of(f"order/{i}", 16)] += 1
    assert min(counts) > 850 and max(counts) < 1150  # ~1000 each
    with pytest.raises(ValueError):
        partition_of("a/b", 0)


PINNED = [5, 5, 8, 4, 0, 1]


def test_partition_count_is_validated() -> None:
    assert check_count(12) == 12
    for bad in (0, -1, 16385, True, 2.0):
        with pytest.raises(errors.SettingsInvalid):
            check_count(bad)  # type: ignore[arg-type]


def test_every_key_of_a_partition_is_in_one_cluster_slot() -> None:
    keys = ClusterKeys("loom")
    assert keys.lease(17) == "loom:{p17}:lease" and keys.epoch(17) == "loom:{p17}:epoch"
    slots_seen = set()
    for p in range(256):
        names = [keys.lease(p), keys.epoch(p), keys.key(p, "stream"), keys.key(p, "timers")]
        slots = {key_slot(n.encode()) for n in names}
        assert len(slots) == 1, (p, names, slots)
        assert slots == {key_slot(ClusterKeys.tag(p).encode())}
        slots_seen |= slots
    assert len(slots_seen) > 200  # partitions spread over the cluster's slots
    for bad in ("", "a{b}"):
        with pytest.raises(ValueError):
            ClusterKeys(bad)


def test_fair_share_is_ceil_and_floor_and_adds_up() -> None:
    assert fair_share(["a", "b", "c"], 12) == {"a": 4, "b": 4, "c": 4}
    assert fair_share(["c", "b", "a"], 10) == {"a": 4, "b": 3, "c": 3}
    assert fair_share(["b", "a"], 12) == {"a": 6, "b": 6}
    assert fair_share([], 12) == {}
    assert fair_share(["a", "a"], 3) == {"a": 3}
    for n in range(1, 20):
        share = fair_share([f"w{i}" for i in range(n)], 64)
        assert sum(share.values()) == 64 and max(share.values()) - min(share.values()) <= 1


def test_plan_takes_free_partitions_up_to_the_target_and_gives_up_the_surplus() -> None:
    b = Balancer(12)
    plan = b.plan("a", held=set(), live=["a", "b", "c"], free_partitions=range(12))
    assert plan.target == 4 and len(plan.acquire) == 4 and plan.release == ()
    assert plan == b.plan("a", held=set(), live=["c", "b", "a"], free_partitions=range(12))
    other = b.plan("b", held=set(), live=["a", "b", "c"], free_partitions=range(12))
    assert set(other.acquire) != set(plan.acquire)  # different preferences: fewer races
    surplus = b.plan("a", held=set(range(12)), live=["a", "b"], free_partitions=[])
    assert surplus.target == 6 and len(surplus.release) == 6 and surplus.acquire == ()
    kept = set(range(12)) - set(surplus.release)
    # the worker keeps what it prefers most: the ones it would take first from all free
    assert kept == set(b.plan("a", set(), ["a", "b"], range(12)).acquire)
    assert b.plan("a", held={1}, live=["b"], free_partitions=[]).target == 6  # self is live
    assert b.plan("a", held=set(), live=["a"], free_partitions=[3]).acquire == (3,)
    capped = Balancer(12, max_acquire=1, max_release=2)
    assert len(capped.plan("a", set(), ["a"], range(12)).acquire) == 1
    assert len(capped.plan("a", set(range(12)), ["a", "b"], []).release) == 2


def simulate(workers: list[str], owner: dict[int, str], partitions: int,
             rng: random.Random, rounds: int = 50) -> dict[str, int]:
    """Workers take turns in a random order applying their plans; a take succeeds only if
    the partition is still free (as a lease would)."""
    b = Balancer(partitions)
    for _ in range(rounds):
        for w in rng.sample(workers, len(workers)):
            held = {p for p, o in owner.items() if o == w}
            free = [p for p in range(partitions) if p not in owner]
            plan = b.plan(w, held, workers, free)
            for p in plan.release:
                del owner[p]
            for p in plan.acquire:
                owner.setdefault(p, w)
    return {w: sum(1 for o in owner.values() if o == w) for w in workers}


def test_plans_converge_to_the_fair_share() -> None:
    rng = random.Random(7)
    owner: dict[int, str] = {}
    assert simulate(["a", "b", "c"], owner, 12, rng) == {"a": 4, "b": 4, "c": 4}
    owner = {p: o for p, o in owner.items() if o != "c"}  # c leaves (or dies)
    assert simulate(["a", "b"], owner, 12, rng) == {"a": 6, "b": 6}
    assert simulate(["a", "b", "d", "e", "f"], owner, 12, rng) == {
        "a": 3, "b": 3, "d": 2, "e": 2, "f": 2}
    owner = {p: "a" for p in range(12)}  # one worker had everything
    assert simulate(["a", "b", "c"], owner, 12, rng) == {"a": 4, "b": 4, "c": 4}
