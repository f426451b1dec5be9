"""The fixed partition count P of a cluster, and which partition an actor belongs to.

P is chosen when the cluster is created and stored in Redis (`SET ... NX`): every worker
must agree on it, since `partition_of` moves almost every actor when P changes. A worker
configured with another P is refused with `PartitionCountMismatch`.
"""

from __future__ import annotations

import redis

from runtime import errors
from runtime.cluster.keys import ClusterKeys
from runtime.journal.keyhash import key_hash, partition_of_hash

MAX_PARTITIONS = 16384  # one Redis Cluster slot each, at most


class PartitionCountMismatch(errors.SettingsInvalid):
    """This worker is configured with a partition count other than the cluster's."""

    def __init__(self, configured: int, stored: int, key: str) -> None:
        super().__init__(
            f"this worker is configured with {configured} partitions but the cluster has "
            f"{stored} (stored in Redis at {key!r}); the partition count is fixed when the "
            f"cluster is created: configure {stored}, or use a new cluster prefix")
        self.configured = configured
        self.stored = stored


class ClusterNotInitialized(errors.SettingsInvalid):
    """No partition count is stored yet and this worker was not given one."""


def partition_of(actor_key: str, partitions: int) -> int:
    """The partition of `actor_key` ("type/id"): a stable hash (BLAKE2b, the same in every
    process and Python version, unlike `hash()`), modulo P."""
    if partitions < 1:
        raise ValueError(f"the partition count is >= 1, not {partitions}")
    return partition_of_hash(*key_hash(actor_key), partitions)


def check_count(partitions: int) -> int:
    if isinstance(partitions, bool) or not isinstance(partitions, int) \
            or not 1 <= partitions <= MAX_PARTITIONS:
        raise errors.SettingsInvalid(
            f"the partition count must be an integer from 1 to {MAX_PARTITIONS}, "
            f"not {partitions!r}")
    return partitions


def ensure_partition_count(client: redis.Redis, configured: int | None,
                           keys: ClusterKeys | None = None) -> int:
    """The cluster's partition count. Stores `configured` if none is stored yet (the first
    worker creates the cluster); raises `PartitionCountMismatch` if another is stored, or
    `ClusterNotInitialized` if none is stored and `configured` is None."""
    keys = keys or ClusterKeys()
    if configured is not None:
        check_count(configured)
    raw: bytes | None = None
    for _ in range(3):  # a wipe between SET NX and GET leaves nothing to read: set it again
        if configured is not None:
            client.set(keys.partitions, configured, nx=True)
        raw = client.get(keys.partitions)  # type: ignore[assignment]
        if raw is not None or configured is None:
            break
    if raw is None:
        raise ClusterNotInitialized(
            f"no partition count is stored at {keys.partitions!r}: start a worker with an "
            f"explicit partition count to create the cluster")
    stored = int(raw)
    if configured is not None and stored != configured:
        raise PartitionCountMismatch(configured, stored, keys.partitions)
    return stored
