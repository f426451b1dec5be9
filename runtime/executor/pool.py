"""Warm instances per (activity version, tenant). Only healthy, reusable instances return."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Protocol

PoolKey = tuple[str, str, str, str]
"""(name, version, sha256, tenant)"""


class Pooled(Protocol):
    """A warm guest instance: `healthy` is False after any failure (never reused)."""

    healthy: bool

    def close(self) -> None: ...


@dataclass
class PoolStats:
    created: int = 0
    reused: int = 0
    retired: int = 0


class InstancePool:
    def __init__(self, max_idle: int) -> None:
        self.max_idle = max_idle
        self.stats = PoolStats()
        self._idle: dict[PoolKey, deque[Pooled]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: PoolKey) -> Pooled | None:
        with self._lock:
            idle = self._idle.get(key)
            if idle:
                self.stats.reused += 1
                return idle.pop()
        return None

    def created(self) -> None:
        """Count an instance made because none was idle (calls on several threads)."""
        with self._lock:
            self.stats.created += 1

    def release(self, key: PoolKey, instance: Pooled, *, reusable: bool) -> None:
        """Return `instance` to the pool, or retire it (unhealthy, not reusable, pool full)."""
        if reusable and instance.healthy:
            with self._lock:
                idle = self._idle.get(key)
                if idle is None:
                    idle = self._idle[key] = deque()
                if len(idle) < self.max_idle:
                    idle.append(instance)
                    return
        with self._lock:
            self.stats.retired += 1
        instance.close()

    def idle_count(self, key: PoolKey | None = None) -> int:
        with self._lock:
            if key is not None:
                return len(self._idle.get(key, ()))
            return sum(len(d) for d in self._idle.values())

    def hit_rate(self) -> float:
        """Calls served by a warm instance / calls that asked the pool."""
        asked = self.stats.reused + self.stats.created
        return self.stats.reused / asked if asked else 0.0

    def clear(self) -> None:
        with self._lock:
            instances = [i for d in self._idle.values() for i in d]
            self._idle.clear()
        for instance in instances:
            instance.close()
