"""`ClusterNode`: one worker's membership in the cluster, the piece the runtime wires in.

It checks the partition count, heartbeats, and balances: every `balance_every` seconds
(on a thread of its own, separate from the lease keeper's so that a slow balancing round
or a slow `on_release` never delays renewals) it takes free partitions up to its fair
share and hands its surplus over. The runtime:

- activates an actor only if `node.holds(partition_of(key, node.partitions))` returns a
  lease, and writes that lease's epoch into every journal commit (the fence);
- on `on_acquired(lease)`: rebuilds the partition's view from the journal and claims the
  old owner's pending stream entries;
- on `on_release(lease)`: stops taking new work in the partition and finishes (or drops)
  its turns in flight; the lease is released when the callback returns;
- on `on_lost(lease, reason)`: drops the partition's activations at once (their next
  commit would be refused anyway).

Callbacks run on the node's threads: hand work over to the event loop with
`loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import redis

from runtime.cluster.balance import Balancer, Plan
from runtime.cluster.keeper import LeaseKeeper, LostCallback
from runtime.cluster.keys import ClusterKeys
from runtime.cluster.leases import Lease, PartitionLeases
from runtime.cluster.membership import Membership, WorkerInfo
from runtime.cluster.partitions import ensure_partition_count

log = logging.getLogger("loom.cluster")

LeaseCallback = Callable[[Lease], None]


@dataclass(frozen=True)
class ClusterConfig:
    partitions: int | None
    """The partition count (None: join an existing cluster with whatever it has)."""
    lease_ttl_ms: int = 10_000
    heartbeat_ttl_ms: int | None = None
    """Default: the lease TTL."""
    balance_every: float | None = None
    """Seconds between balancing rounds (default: a quarter of the lease TTL)."""
    prefix: str = "loom"
    epoch_floor: bool = True


def connect(url: str, lease_ttl_ms: int) -> redis.Redis:
    """A client whose calls give up well within a lease TTL, so a hung connection cannot
    hold the keeper past its deadline unnoticed."""
    timeout = max(0.05, lease_ttl_ms / 1000 / 4)
    return redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                health_check_interval=0)


class ClusterNode:
    def __init__(self, client: redis.Redis, worker: WorkerInfo, config: ClusterConfig, *,
                 on_acquired: LeaseCallback | None = None,
                 on_release: LeaseCallback | None = None,
                 on_lost: LostCallback | None = None,
                 keeper_hook: Callable[[], None] | None = None) -> None:
        self.client = client
        self.config = config
        self.keys = ClusterKeys(config.prefix)
        self.partitions = ensure_partition_count(client, config.partitions, self.keys)
        self.worker = worker
        self.leases = PartitionLeases(client, ttl_ms=config.lease_ttl_ms, keys=self.keys,
                                      epoch_floor=config.epoch_floor)
        self.keeper = LeaseKeeper(self.leases, worker.id, on_lost=on_lost,
                                  before_round=keeper_hook)
        self.membership = Membership(client, keys=self.keys,
                                     ttl_ms=config.heartbeat_ttl_ms or config.lease_ttl_ms)
        self.balancer = Balancer(self.partitions)
        self.balance_every = (config.balance_every if config.balance_every is not None
                              else config.lease_ttl_ms / 1000 / 4)
        self.on_acquired = on_acquired
        self.on_release = on_release
        self.in_flight = 0
        """The runtime sets it; the heartbeat reports it."""
        self.partition_owners: dict[int, frozenset[str] | None] = {}
        """As of the last round: the versions the holder of each held partition can resume
        (None: a holder whose heartbeat is gone)."""
        self.draining = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._tick_lock = threading.Lock()
        self._stopped = False

    def holds(self, partition: int) -> Lease | None:
        return self.keeper.holds(partition)

    def accepts(self, partition: int, version: str) -> bool:
        """Whether the holder of `partition` (as of the last round) can resume runs of
        `version`. A partition nobody holds, or whose holder is unknown, counts as yes:
        its next owner decides."""
        if partition not in self.partition_owners:
            return True
        resumes = self.partition_owners[partition]
        return resumes is None or version in resumes

    def owned(self) -> dict[int, Lease]:
        return self.keeper.held()

    def tick(self) -> Plan:
        """One round: check P, heartbeat, and move towards the fair share."""
        with self._tick_lock:
            ensure_partition_count(self.client, self.partitions, self.keys)  # after a wipe too
            held = self.keeper.held()
            self.worker = self.membership.heartbeat(self.worker, partitions=held,
                                                    in_flight=self.in_flight)
            workers = self.membership.live_workers()
            live = [] if self.draining else [w.id for w in workers]
            holders = self.leases.holders(range(self.partitions))
            resumes = {w.id: w.resumes for w in workers}
            self.partition_owners = {p: resumes.get(w) for p, w in holders.items()
                                     if w is not None}
            if self.draining:
                plan = Plan(0, (), tuple(sorted(held)))
            else:
                free = [p for p, w in holders.items() if w is None]
                plan = self.balancer.plan(self.worker.id, held, live, free)
            for p in plan.release:
                lease = held[p]
                if self.on_release is not None:
                    try:
                        self.on_release(lease)
                    except Exception:
                        log.exception("on_release callback failed for partition %d", p)
                self.keeper.release(p)
            for p in plan.acquire:
                got = self.keeper.acquire(p)
                if got is not None and self.on_acquired is not None:
                    try:
                        self.on_acquired(got)
                    except Exception:
                        log.exception("on_acquired callback failed for partition %d", p)
            if plan.acquire or plan.release:
                self.worker = self.membership.heartbeat(
                    self.worker, partitions=self.keeper.held(), in_flight=self.in_flight)
            return plan

    def start(self) -> ClusterNode:
        self.keeper.start()
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"loom-cluster-{self.worker.id}")
            self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                self.tick()
            except Exception as exc:
                log.warning("cluster round failed: %s", exc)
            if self._stop.wait(self.balance_every):
                return

    def drain(self) -> None:
        """Hand every partition over (graceful exit): `on_release` then release, for each."""
        self.draining = True
        self.tick()

    def stop(self, *, release: bool = True) -> None:
        """Stop balancing and renewing. With `release` (a graceful exit): `on_release` and
        release for every partition, and leave the membership at once; without (a crash,
        for tests): leases and heartbeat are left to expire. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        if release:
            try:
                self.drain()
            except Exception as exc:  # Redis unreachable: the leases will expire
                log.warning("could not hand the partitions over: %s", exc)
        self.keeper.stop(release=release)
        if release:
            with contextlib.suppress(Exception):
                self.membership.leave(self.worker.id)
