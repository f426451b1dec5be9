"""Many writes of one kind in a few statements, for the SQLite journal's group commit.

Every statement lets the GIL go and waits to get it back; under load that wait, not SQLite,
is most of a transaction's time. So the appends of one group commit become one INSERT (plus
one UPDATE for the inbox entries they consume), its enqueues one duplicate check, one
INSERT and one schedule upsert, and its settles one UPDATE, whatever their number.

Writes in one group commit were all submitted before any of them completed, so no caller
can depend on the order among them: running the enqueues, then the other writes, then the
settles, then the appends is one valid order. Appends and settles report when they cannot
vouch for every item (a conflict, a fenced commit, an actor settled twice): they have then
changed nothing, and the caller runs those writes one by one.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from typing import Any

from runtime.journal.keyhash import key_hash

CHUNK = 400  # rows per statement (SQLite allows 32,766 parameters)

# (actor, seq, has_state, doc, done_msg, epoch or None)
AppendRow = tuple[str, int, int, bytes, Any, Any]
# (ts, actor, msg id) of an inbox entry a commit consumes
Tombstone = tuple[float, str, str]
# (actor, id, kind, deliver_at, doc)
EnqueueRow = tuple[str, str, str, float, bytes]
# (actor, owner, now, seen_n, busy, version, keep the version) of a settle without release
SettleRow = tuple[str, str, float, int, int, Any, int]


def _values(width: int, count: int) -> str:
    row = "(" + ",".join("?" * width) + ")"
    return ",".join([row] * count)


def _chunks(items: Sequence[Any]) -> list[Sequence[Any]]:
    return [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]


def _flat(rows: Sequence[tuple[Any, ...]]) -> list[Any]:
    return [v for row in rows for v in row]


def append_many(db: sqlite3.Connection, rows: Sequence[AppendRow],
                tombstones: Sequence[Tombstone]) -> bool:
    """Insert every commit, fenced like a single append, and mark what they consume; False
    (and nothing changed) unless every commit went in."""
    db.execute("SAVEPOINT bulk")
    try:
        for part in _chunks(rows):
            written = db.execute(
                "INSERT INTO commits (actor, seq, has_state, doc, done_msg) SELECT v.column1, "
                "v.column2, v.column3, v.column4, v.column5 FROM (VALUES "
                f"{_values(6, len(part))}) AS v WHERE v.column6 IS NULL OR NOT EXISTS "
                "(SELECT 1 FROM sched WHERE actor = v.column1 AND epoch != v.column6)",
                _flat(part)).rowcount
            if written != len(part):
                raise _Refused
        for part in _chunks(tombstones):
            db.execute(
                "UPDATE inbox SET consumed_at = v.column1 FROM (VALUES "
                f"{_values(3, len(part))}) AS v WHERE inbox.actor = v.column2 AND "
                "inbox.id = v.column3 AND inbox.consumed_at IS NULL", _flat(part))
    except (_Refused, sqlite3.IntegrityError):
        db.execute("ROLLBACK TO bulk")
        db.execute("RELEASE bulk")
        return False
    db.execute("RELEASE bulk")
    return True


def append_one(db: sqlite3.Connection, row: AppendRow, tombstones: Sequence[Tombstone]) -> None:
    """Insert one commit if its (actor, seq) is free and its lease epoch (if any) is the
    actor's current one, and mark what it consumes; else raise Conflict, having changed
    nothing (the failed INSERT is undone by SQLite)."""
    actor, seq, epoch = row[0], row[1], row[5]
    try:
        written = db.execute(
            "INSERT INTO commits (actor, seq, has_state, doc, done_msg) SELECT ?1, ?2, "
            "?3, ?4, ?5 WHERE ?6 IS NULL OR NOT EXISTS (SELECT 1 FROM sched WHERE "
            "actor = ?1 AND epoch != ?6)", row).rowcount
    except sqlite3.IntegrityError:
        raise Conflict(f"commit {actor}#{seq} already exists") from None
    if not written:
        found = db.execute("SELECT epoch FROM sched WHERE actor=?", (actor,)).fetchone()
        raise Conflict(f"commit {actor}#{seq} of lease epoch {epoch} is fenced out by "
                       f"epoch {found[0] if found else None}")
    if tombstones:
        db.executemany("UPDATE inbox SET consumed_at=? WHERE actor=? AND id=? AND "
                       "consumed_at IS NULL", tombstones)


def enqueue_many(db: sqlite3.Connection, rows: Sequence[EnqueueRow]) -> list[int]:
    """Create each entry unless its (actor, id) is already in the inbox or earlier in
    `rows`, numbered in order after its actor's last, and bring the actors' schedule rows
    along as one enqueue at a time would. One result per row: the number `n` it was created
    with, or 0 (not created)."""
    seen: set[tuple[str, str]] = set()
    for part in _chunks(rows):
        seen.update(db.execute(
            "SELECT inbox.actor, inbox.id FROM inbox JOIN (VALUES "
            f"{_values(2, len(part))}) AS v ON inbox.actor = v.column1 AND "
            "inbox.id = v.column2", _flat([(r[0], r[1]) for r in part])).fetchall())
    fresh: list[bool] = []
    new: list[tuple[str, str, str, float, bytes, int]] = []
    per_actor: dict[str, list[float]] = {}
    for actor, msg_id, kind, deliver_at, doc in rows:
        fresh.append((actor, msg_id) not in seen)
        if fresh[-1]:
            seen.add((actor, msg_id))
            at = per_actor.setdefault(actor, [])
            at.append(deliver_at)
            new.append((actor, msg_id, kind, deliver_at, doc, len(at)))
    if not new:
        return [0] * len(rows)
    # No savepoint: within the transaction's write lock nothing can take an id between the
    # check and the INSERT, so a failure here is not the caller's and fails the batch
    numbers: dict[tuple[str, str], int] = {}
    for part in _chunks(new):  # n: one past the actor's last, in the order given
        numbers.update(((a, i), n) for a, i, n in db.execute(
            "INSERT INTO inbox (actor, id, kind, n, deliver_at, doc) SELECT v.column1, "
            "v.column2, v.column3, COALESCE((SELECT last_n FROM sched WHERE actor = "
            f"v.column1), 0) + v.column6, v.column4, v.column5 FROM (VALUES "
            f"{_values(6, len(part))}) AS v RETURNING actor, id, n", _flat(part)).fetchall())
    now_ns = time.time_ns()
    sched = [(actor, len(at), min(at), now_ns, *key_hash(actor))
             for actor, at in per_actor.items()]
    for part in _chunks(sched):
        db.execute(
            "INSERT INTO sched (actor, last_n, due_at, ready_n, hash_hi, hash_lo) VALUES "
            f"{_values(6, len(part))} ON CONFLICT (actor) DO UPDATE SET "
            "last_n = last_n + excluded.last_n, hash_hi = COALESCE(hash_hi, excluded.hash_hi), "
            "hash_lo = COALESCE(hash_lo, excluded.hash_lo), "
            "ready_n = CASE WHEN excluded.due_at = 0 AND (due_at IS NULL OR due_at > 0) "
            "THEN excluded.ready_n ELSE ready_n END, "
            "due_at = CASE WHEN due_at IS NULL OR excluded.due_at < due_at "
            "THEN excluded.due_at ELSE due_at END", _flat(part))
    return [numbers[(row[0], row[1])] if made else 0 for row, made in zip(rows, fresh,
                                                                          strict=True)]


def settle_many(db: sqlite3.Connection, rows: Sequence[SettleRow]) -> bool:
    """Settle each actor's schedule row as `SqliteJournal.settle` does (without release), in
    one statement per chunk; False (nothing done) if an actor comes twice, as the later
    settle would read what the earlier one wrote."""
    if len({row[0] for row in rows}) != len(rows):
        return False
    now_ns = time.time_ns()
    for part in _chunks(rows):
        db.execute(
            "UPDATE sched SET "
            "ready_n = CASE WHEN sched.due_at = 0 AND d.due = 0 THEN sched.ready_n "
            "ELSE d.now_ns END, "
            "due_at = CASE WHEN d.busy AND (d.due IS NULL OR sched.lease_until < d.due) "
            "THEN sched.lease_until ELSE d.due END, "
            "ver = CASE WHEN d.keep THEN sched.ver ELSE d.ver END "
            "FROM (SELECT v.column1 AS actor, v.column2 AS owner, v.column5 AS busy, "
            "v.column6 AS ver, v.column7 AS keep, v.column8 AS now_ns, "
            "(SELECT MIN(deliver_at) FROM inbox WHERE inbox.actor = v.column1 AND "
            "consumed_at IS NULL AND (deliver_at > v.column3 OR (n > v.column4 AND NOT "
            f"(v.column5 AND kind = 'call')))) AS due FROM (VALUES {_values(8, len(part))}) "
            "AS v) AS d WHERE sched.actor = d.actor AND sched.owner = d.owner",
            _flat([(*row, now_ns) for row in part]))
    return True


class Conflict(Exception):
    """A commit's (actor, seq) is taken, or its lease epoch is fenced out."""


class _Refused(Exception):
    """A commit of the batch was fenced out: the batch goes one by one."""
