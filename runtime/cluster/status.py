"""`loom cluster status`: the fleet as Redis sees it (workers, partition owners, epochs),
with the journal's view of what waits (due actors) beside it."""

from __future__ import annotations

import time
from typing import Any

import redis

from runtime.cluster.keys import ClusterKeys
from runtime.cluster.leases import PartitionLeases
from runtime.cluster.membership import Membership
from runtime.cluster.node import connect


def fleet_status(url: str, lease_ttl_ms: int, *, due: list[str] | None = None,
                 partitions_of: Any = None) -> dict[str, Any]:
    """Live workers (heartbeat age, version, partitions, in-flight turns), each partition's
    owner and lease epoch, and the partitions nobody holds."""
    client: redis.Redis = connect(url, lease_ttl_ms)
    keys = ClusterKeys()
    stored = client.get(keys.partitions)
    if stored is None:
        return {"fleet": False, "redis": url}
    count = int(stored)
    workers = Membership(client, ttl_ms=lease_ttl_ms, keys=keys).live_workers()
    states = PartitionLeases(client, ttl_ms=lease_ttl_ms, keys=keys).states(range(count))
    owners = {s.partition: {"worker": s.owner, "epoch": s.epoch, "lease_left_ms": s.ttl_ms}
              for s in states if s.owner is not None}
    out: dict[str, Any] = {
        "fleet": True, "redis": url, "partitions": count, "at": time.time(),
        "workers": [{"id": w.id, "host": w.host, "pid": w.pid, "version": w.version,
                     "heartbeat_age_ms": (lease_ttl_ms - w.ttl_ms) if w.ttl_ms is not None
                     else None, "partitions": len(w.partitions), "in_flight": w.in_flight}
                    for w in workers],
        "versions": sorted({w.version for w in workers}),
        "owners": owners,
        "unowned": [p for p in range(count) if p not in owners],
    }
    if due is not None and partitions_of is not None:
        lag: dict[int, int] = {}
        for key in due:
            p = partitions_of(key, count)
            lag[p] = lag.get(p, 0) + 1
        out["due_actors_per_partition"] = dict(sorted(lag.items()))
    client.close()
    return out
