"""The lease keeper against a real redis-server: renewals on its own thread, loss reports,
contention between two keepers, and a Redis wipe."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

import redis
from servers import RedisServer

from runtime.cluster import (
    ClusterConfig,
    ClusterKeys,
    ClusterNode,
    Lease,
    LeaseKeeper,
    PartitionLeases,
    WorkerInfo,
    new_token,
)

TTL_MS = 300


def wait_for(cond: Callable[[], bool], timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


class Lost:
    def __init__(self) -> None:
        self.reports: list[tuple[Lease, str]] = []
        self.lock = threading.Lock()

    def __call__(self, lease: Lease, reason: str) -> None:
        with self.lock:
            self.reports.append((lease, reason))

    @property
    def partitions(self) -> list[int]:
        with self.lock:
            return [lease.partition for lease, _ in self.reports]


def test_the_keeper_holds_leases_well_past_their_ttl(client: redis.Redis,
                                                     keys: ClusterKeys) -> None:
    leases = PartitionLeases(client, ttl_ms=TTL_MS, keys=keys)
    lost = Lost()
    keeper = LeaseKeeper(leases, "a", on_lost=lost).start()
    try:
        got = [keeper.acquire(p) for p in range(3)]
        assert all(got)
        assert keeper.acquire(0) == got[0]  # already ours: same grant
        time.sleep(1.0)  # > 3 TTLs
        assert lost.reports == []
        assert sorted(keeper.held()) == [0, 1, 2]
        assert all(keeper.holds(p) == got[p] for p in range(3))
        other = LeaseKeeper(leases, "b")
        assert other.acquire(1) is None
        assert keeper.release(1) and keeper.holds(1) is None and not keeper.release(1)
        assert other.acquire(1) is not None
    finally:
        keeper.stop()
    assert lost.reports == []  # stopping with release is not a loss
    assert leases.free([0, 2]) == [0, 2]


def test_a_paused_keeper_loses_its_lease_reports_it_and_never_renews_it(
        client: redis.Redis, keys: ClusterKeys) -> None:
    leases = PartitionLeases(client, ttl_ms=TTL_MS, keys=keys)
    pause, paused = threading.Event(), threading.Event()

    def before_round() -> None:  # stands in for a GC pause, a SIGSTOP, a GIL-holding call
        if pause.is_set():
            paused.set()
            time.sleep(0.6)  # twice the TTL
            pause.clear()

    lost = Lost()
    a = LeaseKeeper(leases, "a", on_lost=lost, before_round=before_round).start()
    b = LeaseKeeper(leases, "b").start()
    try:
        mine = a.acquire(5)
        assert mine is not None
        pause.set()
        assert paused.wait(2)
        wait_for(lambda: leases.free([5]) == [5])  # expired in Redis during the pause
        theirs = b.acquire(5)
        assert theirs is not None and theirs.epoch > mine.epoch
        assert a.holds(5) is None  # locally past its deadline, even before the thread runs
        wait_for(lambda: lost.partitions == [5])
        assert "deadline" in lost.reports[0][1] and lost.reports[0][0] == mine
        assert a.held() == {}
        ttl_before = int(client.pttl(keys.lease(5)))
        assert ttl_before > 0
        time.sleep(0.25)  # a few rounds of both: a must not touch b's lease
        assert client.get(keys.lease(5)) == theirs.token.encode() and b.holds(5) == theirs
        assert not leases.renew(mine) and not leases.release(mine)
        a.stop()
        assert client.get(keys.lease(5)) == theirs.token.encode()  # a's stop leaves b's be
    finally:
        a.stop()
        b.stop()


def test_past_its_deadline_the_keeper_gives_up_a_lease_redis_still_has(
        client: redis.Redis, keys: ClusterKeys) -> None:
    """The local deadline (send time + TTL - margin) ends ownership even when Redis would
    still accept a renewal: the worker may have acted as owner without knowing it was late."""
    now = [100.0]
    lost = Lost()
    leases = PartitionLeases(client, ttl_ms=10_000, keys=keys)
    keeper = LeaseKeeper(leases, "a", on_lost=lost, clock=lambda: now[0])
    lease = keeper.acquire(0)
    assert lease is not None and keeper.holds(0) == lease
    now[0] += 8.9  # within TTL (10 s) minus margin (1 s)
    keeper.renew_round()
    assert keeper.holds(0) == lease and lost.reports == []
    now[0] += 8.8  # renewed at 108.9: deadline 117.9
    assert keeper.holds(0) == lease
    now[0] += 0.2  # 118.0: past the deadline; Redis still has the key (it has 10 s)
    assert keeper.holds(0) is None
    assert client.get(keys.lease(0)) == lease.token.encode()
    keeper.renew_round()
    assert lost.partitions == [0] and keeper.held() == {}
    assert client.exists(keys.lease(0)) == 0  # deleted (compare-and-set), not renewed


def test_a_renewal_that_finds_another_token_reports_the_loss(client: redis.Redis,
                                                             keys: ClusterKeys) -> None:
    leases = PartitionLeases(client, ttl_ms=5000, keys=keys)
    lost = Lost()
    keeper = LeaseKeeper(leases, "a", on_lost=lost)
    lease = keeper.acquire(2)
    assert lease is not None
    client.set(keys.lease(2), new_token("intruder"), px=5000)  # e.g. after a failover
    keeper.renew_round()
    assert lost.partitions == [2] and "another" in lost.reports[0][1]
    assert client.get(keys.lease(2)) != lease.token.encode()
    assert keeper.held() == {}


def test_two_keepers_contend_and_never_both_hold_a_partition(client: redis.Redis,
                                                             keys: ClusterKeys) -> None:
    partitions = 4
    leases = PartitionLeases(client, ttl_ms=TTL_MS, keys=keys)
    rng = random.Random(3)
    stop = threading.Event()
    grants: dict[int, list[int]] = {p: [] for p in range(partitions)}
    grants_lock = threading.Lock()

    def pauser() -> None:  # now and then a keeper stalls past the TTL: leases move
        if rng.random() < 0.15:
            time.sleep(0.4)

    keepers = [LeaseKeeper(leases, w, before_round=pauser) for w in ("a", "b")]

    def grab(keeper: LeaseKeeper) -> None:
        while not stop.is_set():
            for p in range(partitions):
                if keeper.holds(p) is None:
                    lease = keeper.acquire(p)
                    if lease is None and p in keeper.held() and keeper.holds(p) is None:
                        continue  # our own late lease: the keeper thread will drop it
                    if lease is not None and keeper.holds(p) is lease:
                        with grants_lock:
                            grants[p].append(lease.epoch)
            time.sleep(0.01)

    for k in keepers:
        k.start()
    threads = [threading.Thread(target=grab, args=(k,), daemon=True) for k in keepers]
    for t in threads:
        t.start()
    samples = checked = 0
    try:
        t_end = time.monotonic() + 2.5
        while time.monotonic() < t_end:
            before = [{p: k.holds(p) for p in range(partitions)} for k in keepers]
            truth = [client.get(keys.lease(p)) for p in range(partitions)]
            after = [{p: k.holds(p) for p in range(partitions)} for k in keepers]
            for p in range(partitions):
                # a keeper that held the same grant before and after held it throughout
                throughout = [b[p] for b, a in zip(before, after, strict=True)
                              if b[p] is not None and a[p] is b[p]]
                assert len(throughout) <= 1, (p, throughout)
                if throughout:
                    assert truth[p] == throughout[0].token.encode()  # Redis agrees
                    checked += 1
            samples += 1
            time.sleep(0.002)
    finally:
        stop.set()
        for t in threads:
            t.join(2)
        for k in keepers:
            k.stop()
    assert samples > 200 and checked > 100
    moves = sum(len(set(e)) for e in grants.values())
    assert moves > partitions, grants  # leases did change hands
    for epochs in grants.values():
        assert len(epochs) == len(set(epochs))  # no epoch granted twice


def test_a_redis_wipe_is_reported_and_leases_come_back_with_higher_epochs() -> None:
    with RedisServer() as server:  # its own server: FLUSHALL must not hit other tests
        client = redis.Redis.from_url(server.url)
        lost = Lost()
        acquired: list[Lease] = []
        node = ClusterNode(client, WorkerInfo("a", version="v1"),
                           ClusterConfig(4, lease_ttl_ms=TTL_MS, balance_every=0.05),
                           on_lost=lost, on_acquired=acquired.append).start()
        try:
            wait_for(lambda: len(node.owned()) == 4)
            before = dict(node.owned())
            client.flushall()
            wait_for(lambda: sorted(lost.partitions) == [0, 1, 2, 3])
            wait_for(lambda: len(node.owned()) == 4
                     and all(node.owned()[p] != before[p] for p in range(4)))
            after = node.owned()
            for p in range(4):
                assert after[p].epoch > before[p].epoch  # the time floor survives the wipe
            assert client.get("loom:cluster:partitions") == b"4"  # stored again
            assert [w.id for w in node.membership.live_workers()] == ["a"]
            assert len(acquired) == 8
        finally:
            node.stop()
            client.close()
