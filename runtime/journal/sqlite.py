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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from pydantic_core import from_json, to_json

from runtime.journal.store import Commit, Envelope, JournalConflict

SCHEMA = """
CREATE TABLE IF NOT EXISTS commits (
    actor TEXT NOT NULL, seq INTEGER NOT NULL, has_state INTEGER NOT NULL, doc BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS commits_key ON commits (actor, seq);
CREATE INDEX IF NOT EXISTS commits_state ON commits (actor, seq) WHERE has_state = 1;
CREATE TABLE IF NOT EXISTS inbox (
    actor TEXT NOT NULL, id TEXT NOT NULL, kind TEXT NOT NULL, enq INTEGER NOT NULL,
    deliver_at REAL NOT NULL, consumed_at REAL, doc BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS inbox_key ON inbox (actor, id);
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (actor, enq) WHERE consumed_at IS NULL;
CREATE INDEX IF NOT EXISTS inbox_due ON inbox (deliver_at) WHERE consumed_at IS NULL;
"""
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
        self._db.executescript(SCHEMA)
        self._writer = self._connect(synchronous)  # writes, on the writer thread
        self._lock = threading.Lock()
        self._batch: list[tuple[Write, asyncio.Future[Any]]] = []
        self._flushing = False
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="loom-journal")
        self.transactions = 0
        self.writes = 0

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
        row = (commit["actor"], commit["seq"], int("state" in commit), doc)

        def write(db: sqlite3.Connection) -> None:
            try:
                db.execute("INSERT INTO commits (actor, seq, has_state, doc) VALUES (?,?,?,?)",
                           row)
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

    # -- inbox -----------------------------------------------------------------------------
    async def enqueue(self, envelope: Envelope) -> bool:
        row = (envelope["target"], envelope["id"], envelope.get("kind", "call"),
               time.time_ns(), envelope.get("deliver_at", 0.0), to_json(envelope))

        def write(db: sqlite3.Connection) -> bool:
            cur = db.execute("INSERT INTO inbox (actor, id, kind, enq, deliver_at, doc) VALUES "
                             "(?,?,?,?,?,?) ON CONFLICT (actor, id) DO NOTHING", row)
            return cur.rowcount == 1

        inserted: bool = await self._submit(write)
        return inserted

    async def inbox(self, actor: str, now: float, *, calls: int | None = None) -> list[Envelope]:
        if calls is None:
            rows = self._query(
                "SELECT doc FROM inbox WHERE actor=? AND consumed_at IS NULL AND deliver_at<=? "
                "ORDER BY enq, id", (actor, now))
        else:
            rows = self._query(
                "SELECT doc FROM inbox WHERE actor=? AND consumed_at IS NULL AND deliver_at<=? "
                "AND kind != 'call' ORDER BY enq, id", (actor, now))
            if calls:
                rows += self._query(
                    "SELECT doc FROM inbox WHERE actor=? AND consumed_at IS NULL AND "
                    "deliver_at<=? AND kind = 'call' ORDER BY enq, id LIMIT ?",
                    (actor, now, calls))
        return [from_json(r[0]) for r in rows]

    async def consume(self, actor: str, ids: list[str], now: float) -> None:
        if not ids:
            return
        rows = [(now, actor, i) for i in ids]

        def write(db: sqlite3.Connection) -> None:
            db.executemany("UPDATE inbox SET consumed_at=? WHERE actor=? AND id=? AND "
                           "consumed_at IS NULL", rows)

        await self._submit(write)

    async def due_actors(self, now: float, limit: int = 1000, *,
                         calls: bool = True) -> list[str]:
        kinds = "" if calls else " AND kind != 'call'"
        rows = self._query("SELECT DISTINCT actor FROM inbox WHERE consumed_at IS NULL AND "
                           f"deliver_at<=?{kinds} LIMIT ?", (now, limit))
        return [r[0] for r in rows]

    async def next_due(self, now: float) -> float | None:
        rows = self._query("SELECT MIN(deliver_at) FROM inbox WHERE consumed_at IS NULL AND "
                           "deliver_at > ?", (now,))
        return rows[0][0] if rows and rows[0][0] is not None else None

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
