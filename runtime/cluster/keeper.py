"""`LeaseKeeper`: keeps a worker's partition leases renewed on a daemon thread of its own.

Renewal must not depend on the worker's event loop (a busy loop, or a long turn, would
starve it), so the keeper uses the synchronous redis-py client on its own thread. A
lease counts as held locally only until `deadline`: the monotonic time the last successful
renewal was *sent*, plus the TTL, minus a safety margin. Redis started its PX later than
that, so the local deadline never outlives the lease in Redis (barring a clock that runs
more than `margin / ttl` slower than the server's).

A lease is reported lost (once, through `on_lost`, on the keeper thread) when:
- a renewal finds another token, or none (expired, taken over, Redis wiped), or
- its local deadline passes before a renewal succeeds (the thread was paused, Redis was
  unreachable): the keeper then does not renew it, even if Redis still has it, but
  deletes it (compare-and-set) so that another worker need not wait for it to expire.

What stays: the GIL. Python code in another thread gives the GIL up every switch interval
(5 ms), but a C call that holds it (a long regex, a big json.dumps, a native call that does
not release it) or a stop-the-world pause (GC, SIGSTOP, VM stall) stops this thread too.
Then the lease may expire while the worker still thinks it holds it; the keeper reports
it as soon as it runs again, and the journal's conditional commit fences the stale owner
in the meantime. The lease is liveness, the journal is safety.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from runtime.cluster.leases import Lease, PartitionLeases, new_token

log = logging.getLogger("loom.cluster")

LostCallback = Callable[[Lease, str], None]
"""`on_lost(lease, reason)`: runs on the keeper thread; keep it short (hand off to the loop
with `loop.call_soon_threadsafe`)."""


@dataclass
class _Held:
    lease: Lease
    deadline: float


class LeaseKeeper:
    """The leases one worker holds, renewed every `renew_every` seconds (default TTL/3)."""

    def __init__(self, leases: PartitionLeases, worker_id: str, *,
                 on_lost: LostCallback | None = None, renew_every: float | None = None,
                 margin: float | None = None, clock: Callable[[], float] = time.monotonic,
                 before_round: Callable[[], None] | None = None) -> None:
        """`margin` (default TTL/10) is subtracted from every local deadline.
        `before_round` runs at the start of each renewal round (tests inject pauses)."""
        ttl = leases.ttl_ms / 1000
        self.leases = leases
        self.worker_id = worker_id
        self.ttl = ttl
        self.renew_every = renew_every if renew_every is not None else ttl / 3
        self.margin = margin if margin is not None else ttl / 10
        if not 0 < self.renew_every < ttl - self.margin:
            raise ValueError(f"renew_every ({self.renew_every}s) must be below the TTL "
                             f"({ttl}s) minus the margin ({self.margin}s)")
        self.on_lost = on_lost
        self.clock = clock
        self.before_round = before_round
        self._held: dict[int, _Held] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.rounds = 0

    # -- what the worker asks
    def acquire(self, partition: int) -> Lease | None:
        """Try to take `partition`'s lease (a new token and epoch); None if it is held."""
        with self._lock:
            if partition in self._held:
                return self._held[partition].lease
        sent = self.clock()
        lease = self.leases.acquire(partition, new_token(self.worker_id))
        if lease is not None:
            with self._lock:
                self._held[partition] = _Held(lease, sent + self.ttl - self.margin)
        return lease

    def release(self, partition: int) -> bool:
        """Stop renewing `partition` and delete its lease if still ours; True if it was."""
        with self._lock:
            held = self._held.pop(partition, None)
        if held is None:
            return False
        return self.leases.release(held.lease)

    def release_all(self) -> None:
        for p in list(self.held()):
            with contextlib.suppress(Exception):
                self.release(p)

    def holds(self, partition: int) -> Lease | None:
        """The lease if held and its local deadline has not passed, else None. Check it
        before starting work in the partition; commit with its epoch."""
        with self._lock:
            held = self._held.get(partition)
        if held is None or self.clock() >= held.deadline:
            return None
        return held.lease

    def held(self) -> dict[int, Lease]:
        """Every lease held (including one whose deadline just passed and that the next
        round will report lost)."""
        with self._lock:
            return {p: h.lease for p, h in self._held.items()}

    # -- the thread
    def start(self) -> LeaseKeeper:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"loom-lease-keeper-{self.worker_id}")
            self._thread.start()
        return self

    def stop(self, *, release: bool = True) -> None:
        """Stop renewing; with `release`, give every lease up (a graceful exit)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(max(5.0, 2 * self.ttl))
            self._thread = None
        if release:
            self.release_all()

    def _run(self) -> None:
        while not self._stop.wait(self.renew_every):
            try:
                self.renew_round()
            except Exception:  # never let the thread die: the next round retries
                log.exception("lease renewal round failed")

    def renew_round(self) -> None:
        """One round: drop leases past their deadline, renew the rest (the thread calls it;
        tests may too)."""
        if self.before_round is not None:
            self.before_round()
        self.rounds += 1
        now = self.clock()
        with self._lock:
            late = [h for h in self._held.values() if now >= h.deadline]
            for h in late:
                del self._held[h.lease.partition]
            live = list(self._held.values())
        for h in late:
            with contextlib.suppress(Exception):
                self.leases.release(h.lease)  # only deletes it if it is still ours
            self._report(h.lease, "not renewed before its deadline (paused or Redis down)")
        if not live:
            return
        sent = self.clock()
        try:
            results = self.leases.renew_many([h.lease for h in live])
        except Exception as exc:  # Redis unreachable: keep trying until the deadlines pass
            log.warning("could not renew %d lease(s): %s", len(live), exc)
            return
        lost = []
        with self._lock:
            for h, ok in zip(live, results, strict=True):
                if self._held.get(h.lease.partition) is not h:
                    continue  # released meanwhile
                if ok:
                    h.deadline = sent + self.ttl - self.margin
                else:
                    del self._held[h.lease.partition]
                    lost.append(h.lease)
        for lease in lost:
            self._report(lease, "the lease in Redis is gone or another worker's")

    def _report(self, lease: Lease, reason: str) -> None:
        log.warning("lost the lease of partition %d (epoch %d): %s",
                    lease.partition, lease.epoch, reason)
        if self.on_lost is not None:
            try:
                self.on_lost(lease, reason)
            except Exception:
                log.exception("on_lost callback failed")
