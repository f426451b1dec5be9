"""Redis key names of a Loom cluster.

Every key of one partition carries the same hash tag, `{p<N>}`, so a Lua script or a
MULTI touching several of them lands on one Redis Cluster slot (no CROSSSLOT):

    loom:cluster:partitions      the partition count P, set once (SET NX)
    loom:{p17}:lease             the lease of partition 17: the holder's token, PX ttl
    loom:{p17}:epoch             the fencing epoch counter of partition 17
    loom:worker:<id>             a worker's heartbeat (JSON), PX ttl

Later per-partition keys (the inbox stream, timers) go under the same tag: `key(p, "stream")`.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PREFIX = "loom"


@dataclass(frozen=True)
class ClusterKeys:
    """Key names under one prefix (tests use a unique prefix per test)."""

    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not self.prefix or any(c in self.prefix for c in "{}"):
            raise ValueError(f"a cluster key prefix must be non-empty, without braces: "
                             f"{self.prefix!r}")

    @property
    def partitions(self) -> str:
        return f"{self.prefix}:cluster:partitions"

    @staticmethod
    def tag(partition: int) -> str:
        """The hash tag shared by every key of `partition`."""
        return f"{{p{partition}}}"

    def key(self, partition: int, name: str) -> str:
        """`<prefix>:{p<N>}:<name>`: any key of a partition."""
        if partition < 0:
            raise ValueError(f"a partition number is >= 0, not {partition}")
        return f"{self.prefix}:{self.tag(partition)}:{name}"

    def lease(self, partition: int) -> str:
        return self.key(partition, "lease")

    def epoch(self, partition: int) -> str:
        return self.key(partition, "epoch")

    def worker(self, worker_id: str) -> str:
        return f"{self.prefix}:worker:{worker_id}"

    @property
    def worker_pattern(self) -> str:
        """SCAN MATCH pattern of every worker's heartbeat key."""
        return f"{self.prefix}:worker:*"
