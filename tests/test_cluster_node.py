"""Workers (ClusterNode) on a real redis-server: heartbeats and balancing to a fair share."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

import pytest
import redis

from runtime.cluster import (
    ClusterConfig,
    ClusterKeys,
    ClusterNode,
    Lease,
    Membership,
    WorkerInfo,
)

TTL_MS = 400
P = 12


@pytest.fixture
def config() -> ClusterConfig:
    return ClusterConfig(P, lease_ttl_ms=TTL_MS, balance_every=0.05,
                         prefix=f"t{uuid.uuid4().hex[:12]}")


def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def counts(nodes: list[ClusterNode]) -> list[int]:
    return [len(n.owned()) for n in nodes]


def disjoint(nodes: list[ClusterNode]) -> bool:
    seen: list[int] = []
    for n in nodes:
        seen += list(n.owned())
    return len(seen) == len(set(seen))


def test_heartbeats_list_live_workers_and_expire(client: redis.Redis,
                                                 config: ClusterConfig) -> None:
    m = Membership(client, ttl_ms=300, keys=ClusterKeys(config.prefix))
    a = m.heartbeat(WorkerInfo("a", version="v1"), partitions=[3, 1], in_flight=2)
    m.heartbeat(WorkerInfo("b", host="h2", pid=42, version="v2"))
    live = m.live_workers()
    assert [w.id for w in live] == ["a", "b"]
    assert (live[0].partitions, live[0].in_flight, live[0].version) == ((1, 3), 2, "v1")
    assert live[0].started == a.started and live[0].ttl_ms is not None
    assert 0 < live[0].ttl_ms <= 300
    assert (live[1].host, live[1].pid) == ("h2", 42)
    m.leave("b")
    assert [w.id for w in m.live_workers()] == ["a"]
    time.sleep(0.2)
    m.heartbeat(a)  # refreshed: outlives its first TTL
    time.sleep(0.2)
    assert [w.id for w in m.live_workers()] == ["a"]
    time.sleep(0.35)  # no more heartbeats
    assert m.live_workers() == []


def test_three_workers_converge_to_4_4_4_then_6_6_when_one_leaves(
        client: redis.Redis, config: ClusterConfig) -> None:
    acquired: dict[str, list[Lease]] = {w: [] for w in "abc"}
    released: dict[str, list[Lease]] = {w: [] for w in "abc"}
    nodes = [ClusterNode(client, WorkerInfo(w, version="v1"), config,
                         on_acquired=acquired[w].append, on_release=released[w].append)
             for w in "abc"]
    try:
        for n in nodes:
            n.start()
        wait_for(lambda: sorted(counts(nodes)) == [4, 4, 4] and disjoint(nodes))
        time.sleep(3 * TTL_MS / 1000)  # and it stays so: no flapping, leases renewed
        assert sorted(counts(nodes)) == [4, 4, 4] and disjoint(nodes)
        live = nodes[0].membership.live_workers()
        assert [(w.id, len(w.partitions)) for w in live] == [("a", 4), ("b", 4), ("c", 4)]
        nodes[2].stop()  # graceful: releases its leases and leaves at once
        assert released["c"] and not nodes[2].owned()
        rest = nodes[:2]
        t0 = time.monotonic()
        wait_for(lambda: counts(rest) == [6, 6] and disjoint(rest))
        assert time.monotonic() - t0 < TTL_MS / 1000  # no waiting for expiries
        for n in rest:  # every partition a worker got was announced, with a fresh epoch
            assert set(n.owned().values()) <= set(acquired[n.worker.id])
    finally:
        for n in nodes:
            n.stop()


def test_a_crashed_workers_partitions_move_after_the_ttl(client: redis.Redis,
                                                         config: ClusterConfig) -> None:
    nodes = [ClusterNode(client, WorkerInfo(w), config) for w in "abc"]
    try:
        for n in nodes:
            n.start()
        wait_for(lambda: sorted(counts(nodes)) == [4, 4, 4] and disjoint(nodes))
        gone = dict(nodes[1].owned())
        nodes[1].stop(release=False)  # a crash: leases and heartbeat are left to expire
        rest = [nodes[0], nodes[2]]
        wait_for(lambda: counts(rest) == [6, 6] and disjoint(rest))
        for p, old in gone.items():
            new = next(n.owned()[p] for n in rest if p in n.owned())
            assert new.epoch > old.epoch and new.owner != "b"
    finally:
        for n in nodes:
            n.stop()


def test_drain_hands_everything_over(client: redis.Redis, config: ClusterConfig) -> None:
    a = ClusterNode(client, WorkerInfo("a"), config)
    b = ClusterNode(client, WorkerInfo("b"), config)
    try:
        a.tick()
        assert len(a.owned()) == P  # alone: everything
        b.tick()
        assert b.owned() == {}  # nothing free yet; b never steals
        a.tick()  # a now sees b and gives up its surplus
        assert len(a.owned()) == 6
        b.tick()
        assert len(b.owned()) == 6
        a.drain()
        assert a.owned() == {}
        b.tick()
        b.tick()  # a's heartbeat is still live: b's share stays 6 until a leaves
        a.stop()
        b.tick()
        assert len(b.owned()) == P
    finally:
        a.stop()
        b.stop()
