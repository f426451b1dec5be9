"""The journal protocol: append-only commits per actor, plus each actor's durable inbox.

A commit is one JSON document keyed (actor, seq), written create-if-absent; it holds
everything one step changed (see `schemas/journal.py`). The inbox holds messages, events
and timers addressed to an actor, keyed (actor, message id), also create-if-absent, so a
re-delivered message is recognised by its id. Consumed entries become tombstones (kept
for `tombstone_ttl_s`) so a late duplicate is still refused.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from runtime.errors import JournalConflict

Commit = dict[str, Any]
Envelope = dict[str, Any]
__all__ = ["Commit", "Envelope", "JournalConflict", "JournalStore"]


@runtime_checkable
class JournalStore(Protocol):
    url: str

    async def append(self, commit: Commit) -> None:
        """Write `commit` if (actor, seq) is free; else raise JournalConflict."""
        ...

    async def read(self, actor: str, after_seq: int = -1) -> list[Commit]:
        """Commits of `actor` with seq > after_seq, in seq order."""
        ...

    async def read_tail(self, actor: str) -> list[Commit]:
        """The latest commit carrying state and every commit after it (all, if none has)."""
        ...

    async def enqueue(self, envelope: Envelope) -> bool:
        """Add to the target's inbox; False if that message id was ever enqueued there."""
        ...

    async def inbox(self, actor: str, now: float, *, calls: int | None = None) -> list[Envelope]:
        """Unconsumed entries of `actor` due at `now`, in enqueue order.

        With `calls=n`: every event and timer, then at most the first n call messages.
        """
        ...

    async def consume(self, actor: str, ids: list[str], now: float) -> None:
        """Turn entries into tombstones."""
        ...

    async def due_actors(self, now: float, limit: int = 1000, *,
                         calls: bool = True) -> list[str]:
        """Actors with at least one unconsumed inbox entry due at `now` (with
        `calls=False`: only timers and events count)."""
        ...

    async def next_due(self, now: float) -> float | None:
        """Earliest deliver_at after `now` among unconsumed entries, if any."""
        ...

    async def actors(self, prefix: str = "") -> list[str]:
        """Actors that have commits, optionally of one type ("type/")."""
        ...

    async def purge_tombstones(self, older_than: float) -> int: ...

    async def close(self) -> None: ...
