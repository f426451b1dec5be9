"""Worker heartbeats: each worker keeps `loom:worker:<id>` alive (JSON, PX ttl) and anyone
can list the live ones. A worker that stops heartbeating drops out after the TTL, on the
Redis server's clock."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

import redis

from runtime.cluster.keys import ClusterKeys


@dataclass(frozen=True)
class WorkerInfo:
    """What a worker says about itself in its heartbeat."""

    id: str
    host: str = field(default_factory=socket.gethostname)
    pid: int = field(default_factory=os.getpid)
    version: str = ""
    compatible: tuple[str, ...] = ()
    """Older code versions whose runs this worker may resume, besides its own."""
    started: float = field(default_factory=time.time)  # wall clock, for display only
    partitions: tuple[int, ...] = ()
    in_flight: int = 0
    ttl_ms: int | None = None
    """Read back only: how long the heartbeat has left in Redis (heartbeat age = TTL minus
    this, without comparing clocks)."""

    @property
    def resumes(self) -> frozenset[str]:
        """Every version whose runs this worker may resume."""
        return frozenset({self.version, *self.compatible})

    def to_json(self) -> str:
        return json.dumps({"id": self.id, "host": self.host, "pid": self.pid,
                           "version": self.version, "compatible": list(self.compatible),
                           "started": self.started,
                           "partitions": list(self.partitions), "in_flight": self.in_flight},
                          separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes, ttl_ms: int | None = None) -> WorkerInfo:
        d: dict[str, Any] = json.loads(text)
        return cls(id=str(d["id"]), host=str(d.get("host", "")), pid=int(d.get("pid", 0)),
                   version=str(d.get("version", "")),
                   compatible=tuple(str(v) for v in d.get("compatible", ())),
                   started=float(d.get("started", 0.0)),
                   partitions=tuple(int(p) for p in d.get("partitions", ())),
                   in_flight=int(d.get("in_flight", 0)), ttl_ms=ttl_ms)


class Membership:
    """Heartbeats of the workers of one cluster."""

    def __init__(self, client: redis.Redis, *, ttl_ms: int,
                 keys: ClusterKeys | None = None) -> None:
        self.client = client
        self.ttl_ms = int(ttl_ms)
        self.keys = keys or ClusterKeys()

    def heartbeat(self, info: WorkerInfo, *, partitions: Iterable[int] | None = None,
                  in_flight: int | None = None) -> WorkerInfo:
        """Write (or refresh) the worker's heartbeat with the current figures."""
        if partitions is not None:
            info = replace(info, partitions=tuple(sorted(partitions)))
        if in_flight is not None:
            info = replace(info, in_flight=in_flight)
        self.client.set(self.keys.worker(info.id), info.to_json(), px=self.ttl_ms)
        return info

    def leave(self, worker_id: str) -> None:
        """Remove the heartbeat at once (a graceful exit), rather than after its TTL."""
        self.client.delete(self.keys.worker(worker_id))

    def live_workers(self) -> list[WorkerInfo]:
        """The workers whose heartbeat has not expired, sorted by id. (On Redis Cluster, the
        cluster client's SCAN visits every primary.)"""
        names = sorted({_text(k) for k in self.client.scan_iter(
            match=self.keys.worker_pattern, count=500)})
        if not names:
            return []
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.get(name)
            pipe.pttl(name)
        raw: list[Any] = pipe.execute()
        out = []
        for i in range(len(names)):
            value, pttl = raw[2 * i], raw[2 * i + 1]
            if value is None:
                continue  # expired between SCAN and GET
            try:
                out.append(WorkerInfo.from_json(value, int(pttl) if int(pttl) >= 0 else None))
            except (ValueError, KeyError, TypeError):
                continue  # not ours to judge: a malformed entry is skipped
        return sorted(out, key=lambda w: w.id)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
