"""The journal on SQLite (WAL, synchronous=FULL by default): the embedded default.

Writes use group commit on a writer thread with its own connection: every write issued
while the previous transaction is being written joins the next one, so many actors share
one fsync and the event loop never waits for the disk. Each write still succeeds or fails
on its own (a conflicting append fails only its caller), and no caller resumes before the
transaction holding its write is durable. Reads use a second connection (WAL readers do
not block on the writer).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import EllipsisType
from typing import Any

from pydantic_core import from_json, to_json

from runtime.journal.store import CRASHED, ActorLease, Commit, Envelope, JournalConflict

SCHEMA = """
CREATE TABLE IF NOT EXISTS commits (
    actor TEXT NOT NULL, seq INTEGER NOT NULL, has_state INTEGER NOT NULL, doc BLOB NOT NULL,
    done_msg TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS commits_key ON commits (actor, seq);
CREATE INDEX IF NOT EXISTS commits_state ON commits (actor, seq) WHERE has_state = 1;
CREATE TABLE IF NOT EXISTS inbox (
    actor TEXT NOT NULL, id TEXT NOT NULL, kind TEXT NOT NULL, n INTEGER NOT NULL,
    deliver_at REAL NOT NULL, consumed_at REAL, doc BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS inbox_key ON inbox (actor, id);
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (actor, n) WHERE consumed_at IS NULL;
CREATE TABLE IF NOT EXISTS sched (
    actor TEXT PRIMARY KEY, last_n INTEGER NOT NULL DEFAULT 0, due_at REAL,
    ready_n INTEGER NOT NULL DEFAULT 0, owner TEXT, lease_until REAL NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0, ver TEXT);
CREATE INDEX IF NOT EXISTS sched_due ON sched (due_at, ready_n) WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS sched_owner ON sched (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS deliveries (
    actor TEXT NOT NULL, id TEXT NOT NULL, count INTEGER NOT NULL, at_seq INTEGER NOT NULL,
    PRIMARY KEY (actor, id));
CREATE TABLE IF NOT EXISTS dead_letters (
    actor TEXT NOT NULL, id TEXT NOT NULL, at REAL NOT NULL, doc BLOB NOT NULL,
    PRIMARY KEY (actor, id));
"""
MIGRATE_V1 = """
ALTER TABLE inbox RENAME COLUMN enq TO n;
DROP INDEX IF EXISTS inbox_due;
ALTER TABLE commits ADD COLUMN done_msg TEXT;
UPDATE commits SET done_msg = json_extract(CAST(doc AS TEXT), '$.run.msg')
    WHERE json_extract(CAST(doc AS TEXT), '$.kind') IS NOT NULL;
INSERT OR IGNORE INTO sched (actor, last_n, due_at)
    SELECT actor, MAX(n), CASE WHEN SUM(consumed_at IS NULL) > 0 THEN 0 END FROM inbox
    GROUP BY actor;
"""
MIGRATE_V2 = "ALTER TABLE sched ADD COLUMN ver TEXT;"
VERSION = 3
# Rowid tables: new rows append to the same few pages, and the unique indexes carry only
# the short keys, so one group commit touches far fewer pages than keyed tables would.
Write = Callable[[sqlite3.Connection], Any]


class SqliteJournal:
    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA (OFF is not durable)")
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite:///{self.path}"
        self._db = self._connect(synchronous)  # reads, on the event loop
        self._setup()
        self._writer = self._connect(synchronous)  # writes, on the writer thread
        self._lock = threading.Lock()
        self._batch: list[tuple[Write, asyncio.Future[Any]]] = []
        self._flushing = False
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="loom-journal")
        self.transactions = 0
        self.writes = 0

    def _setup(self) -> None:
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        columns = {r[1] for r in db.execute("PRAGMA table_info(inbox)")}
        sched = {r[1] for r in db.execute("PRAGMA table_info(sched)")}
        db.executescript(SCHEMA)
        if "enq" in columns:  # a journal written by Loom 0.1: number the inboxes, add a schedule
            db.executescript(f"BEGIN IMMEDIATE; {MIGRATE_V1} COMMIT;")
        elif sched and "ver" not in sched:  # Loom 0.2: runs are not pinned to code versions
            db.executescript(f"BEGIN IMMEDIATE; {MIGRATE_V2} COMMIT;")
        if version < VERSION:
            db.execute(f"PRAGMA user_version={VERSION}")

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                             timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        db.execute("PRAGMA wal_autocheckpoint=8192")
        db.execute("PRAGMA cache_size=-65536")
        return db

    # -- group commit ----------------------------------------------------------------------
    # Writes queue up while a transaction is being written and fsynced on the writer
    # thread; the next transaction takes all of them. The loop never waits for the disk.
    def _submit(self, write: Write) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._batch.append((write, fut))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._start_flush, loop)
        return fut

    def _start_flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch, self._batch = self._batch, []
        if not batch:
            self._flushing = False
            return
        done = loop.run_in_executor(self._thread, self._write_batch, batch)
        done.add_done_callback(lambda f: self._finish(loop, f))

    def _finish(self, loop: asyncio.AbstractEventLoop,
                done: asyncio.Future[list[tuple[asyncio.Future[Any], Any, Any]]]) -> None:
        for fut, value, error in done.result():
            if fut.done():
                continue
            if error is not None:
                fut.set_exception(error)
            else:
                fut.set_result(value)
        self._start_flush(loop)

    def _write_batch(self, batch: list[tuple[Write, asyncio.Future[Any]]]
                     ) -> list[tuple[asyncio.Future[Any], Any, BaseException | None]]:
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        db = self._writer
        try:
            db.execute("BEGIN IMMEDIATE")
            for write, fut in batch:
                # a savepoint per write: one failing write fails only its own caller
                db.execute("SAVEPOINT w")
                try:
                    results.append((fut, write(db), None))
                except Exception as exc:
                    db.execute("ROLLBACK TO w")
                    results.append((fut, None, exc))
                db.execute("RELEASE w")
            db.execute("COMMIT")
            self.transactions += 1
            self.writes += len(batch)
        except Exception as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            results = [(fut, None, exc) for _, fut in batch]
        return results

    # -- commits ---------------------------------------------------------------------------
    async def append(self, commit: Commit) -> None:
        doc = to_json(commit)
        done = commit["run"]["msg"] if "kind" in commit and commit.get("run") else None
        row = (commit["actor"], commit["seq"], int("state" in commit), doc, done)

        epoch = commit.get("epoch")

        def write(db: sqlite3.Connection) -> None:
            if epoch:  # the writer's lease must still be the newest: a stale holder is fenced
                found = db.execute("SELECT epoch FROM sched WHERE actor=?",
                                   (commit["actor"],)).fetchone()
                if found is not None and found[0] != epoch:
                    raise JournalConflict(
                        f"commit {commit['actor']}#{commit['seq']} of lease epoch {epoch} is "
                        f"fenced out by epoch {found[0]}")
            try:
                db.execute("INSERT INTO commits (actor, seq, has_state, doc, done_msg) "
                           "VALUES (?,?,?,?,?)", row)
            except sqlite3.IntegrityError:
                raise JournalConflict(
                    f"commit {commit['actor']}#{commit['seq']} already exists") from None

        await self._submit(write)

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    async def read(self, actor: str, after_seq: int = -1) -> list[Commit]:
        rows = self._query("SELECT doc FROM commits WHERE actor=? AND seq>? ORDER BY seq",
                           (actor, after_seq))
        return [from_json(r[0]) for r in rows]

    async def read_tail(self, actor: str) -> list[Commit]:
        rows = self._query(
            "SELECT doc FROM commits WHERE actor=? AND seq >= COALESCE((SELECT MAX(seq) "
            "FROM commits WHERE actor=? AND has_state=1), 0) ORDER BY seq", (actor, actor))
        return [from_json(r[0]) for r in rows]

    async def outcome(self, actor: str, msg_id: str) -> Commit | None:
        rows = self._query("SELECT doc FROM commits WHERE actor=? AND done_msg=? "
                           "ORDER BY seq DESC LIMIT 1", (actor, msg_id))
        return from_json(rows[0][0]) if rows else None

    # -- inbox -----------------------------------------------------------------------------
    async def enqueue(self, envelope: Envelope) -> bool:
        actor, deliver_at = envelope["target"], float(envelope.get("deliver_at", 0.0))
        doc = to_json(envelope)

        def write(db: sqlite3.Connection) -> bool:
            if db.execute("SELECT 1 FROM inbox WHERE actor=? AND id=?",
                          (actor, envelope["id"])).fetchone():
                return False
            n = db.execute(
                "INSERT INTO sched (actor, last_n, due_at, ready_n) VALUES (?1, 1, ?2, ?3) "
                "ON CONFLICT (actor) DO UPDATE SET last_n = last_n + 1, "
                "ready_n = CASE WHEN ?2 = 0 AND (due_at IS NULL OR due_at > 0) THEN ?3 "
                "ELSE ready_n END, "
                "due_at = CASE WHEN due_at IS NULL OR ?2 < due_at THEN ?2 ELSE due_at END "
                "RETURNING last_n", (actor, deliver_at, time.time_ns())).fetchone()[0]
            db.execute("INSERT INTO inbox (actor, id, kind, n, deliver_at, doc) VALUES "
                       "(?,?,?,?,?,?)", (actor, envelope["id"], envelope.get("kind") or "call",
                                         n, deliver_at, doc))
            return True

        inserted: bool = await self._submit(write)
        return inserted

    async def inbox(self, actor: str, now: float, *, calls: int | None = None) -> list[Envelope]:
        base = ("SELECT n, doc FROM inbox WHERE actor=? AND consumed_at IS NULL AND "
                "deliver_at<=?")
        if calls is None:
            rows = self._query(f"{base} ORDER BY n", (actor, now))
        else:
            rows = self._query(f"{base} AND kind != 'call' ORDER BY n", (actor, now))
            if calls:
                rows += self._query(f"{base} AND kind = 'call' ORDER BY n LIMIT ?",
                                    (actor, now, calls))
        out = []
        for n, doc in rows:
            env = from_json(doc)
            env["n"] = n
            out.append(env)
        return out

    async def consume(self, actor: str, ids: list[str], now: float) -> None:
        if not ids:
            return
        rows = [(now, actor, i) for i in ids]

        def write(db: sqlite3.Connection) -> None:
            db.executemany("UPDATE inbox SET consumed_at=? WHERE actor=? AND id=? AND "
                           "consumed_at IS NULL", rows)

        await self._submit(write)

    # -- schedule and ownership --------------------------------------------------------------
    @staticmethod
    def _pin(versions: Collection[str] | None) -> tuple[str, tuple[str, ...]]:
        if versions is None:
            return "", ()
        marks = ",".join("?" * len(versions))
        return f" AND (ver IS NULL OR ver IN ({marks}))", tuple(versions)

    async def due_actors(self, now: float, limit: int = 256, *, owner: str | None = None,
                         versions: Collection[str] | None = None) -> list[str]:
        free = "" if owner is None else " AND (owner IS NULL OR owner=? OR lease_until<?)"
        pin, vers = self._pin(versions)
        args: tuple[Any, ...] = (() if owner is None else (owner, now)) + vers
        ready = self._query(f"SELECT actor FROM sched WHERE due_at = 0{free}{pin} "
                            "ORDER BY due_at, ready_n LIMIT ?", (*args, limit))
        timed = self._query(f"SELECT actor FROM sched WHERE due_at > 0 AND due_at <= ?{free}"
                            f"{pin} ORDER BY due_at LIMIT ?", (now, *args, limit))
        return list(dict.fromkeys(r[0] for r in ready + timed))

    async def due_pinned(self, now: float, limit: int = 256, *, owner: str | None = None,
                         versions: Collection[str]) -> list[tuple[str, str]]:
        if not versions:
            return []
        free = "" if owner is None else " AND (owner IS NULL OR owner=? OR lease_until<?)"
        marks = ",".join("?" * len(versions))
        rows = self._query(
            f"SELECT actor, ver FROM sched WHERE due_at >= 0 AND due_at <= ? AND ver IN "
            f"({marks}){free} ORDER BY due_at, ready_n LIMIT ?",
            (now, *versions, *(() if owner is None else (owner, now)), limit))
        return [(r[0], r[1]) for r in rows]

    async def next_due(self, now: float, *,
                       versions: Collection[str] | None = None) -> float | None:
        pin, vers = self._pin(versions)
        rows = self._query(f"SELECT MIN(due_at) FROM sched WHERE due_at > ?{pin}", (now, *vers))
        return rows[0][0] if rows and rows[0][0] is not None else None

    async def acquire(self, actor: str, owner: str, now: float, ttl: float
                      ) -> ActorLease | None:
        def write(db: sqlite3.Connection) -> ActorLease | None:
            before = db.execute("SELECT owner, lease_until FROM sched WHERE actor=?",
                                (actor,)).fetchone()
            row = db.execute(
                "INSERT INTO sched (actor, owner, lease_until, epoch) VALUES (?1, ?2, ?3, 1) "
                "ON CONFLICT (actor) DO UPDATE SET "
                "epoch = CASE WHEN owner IS ?2 THEN epoch ELSE epoch + 1 END, "
                "owner = ?2, lease_until = ?3 "
                "WHERE owner IS NULL OR owner = ?2 OR lease_until < ?4 RETURNING epoch",
                (actor, owner, now + ttl, now)).fetchone()
            if row is None:
                return None
            taken = before is not None and (before[0] not in (None, owner) or (
                before[0] is None and before[1] == CRASHED))
            return ActorLease(int(row[0]), taken)

        lease: ActorLease | None = await self._submit(write)
        return lease

    async def renew(self, owner: str, now: float, ttl: float) -> set[str]:
        def write(db: sqlite3.Connection) -> set[str]:
            rows = db.execute(
                "UPDATE sched SET due_at = CASE WHEN due_at = lease_until THEN ?2 ELSE due_at "
                "END, lease_until = ?2 WHERE owner = ?1 RETURNING actor",
                (owner, now + ttl)).fetchall()
            return {r[0] for r in rows}

        held: set[str] = await self._submit(write)
        return held

    async def settle(self, actor: str, owner: str, *, now: float, seen_n: int, busy: bool,
                     release: bool = False, version: str | EllipsisType | None = ...) -> None:
        keep = isinstance(version, EllipsisType)
        ver = None if isinstance(version, EllipsisType) else version

        def write(db: sqlite3.Connection) -> None:
            due = db.execute(
                "SELECT MIN(deliver_at) FROM inbox WHERE actor=?1 AND consumed_at IS NULL AND "
                "(deliver_at > ?2 OR (n > ?3 AND NOT (?4 AND kind = 'call')))",
                (actor, now, seen_n, int(busy))).fetchone()[0]
            # an actor that stays ready keeps its place in the ready order
            if release:
                db.execute("UPDATE sched SET ready_n = CASE WHEN due_at = 0 AND ?3 = 0 THEN "
                           "ready_n ELSE ?4 END, due_at=?3, owner=NULL, lease_until=0, "
                           "ver = CASE WHEN ?6 THEN ver ELSE ?5 END WHERE actor=?1 AND owner=?2",
                           (actor, owner, due, time.time_ns(), ver, keep))
            else:
                db.execute(
                    "UPDATE sched SET ready_n = CASE WHEN due_at = 0 AND ?3 = 0 THEN ready_n "
                    "ELSE ?4 END, due_at = CASE WHEN ?5 AND (?3 IS NULL OR lease_until < ?3)"
                    " THEN lease_until ELSE ?3 END, ver = CASE WHEN ?7 THEN ver ELSE ?6 END "
                    "WHERE actor=?1 AND owner=?2",
                    (actor, owner, due, time.time_ns(), int(busy), ver, keep))

        await self._submit(write)

    async def owners(self) -> dict[str, int]:
        rows = self._query("SELECT owner, COUNT(*) FROM sched WHERE owner IS NOT NULL "
                           "GROUP BY owner", ())
        return {r[0]: r[1] for r in rows}

    async def run_versions(self) -> dict[str, int]:
        rows = self._query("SELECT ver, COUNT(*) FROM sched WHERE ver IS NOT NULL GROUP BY ver",
                           ())
        return {r[0]: r[1] for r in rows}

    async def expire_owner(self, owner: str) -> int:
        def write(db: sqlite3.Connection) -> int:
            return db.execute("UPDATE sched SET owner = NULL, lease_until = ?, due_at = CASE "
                              "WHEN due_at IS NULL THEN NULL ELSE 0 END WHERE owner = ?",
                              (CRASHED, owner)).rowcount

        expired: int = await self._submit(write)
        return expired

    # -- deliveries and dead letters -----------------------------------------------------------
    async def bump_delivery(self, actor: str, msg_id: str, at_seq: int) -> int:
        def write(db: sqlite3.Connection) -> int:
            if not db.execute("SELECT 1 FROM inbox WHERE actor=? AND id=? AND consumed_at IS "
                              "NULL", (actor, msg_id)).fetchone():
                return 0
            row = db.execute(
                "INSERT INTO deliveries (actor, id, count, at_seq) VALUES (?1,?2,1,?3) ON "
                "CONFLICT (actor, id) DO UPDATE SET count = CASE WHEN at_seq = ?3 THEN "
                "count + 1 ELSE 1 END, at_seq = ?3 RETURNING count",
                (actor, msg_id, at_seq)).fetchone()
            return int(row[0])

        count: int = await self._submit(write)
        return count

    async def put_dead_letter(self, entry: dict[str, Any]) -> None:
        row = (entry["actor"], entry["msg"], float(entry.get("at", 0.0)), to_json(entry))

        def write(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO dead_letters (actor, id, at, doc) "
                       "VALUES (?,?,?,?)", row)

        await self._submit(write)

    async def dead_letters(self, limit: int = 1000) -> list[dict[str, Any]]:
        rows = self._query("SELECT doc FROM dead_letters ORDER BY at, actor, id LIMIT ?",
                           (limit,))
        return [from_json(r[0]) for r in rows]

    async def drop_dead_letter(self, actor: str, msg_id: str) -> bool:
        def write(db: sqlite3.Connection) -> bool:
            return db.execute("DELETE FROM dead_letters WHERE actor=? AND id=?",
                              (actor, msg_id)).rowcount == 1

        dropped: bool = await self._submit(write)
        return dropped

    async def actors(self, prefix: str = "") -> list[str]:
        rows = self._query("SELECT DISTINCT actor FROM commits WHERE actor >= ? AND actor < ? "
                           "ORDER BY actor", (prefix, prefix + "\U0010ffff"))
        return [r[0] for r in rows]

    async def purge_tombstones(self, older_than: float) -> int:
        def write(db: sqlite3.Connection) -> int:
            return db.execute("DELETE FROM inbox WHERE consumed_at IS NOT NULL AND "
                              "consumed_at < ?", (older_than,)).rowcount

        purged: int = await self._submit(write)
        return purged

    async def close(self) -> None:
        while self._flushing or self._batch:
            await asyncio.sleep(0.001)
        self._thread.shutdown(wait=True)
        with self._lock:
            self._db.close()
        self._writer.close()
