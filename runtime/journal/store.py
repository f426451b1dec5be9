"""The journal protocol: append-only commits per actor, each actor's durable inbox, and the
schedule that says which actors need attention and which process owns each one.

**Commits.** A commit is one JSON document keyed (actor, seq), written create-if-absent; it
holds everything one step changed (see `schemas/journal.py`). That create-if-absent write is
the fence: of two activations of one actor, only one can write a given seq.

**Inbox.** Messages, events and timers addressed to an actor, keyed (actor, message id),
also create-if-absent, so a re-delivered message is recognised by its id. The journal gives
each new entry the next number `n` of its actor's inbox: the inbox order is fixed once, at
enqueue, never by a sender's clock. Consumed entries become tombstones (kept for
`tombstone_ttl_s`) so a late duplicate is still refused.

**Schedule.** One row per actor: `due_at` (when it next needs attention: 0 = now, a time,
or never) and a lease `(owner, lease_until, epoch)`. Enqueue lowers `due_at`; the owner
*settles* it after looking at the inbox, to the earliest entry it has not seen yet or a
future timer. So an actor whose run is parked, or that holds events nobody waits for,
costs nothing until something new arrives: scheduling is O(what is due), oldest first.
A row also records the code version a run in flight started under, so that only workers
able to resume it see it due (see docs/cluster.md, "Deployments").
While an owner holds an actor with unfinished work, its `due_at` is capped at the lease's
end, so a crashed owner's actors become due for others as soon as the lease runs out.
"""

from __future__ import annotations

from collections.abc import Collection
from types import EllipsisType
from typing import Any, NamedTuple, Protocol, runtime_checkable

from runtime.errors import JournalConflict
from runtime.journal.keyhash import Scope

Commit = dict[str, Any]
Envelope = dict[str, Any]
__all__ = ["ActorLease", "Commit", "Envelope", "JournalConflict", "JournalStore", "Scope"]
CRASHED = -1.0
"""`lease_until` of a lease ended by `expire_owner` (its holder is known dead), as opposed to
0.0 for one released cleanly: the next holder knows the last activation was cut off."""


class ActorLease(NamedTuple):
    epoch: int
    """Raised on every change of owner: the fence carried by commits."""
    taken_over: bool
    """The previous holder did not release it: its lease ran out or it was expired as dead.
    Whatever that holder was running was cut off (it counts as a delivery)."""


