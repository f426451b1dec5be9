"""The bridge between a `ClusterNode` and the actor runtime: which actors this worker may
run (those of the partitions it holds), and what to do when a partition leaves."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

from runtime.cluster.leases import Lease
from runtime.cluster.node import ClusterNode
from runtime.cluster.partitions import partition_of
from runtime.journal.keyhash import Scope

log = logging.getLogger("loom.cluster")


class PartitionOwnership:
    """`owns(key)`: this worker holds the lease of the actor's partition right now.

    Built before the runtime; `attach(runtime, loop)` connects the node's callbacks (they
    run on the node's threads) to the runtime on its event loop: a partition handed over
    or lost drops its activations and releases their journal leases, so the next owner
    takes them at once.
    """

    def __init__(self, node: ClusterNode) -> None:
        self.node = node
        self._runtime: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        node.on_release = self._on_release
        node.keeper.on_lost = self._on_lost

    def partition(self, key: str) -> int:
        return partition_of(key, self.node.partitions)

    def owns(self, key: str) -> bool:
        return self.node.holds(self.partition(key)) is not None

    def scope(self) -> Scope:
        return Scope(self.node.partitions, frozenset(self.node.keeper.held()))

    def accepts(self, key: str, version: str) -> bool:
        return self.node.accepts(self.partition(key), version)

    def report(self, in_flight: int) -> None:
        self.node.in_flight = in_flight

    def attach(self, runtime: Any, loop: asyncio.AbstractEventLoop) -> None:
        self._runtime, self._loop = runtime, loop

    def _hand_over(self, partition: int, why: str, wait: bool) -> None:
        if self._runtime is None or self._loop is None or self._loop.is_closed():
            return
        future = asyncio.run_coroutine_threadsafe(
            self._runtime.release_partition(partition, why), self._loop)
        if wait:  # a graceful hand-over: the lease is released only after this returns
            try:
                future.result(timeout=30)
            except (concurrent.futures.TimeoutError, Exception) as exc:
                log.warning("handing partition %d over: %s", partition, exc)

    def _on_release(self, lease: Lease) -> None:
        self._hand_over(lease.partition, "handed over", wait=True)

    def _on_lost(self, lease: Lease, reason: str) -> None:
        log.warning("lost partition %d (%s)", lease.partition, reason)
        self._hand_over(lease.partition, f"lost ({reason})", wait=False)
