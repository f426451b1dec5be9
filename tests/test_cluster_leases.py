"""Partition count and lease semantics against a real redis-server."""

from __future__ import annotations

import itertools
import time

import pytest
import redis

from runtime import errors
from runtime.cluster import (
    ClusterConfig,
    ClusterKeys,
    ClusterNode,
    ClusterNotInitialized,
    PartitionCountMismatch,
    PartitionLeases,
    WorkerInfo,
    ensure_partition_count,
    new_token,
)

TTL_MS = 300


def test_the_partition_count_is_set_once_and_a_different_one_is_refused(
        client: redis.Redis, keys: ClusterKeys) -> None:
    with pytest.raises(ClusterNotInitialized):
        ensure_partition_count(client, None, keys)  # nothing to join yet
    assert ensure_partition_count(client, 12, keys) == 12  # creates the cluster
    assert client.get(keys.partitions) == b"12"
    assert ensure_partition_count(client, 12, keys) == 12
    assert ensure_partition_count(client, None, keys) == 12  # joins with what is stored
    with pytest.raises(PartitionCountMismatch) as info:
        ensure_partition_count(client, 16, keys)
    assert (info.value.configured, info.value.stored) == (16, 12)
    assert isinstance(info.value, errors.SettingsInvalid) and "12" in str(info.value)
    with pytest.raises(PartitionCountMismatch):  # a whole worker is refused at construction
        ClusterNode(client, WorkerInfo("w"), ClusterConfig(16, prefix=keys.prefix))
    assert client.get(keys.partitions) == b"12"  # and changed nothing
    with pytest.raises(errors.SettingsInvalid):
        ensure_partition_count(client, 0, keys)


def test_acquire_renew_release(client: redis.Redis, keys: ClusterKeys) -> None:
    leases = PartitionLeases(client, ttl_ms=TTL_MS, keys=keys)
    a = leases.acquire(3, new_token("a"))
    assert a is not None and a.partition == 3 and a.owner == "a" and a.epoch > 0
    assert leases.acquire(3, new_token("b")) is None  # held
    assert client.get(keys.lease(3)) == a.token.encode()
    assert 0 < int(client.pttl(keys.lease(3))) <= TTL_MS
    time.sleep(0.2)
    assert leases.renew(a)
    assert int(client.pttl(keys.lease(3))) > 200  # extended by a full TTL from now
    time.sleep(0.2)  # 400 ms after the grant: alive only thanks to the renewal
    assert leases.acquire(3, new_token("b")) is None
    [state] = leases.states([3])
    assert (state.owner, state.epoch) == ("a", a.epoch) and state.ttl_ms is not None
    assert leases.release(a)
    assert client.exists(keys.lease(3)) == 0
    assert not leases.release(a) and not leases.renew(a)  # released: nothing to do
    assert leases.free([2, 3, 4]) == [2, 3, 4]
    b = leases.acquire(3, new_token("b"))
    assert b is not None and b.epoch > a.epoch
    assert leases.free([2, 3, 4]) == [2, 4]
    assert leases.holders([2, 3, 4]) == {2: None, 3: "b", 4: None}
    assert leases.renew_many([b, a]) == [True, False]


def test_epochs_strictly_increase_on_every_grant(client: redis.Redis, keys: ClusterKeys) -> None:
    for floor in (True, False):
        leases = PartitionLeases(client, ttl_ms=TTL_MS, keys=keys, epoch_floor=floor)
        epochs = []
        for i in range(30):
            lease = leases.acquire(7, new_token(f"w{i % 3}"))
            assert lease is not None
            epochs.append(lease.epoch)
            assert leases.acquire(7, new_token("x")) is None  # a refusal takes no epoch
            assert leases.release(lease)
        assert all(x < y for x, y in itertools.pairwise(epochs)), epochs
        assert int(client.get(keys.epoch(7)) or 0) == epochs[-1]
    # With the floor, an epoch is at least the Redis server's clock in ms.
    server_ms = int(client.time()[0]) * 1000
    fresh = PartitionLeases(client, ttl_ms=TTL_MS, keys=keys).acquire(8, new_token("a"))
    assert fresh is not None and fresh.epoch >= server_ms
    plain = PartitionLeases(client, ttl_ms=TTL_MS, keys=keys, epoch_floor=False)
    first = plain.acquire(9, new_token("a"))
    assert first is not None and first.epoch == 1


def test_a_lease_expires_when_renewals_stop_and_the_stale_holder_is_powerless(
        client: redis.Redis, keys: ClusterKeys) -> None:
    leases = PartitionLeases(client, ttl_ms=TTL_MS, keys=keys)
    a = leases.acquire(0, new_token("a"))
    assert a is not None
    time.sleep(TTL_MS / 1000 + 0.1)  # no renewals: Redis expires it
    assert leases.free([0]) == [0]
    assert not leases.renew(a)  # too late: renewing does not resurrect it
    assert client.exists(keys.lease(0)) == 0
    b = leases.acquire(0, new_token("b"))
    assert b is not None and b.epoch > a.epoch
    assert not leases.renew(a) and not leases.release(a)  # the stale holder can't touch b's
    assert client.get(keys.lease(0)) == b.token.encode()
    assert leases.renew(b) and leases.release(b)


def test_the_same_worker_gets_a_new_token_per_grant(client: redis.Redis,
                                                    keys: ClusterKeys) -> None:
    leases = PartitionLeases(client, ttl_ms=TTL_MS, keys=keys)
    old = leases.acquire(1, new_token("a"))
    assert old is not None and leases.release(old)
    new = leases.acquire(1, new_token("a"))
    assert new is not None and new.token != old.token
    assert not leases.release(old)  # a worker's earlier grant can't free its later one
    assert leases.release(new)