@runtime_checkable
class JournalStore(Protocol):
    url: str
    consumes_with_append: bool
    """`append` also turns the commit's `consumed` entries into tombstones, in the same
    atomic write, when the commit's outbox is empty (nothing must be dispatched first): the
    caller need not `consume` them (memory, SQLite; not Cosmos, where they are other
    documents)."""

    # -- commits ---------------------------------------------------------------------------
    async def append(self, commit: Commit) -> None:
        """Write `commit` if (actor, seq) is free; else raise JournalConflict. A commit that
        carries a lease `epoch` older than the actor's current one is refused too, where the
        store can check both in one atomic step (memory, SQLite; not Cosmos)."""
        ...

    async def read(self, actor: str, after_seq: int = -1) -> list[Commit]:
        """Commits of `actor` with seq > after_seq, in seq order."""
        ...

    async def read_tail(self, actor: str) -> list[Commit]:
        """The latest commit carrying state and every commit after it (all, if none has)."""
        ...

    async def outcome(self, actor: str, msg_id: str) -> Commit | None:
        """The commit that completed the run of message `msg_id` (it has "kind"), if any."""
        ...

    # -- inbox -----------------------------------------------------------------------------
    async def enqueue(self, envelope: Envelope) -> bool:
        """Add to the target's inbox with the next inbox number `n`, and make the target due
        at the entry's `deliver_at`; False (and nothing changed) if that message id was ever
        enqueued there."""
        ...

    async def inbox(self, actor: str, now: float, *, calls: int | None = None) -> list[Envelope]:
        """Unconsumed entries of `actor` due at `now`, in inbox order, each carrying its `n`.

        With `calls=k`: every event and timer, then at most the first k call messages.
        """
        ...

    async def consume(self, actor: str, ids: list[str], now: float) -> None:
        """Turn entries into tombstones."""
        ...

    # -- schedule and ownership --------------------------------------------------------------
    async def due_actors(self, now: float, limit: int = 256, *, owner: str | None = None,
                         versions: Collection[str] | None = None,
                         scope: Scope | None = None) -> list[str]:
        """Actors due at `now` that `owner` may take (free, expired or its own lease).

        Up to `limit` actors with new messages, in arrival order, and up to `limit` actors
        with a due timer, earliest first; neither kind can starve the other. With
        `versions`, an actor whose run in flight is pinned to another code version is left
        out (the caller could not resume it). With `scope`, only actors of those partitions
        (and rows written without a key hash, by older versions: the caller filters those),
        so that a backlog in partitions held elsewhere cannot fill the page.
        """
        ...

    async def due_pinned(self, now: float, limit: int = 256, *, owner: str | None = None,
                         versions: Collection[str]) -> list[tuple[str, str]]:
        """(actor, version) of due actors, free for `owner`, whose run in flight is pinned
        to one of `versions`: the runs a worker of those versions may resume although their
        partition's owner runs other code."""
        ...

    async def next_due(self, now: float, *,
                       versions: Collection[str] | None = None) -> float | None:
        """The earliest due time after `now` in the schedule, if any (with `versions`, of
        the actors `due_actors` would return)."""
        ...

    async def acquire(self, actor: str, owner: str, now: float, ttl: float
                      ) -> ActorLease | None:
        """Lease `actor` to `owner` until now + ttl if it is free, expired or already
        `owner`'s. Returns the lease (its epoch, and whether it was taken over from a holder
        that never released it), else None."""
        ...

    async def renew(self, owner: str, now: float, ttl: float) -> set[str]:
        """Extend every lease `owner` holds to now + ttl; returns the actors it still holds."""
        ...

    async def settle(self, actor: str, owner: str, *, now: float, seen_n: int, busy: bool,
                     release: bool = False, version: str | EllipsisType | None = ...) -> None:
        """After `owner` read the inbox at `now` and saw it up to number `seen_n`: the actor
        is next due at the earliest of its unconsumed entries numbered above `seen_n`
        (without calls while `busy`) and of those not yet due at `now`; while `busy` and
        not released, no later than the lease's end. `release` also gives up the lease.
        `version` pins the actor to the code version its run in flight started under (None:
        no run in flight, or unversioned code; not given: the pin stays as it is). No-op if
        `owner` does not hold the lease."""
        ...

    async def run_versions(self) -> dict[str, int]:
        """How many actors have a run in flight (running or parked) per pinned version."""
        ...

    async def owners(self) -> dict[str, int]:
        """Current lease holders and how many actors each holds."""
        ...

    async def expire_owner(self, owner: str) -> int:
        """End every lease of `owner` now (it is known to be dead), marked `CRASHED`;
        returns how many."""
        ...

    # -- deliveries and dead letters -----------------------------------------------------------
    async def bump_delivery(self, actor: str, msg_id: str, at_seq: int) -> int:
        """Count one more activation that took this (unconsumed) message's run up at journal
        position `at_seq`; a different position (the run made progress) starts the count
        again at 1. Returns the count (0 if the entry is gone or consumed)."""
        ...

    async def put_dead_letter(self, entry: dict[str, Any]) -> None:
        """Keep `entry` (actor, msg, envelope, error, deliveries, at) in the dead-letter
        list; the same (actor, msg) again replaces it."""
        ...

    async def dead_letters(self, limit: int = 1000) -> list[dict[str, Any]]:
        """The dead-letter list, oldest first."""
        ...

    async def drop_dead_letter(self, actor: str, msg_id: str) -> bool:
        """Remove one entry from the list; False if it was not there."""
        ...

    # -- the run index -------------------------------------------------------------------------
    async def runs(self, *, type: str | None = None, status: str | None = None,
                   activity: str | None = None, id_prefix: str | None = None,
                   started_after: float | None = None, started_before: float | None = None,
                   ended_after: float | None = None, ended_before: float | None = None,
                   limit: int = 100, after: str | None = None) -> list[dict[str, Any]]:
        """Runs, newest first (by start, then actor, then message id), from the run index
        kept with the commits (see `runtime/journal/runs.py` for how a row follows its
        commits). Filters combine with AND: actor `type`; `status` (one of `runs.STATUSES`);
        `activity` (the run recorded a step of it); `id_prefix` (the actor id, after
        "type/", starts with it); start and end times as half-open ranges
        [after, before). Keyset pages: pass the last row's `cursor` as `after`.

        Each row: actor, type, msg, handler, status, waiting ("timer"/"event" while
        parked), started, ended, first_seq, last_seq, activities, error ({code, type,
        message} or None), cursor. Bad filters raise ValueError naming the filter."""
        ...

    # -- listing and upkeep ------------------------------------------------------------------
    async def actors(self, prefix: str = "") -> list[str]:
        """Actors that have commits, optionally of one type ("type/")."""
        ...

    async def purge_tombstones(self, older_than: float) -> int: ...

    async def close(self) -> None: ...
