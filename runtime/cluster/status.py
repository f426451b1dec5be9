"""`loom cluster status`: the fleet as Redis sees it (workers, partition owners, epochs,
fleet-wide limits, open breakers), with the journal's view beside it (due actors per
partition, runs per code version and those no live worker can resume, dead letters)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis

from runtime.cluster.keys import ClusterKeys
from runtime.cluster.leases import PartitionLeases
from runtime.cluster.membership import Membership, WorkerInfo
from runtime.cluster.node import connect
from runtime.cluster.partitions import partition_of


@dataclass
class JournalView:
    """What the journal says, read by the caller (the journal API is async)."""

    due: list[str] = field(default_factory=list)
    run_versions: dict[str, int] = field(default_factory=dict)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)


async def read_journal_view(journal: Any, *, limit: int = 10_000) -> JournalView:
    """The journal's part of the status (`journal` is a JournalStore)."""
    return JournalView(due=await journal.due_actors(time.time(), limit),
                       run_versions=await journal.run_versions(),
                       dead_letters=await journal.dead_letters(limit))


def fleet_status(url: str, lease_ttl_ms: int, journal: JournalView | None = None, *,
                 limits: Any = None, breaker_url: str | None = None,
                 breaker_prefix: str = "loom:breaker") -> dict[str, Any]:
    """Live workers (heartbeat age, version, partitions, in-flight turns), each partition's
    owner and lease epoch, the partitions nobody holds, and (given them) limits in use,
    breakers not closed, and the journal's view."""
    client: redis.Redis = connect(url, lease_ttl_ms)
    try:
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
            "workers": [_worker(w, lease_ttl_ms) for w in workers],
            "versions": sorted({w.version for w in workers}),
            "owners": owners,
            "unowned": [p for p in range(count) if p not in owners],
        }
        if journal is not None:
            out.update(_journal_part(journal, workers, count))
        if limits is not None:
            out["limits"] = limits.usage()
        if breaker_url is not None:  # breakers shared through Redis (LOOM_BREAKER_URL)
            other = connect(breaker_url, lease_ttl_ms) if breaker_url != url else client
            try:
                out["breakers_not_closed"] = _breakers(other, breaker_prefix)
            finally:
                if other is not client:
                    other.close()
        return out
    finally:
        client.close()


def _worker(w: WorkerInfo, lease_ttl_ms: int) -> dict[str, Any]:
    return {"id": w.id, "host": w.host, "pid": w.pid, "version": w.version,
            "compatible": list(w.compatible),
            "heartbeat_age_ms": (lease_ttl_ms - w.ttl_ms) if w.ttl_ms is not None else None,
            "partitions": len(w.partitions), "in_flight": w.in_flight}


def _journal_part(view: JournalView, workers: list[WorkerInfo], count: int) -> dict[str, Any]:
    lag: dict[int, int] = {}
    for key in view.due:
        p = partition_of(key, count)
        lag[p] = lag.get(p, 0) + 1
    by_version = {v: {"runs": n, "resumed_by": [w.id for w in workers if v in w.resumes]}
                  for v, n in sorted(view.run_versions.items())}
    return {
        "due_actors_per_partition": dict(sorted(lag.items())),
        "runs_by_version": by_version,
        "stranded_versions": [v for v, d in by_version.items() if not d["resumed_by"]],
        "dead_letters": {"count": len(view.dead_letters), "latest": [
            {"actor": d.get("actor"), "msg": d.get("msg"), "deliveries": d.get("deliveries"),
             "error": (d.get("error") or {}).get("message")}
            for d in view.dead_letters[-5:]]},
    }


def _breakers(client: redis.Redis, prefix: str) -> dict[str, str]:
    """Breakers shared through this Redis (pybreaker's keys) whose state is not closed."""
    out: dict[str, str] = {}
    suffix = ":pybreaker:state"
    for raw in client.scan_iter(match=f"{prefix}:*{suffix}", count=500):
        key = raw.decode() if isinstance(raw, bytes) else str(raw)
        state = client.get(key)
        text = state.decode() if isinstance(state, bytes) else str(state)
        if state is not None and text != "closed":
            out[key[len(prefix) + 1:-len(suffix)]] = text
    return dict(sorted(out.items()))
