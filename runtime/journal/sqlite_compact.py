"""Compaction of the SQLite journal, under the rule of the Cosmos journal (docs/journal.md,
"Compaction"), in steps of bounded work that run inside the writer's group commits:

- tombstones consumed before `now - tombstone_ttl_s` are deleted, oldest first (by the
  `inbox_consumed` index), with their delivery counts;
- a commit is deleted when it is older than its actor's latest state-bearing commit, older
  than `now - tombstone_ttl_s - commit_margin_s`, and already folded into the run index.

Commits are visited in rowid (append) order behind a cursor (meta `compacted_to`): each step
takes the actors of the next commits old enough, and deletes each one's commits from its
oldest up to the newer of its latest snapshot and its first young commit. A commit passed
while it was still in its actor's tail (a run parked for longer than the TTL) goes with a
later step that meets a newer commit of that actor; if the actor never commits again, it is
its tail, and stays. Work per step: the rows it deletes, plus one walk back from each
actor's newest commit to its latest snapshot.
"""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

STEP_ROWS = 500  # commits visited, and tombstones deleted, per step at most (on the loop)


class Step(NamedTuple):
    commits: int
    tombstones: int
    more: bool
    """Something old enough is left for the next step."""


def purge_tombstones(db: sqlite3.Connection, older_than: float, limit: int) -> int:
    """Delete up to `limit` tombstones consumed before `older_than`, and their counts."""
    rows = db.execute("SELECT rowid, actor, id FROM inbox WHERE consumed_at IS NOT NULL AND "
                      "consumed_at < ? ORDER BY consumed_at LIMIT ?",
                      (older_than, limit)).fetchall()
    db.executemany("DELETE FROM deliveries WHERE actor = ? AND id = ?",
                   [(actor, msg_id) for _, actor, msg_id in rows])
    db.executemany("DELETE FROM inbox WHERE rowid = ?", [(rowid,) for rowid, _, _ in rows])
    return len(rows)


def _old_until(db: sqlite3.Connection, after: int, last: int, older_than: float) -> int:
    """The last rowid in (after, last] whose commit was written before `older_than` (by
    the commit's own `ts`; rowids grow with time): a binary search, `after` if none."""
    lo, hi = after, last
    while lo < hi:
        mid = (lo + hi + 1) // 2
        row = db.execute("SELECT json_extract(CAST(doc AS TEXT), '$.ts') FROM commits "
                         "WHERE rowid >= ? ORDER BY rowid LIMIT 1", (mid,)).fetchone()
        ts = row[0] if row is not None else None
        if isinstance(ts, int | float) and ts < older_than:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _compact_actor(db: sqlite3.Connection, actor: str, old_until: int) -> int:
    """Delete `actor`'s commits before both its latest snapshot and its first commit past
    `old_until`."""
    snap = db.execute("SELECT seq FROM commits WHERE actor = ? AND has_state = 1 ORDER BY "
                      "seq DESC LIMIT 1", (actor,)).fetchone()
    if snap is None:
        return 0
    young = db.execute("SELECT seq FROM commits WHERE actor = ? AND rowid > ? ORDER BY seq "
                       "LIMIT 1", (actor, old_until)).fetchone()
    below = snap[0] if young is None else min(snap[0], young[0])
    return db.execute("DELETE FROM commits WHERE actor = ? AND seq < ?",
                      (actor, below)).rowcount


def step(db: sqlite3.Connection, now: float, tombstone_ttl_s: float,
         commit_margin_s: float) -> Step:
    """One step of compaction, in the caller's transaction."""
    tombstones = purge_tombstones(db, now - tombstone_ttl_s, STEP_ROWS)
    cursor = db.execute("SELECT value FROM meta WHERE key = 'compacted_to'").fetchone()
    after = cursor[0] if cursor is not None else 0
    # never past the run index's watermark: what it has not folded, it still reads
    (folded,) = db.execute("SELECT value FROM meta WHERE key = 'runs_indexed'").fetchone()
    (newest,) = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM commits").fetchone()
    last = min(folded, newest, after + STEP_ROWS)
    until = _old_until(db, after, last, now - tombstone_ttl_s - commit_margin_s)
    deleted = 0
    if until > after:
        actors = [r[0] for r in db.execute(
            "SELECT DISTINCT actor FROM commits WHERE rowid > ? AND rowid <= ?", (after, until))]
        for actor in actors:
            deleted += _compact_actor(db, actor, until)
        db.execute("INSERT INTO meta (key, value) VALUES ('compacted_to', ?) ON CONFLICT (key) "
                   "DO UPDATE SET value = excluded.value", (until,))
    more = tombstones == STEP_ROWS or (until == last and last < min(folded, newest))
    return Step(deleted, tombstones, more)
