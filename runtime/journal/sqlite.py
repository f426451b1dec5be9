"""The journal on SQLite (WAL, synchronous=FULL by default): the embedded default.

Writes use group commit with their own connection: every write issued while the previous
transaction is being written joins the next one, so many actors share one fsync and the
event loop never waits for the disk (the COMMIT runs on a writer thread; under load, whole
batches of bulk writes run in a writer process, sqlite_writer.py). Each write still succeeds
or fails on its own (a conflicting append fails only its caller), and no caller resumes
before the transaction holding its write is durable. Reads use a second connection (WAL
readers do not block on the writer). A SQLite failure reaches callers as a retryable
`errors.StorageError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import EllipsisType
from typing import Any

from pydantic_core import from_json, to_json

from runtime import errors
from runtime.futures import Outcome, resolve_all
from runtime.journal import runs as run_index
from runtime.journal import sqlite_bulk, sqlite_compact, sqlite_runs, sqlite_writer
from runtime.journal.keyhash import Scope, key_hash
from runtime.journal.store import CRASHED, ActorLease, Commit, Envelope, JournalConflict

SCHEMA = """
CREATE TABLE IF NOT EXISTS commits (
    actor TEXT NOT NULL, seq INTEGER NOT NULL, has_state INTEGER NOT NULL, doc BLOB NOT NULL,
    done_msg TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS commits_key ON commits (actor, seq);
CREATE TABLE IF NOT EXISTS inbox (
    actor TEXT NOT NULL, id TEXT NOT NULL, kind TEXT NOT NULL, n INTEGER NOT NULL,
    deliver_at REAL NOT NULL, consumed_at REAL, doc BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS inbox_key ON inbox (actor, id);
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (actor, n) WHERE consumed_at IS NULL;
CREATE INDEX IF NOT EXISTS inbox_consumed ON inbox (consumed_at) WHERE consumed_at IS NOT NULL;
CREATE TABLE IF NOT EXISTS sched (
    actor TEXT PRIMARY KEY, last_n INTEGER NOT NULL DEFAULT 0, due_at REAL,
    ready_n INTEGER NOT NULL DEFAULT 0, owner TEXT, lease_until REAL NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0, ver TEXT, hash_hi INTEGER, hash_lo INTEGER);
CREATE INDEX IF NOT EXISTS sched_due ON sched (due_at, ready_n) WHERE due_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS sched_owner ON sched (owner) WHERE owner IS NOT NULL;
CREATE TABLE IF NOT EXISTS deliveries (
    actor TEXT NOT NULL, id TEXT NOT NULL, count INTEGER NOT NULL, at_seq INTEGER NOT NULL,
    PRIMARY KEY (actor, id));
CREATE TABLE IF NOT EXISTS dead_letters (
    actor TEXT NOT NULL, id TEXT NOT NULL, at REAL NOT NULL, doc BLOB NOT NULL,
    PRIMARY KEY (actor, id));
CREATE TABLE IF NOT EXISTS runs (
    actor TEXT NOT NULL, msg TEXT NOT NULL, type TEXT NOT NULL, ident TEXT NOT NULL,
    status TEXT NOT NULL, started REAL NOT NULL, ended REAL, doc BLOB NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS runs_key ON runs (actor, msg);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started, actor, msg);
CREATE INDEX IF NOT EXISTS runs_type ON runs (type, started);
CREATE INDEX IF NOT EXISTS runs_status ON runs (status, started);
CREATE INDEX IF NOT EXISTS runs_ident ON runs (ident, started);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS run_activities (
    activity TEXT NOT NULL, actor TEXT NOT NULL, msg TEXT NOT NULL, started REAL NOT NULL,
    PRIMARY KEY (activity, started, actor, msg)) WITHOUT ROWID;
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
MIGRATE_V7 = """
ALTER TABLE sched ADD COLUMN hash_hi INTEGER;
ALTER TABLE sched ADD COLUMN hash_lo INTEGER;
"""
VERSION = 7  # 4: the run index (tables runs, run_activities), backfilled from the commits;
# 5: the index is brought up to date in batches, behind a watermark (meta 'runs_indexed');
# 6: no index of the commits that carry state (read_tail walks back from the newest commit:
# a B-tree fewer to write in every transaction); 7: schedule rows carry their actor's
# partition hash (keyhash.py), so a worker's due poll asks for its own partitions only;
# tombstones are indexed by when they were consumed, for compaction (sqlite_compact.py)
INDEX_EVERY = 256  # commits between two catch-ups of the run index (or INDEX_EVERY_S)
INDEX_EVERY_S = 1.0
INDEX_RETRY_MAX_S = 30.0  # after failed catch-ups, a pause doubling from INDEX_EVERY_S to this
COMPACT_PAUSE_S = 0.1  # between two compaction steps while a backlog lasts
INDEX_BATCH = sqlite_runs.INDEX_BATCH
UNFOLDED_MAX = 4 * INDEX_BATCH  # appended commits kept for the catch-up (beyond: decoded)
LEASE_WAIT_S = 0.1  # a wait for the write lock from which a lease counts from the write
PIPELINE = 4  # batches the writer process holds at once: it starts the next on its COMMIT
PROCESS_AFTER = 64  # transactions before the writer process starts (short-lived journals
# never pay for one)
# Rowid tables: new rows append to the same few pages, and the unique indexes carry only
# the short keys, so one group commit touches far fewer pages than keyed tables would.
Write = Callable[[sqlite3.Connection], Any]
# a write that can also go with others of its kind: ("append", (row, tombstones, what the
# run index folds of it or None)) or
# ("enqueue", row), in sqlite_bulk's shapes
Bulk = tuple[str, Any] | None
Pending = tuple[Write, "asyncio.Future[Any]", Bulk]
Result = Outcome
log = logging.getLogger("loom.journal")


_decode = sqlite_runs.decode


def _decode_rows(rows: list[Any]) -> list[Any]:
    """The first column of each row, decoded: in one pass of `from_json` (replay reads
    thousands), one by one through `_decode` only if a document is too deep for it. Keys
    are cached, values not: a run's digests and results are unique, and looking each up in
    the cache cost a fifth of the decode (10,000 steps in 157 commits: 18.7 -> 14.9 ms)."""
    try:
        return [from_json(r[0], cache_strings="keys") for r in rows]
    except ValueError:
        return [_decode(r[0]) for r in rows]


def _storage_error(path: Path, what: str, exc: BaseException) -> BaseException:
    """What a caller is handed for a SQLite failure: a retryable StorageError saying what
    failed, with SQLite's message, error code and name (in `details`; the cause is the
    SQLite error). Anything else (JournalConflict) as it is."""
    if not isinstance(exc, sqlite3.Error):
        return exc
    name = getattr(exc, "sqlite_errorname", None)
    why = f"{exc}; the writes it held may or may not have landed" if isinstance(
        exc, sqlite_writer.WriterGone) else f"{exc}{f' ({name})' if name else ''}"
    error = errors.StorageError(f"SQLite journal {path}: {what} failed: {why}", details={
        "sqlite_error": type(exc).__name__, "sqlite_message": str(exc),
        "sqlite_errorcode": getattr(exc, "sqlite_errorcode", None), "sqlite_errorname": name})
    error.__cause__ = exc
    return error


def _entry_row(envelope: Envelope) -> sqlite_bulk.EnqueueRow:
    """An inbox entry as the bulk statements write it."""
    return (envelope["target"], envelope["id"], envelope.get("kind") or "call",
            float(envelope.get("deliver_at", 0.0)), to_json(envelope))


def _enqueue_one(db: sqlite3.Connection, entry: sqlite_bulk.EnqueueRow) -> int:
    """Create the entry numbered one past its actor's last, unless its id is already in that
    inbox (0), and bring the schedule row along."""
    actor, msg_id, kind, deliver_at, doc = entry
    made = db.execute(
        "INSERT INTO inbox (actor, id, kind, n, deliver_at, doc) VALUES (?1, ?2, ?3, "
        "COALESCE((SELECT last_n FROM sched WHERE actor = ?1), 0) + 1, ?4, ?5) "
        "ON CONFLICT (actor, id) DO NOTHING RETURNING n",
        (actor, msg_id, kind, deliver_at, doc)).fetchone()
    if made is None:
        return 0
    db.execute(
        "INSERT INTO sched (actor, last_n, due_at, ready_n, hash_hi, hash_lo) VALUES "
        "(?1, 1, ?2, ?3, ?4, ?5) ON CONFLICT (actor) DO UPDATE SET last_n = last_n + 1, "
        "hash_hi = COALESCE(hash_hi, ?4), hash_lo = COALESCE(hash_lo, ?5), "
        "ready_n = CASE WHEN ?2 = 0 AND (due_at IS NULL OR due_at > 0) THEN ?3 "
        "ELSE ready_n END, "
        "due_at = CASE WHEN due_at IS NULL OR ?2 < due_at THEN ?2 ELSE due_at END",
        (actor, deliver_at, time.time_ns(), *key_hash(actor)))
    return int(made[0])


class SqliteJournal:
    """The embedded journal: one SQLite file (WAL), writes in group commits on one writer
    connection. It compacts itself under the Cosmos journal's rule (sqlite_compact.py):
    a step at most every `compact_every_s` while commits are appended (None: never; or
    call `compact()`), judging ages by `clock`: the clock the runtime writes its times with
    (commit `ts`, tombstones' `consumed_at`).

    Every SQLite failure reaches a caller as a retryable `errors.StorageError` (a write that
    another one fenced: `JournalConflict`)."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL",
                 tombstone_ttl_s: float = 7 * 86400.0, commit_margin_s: float = 3600.0,
                 compact_every_s: float | None = 60.0,
                 writer_process_after: int | None = PROCESS_AFTER,
                 clock: Callable[[], float] = time.time) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError("synchronous must be FULL, NORMAL or EXTRA (OFF is not durable)")
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.url = f"sqlite:///{self.path}"
        self.consumes_with_append = True
        try:
            self._db = self._connect(synchronous)  # reads, on the event loop
            try:
                self._setup()
                self._writer = self._connect(synchronous)  # writes (see group commit)
                self._writer.execute("PRAGMA busy_timeout=0")
            except BaseException:
                self._db.close()
                raise
        except sqlite3.Error as exc:
            raise _storage_error(self.path, "opening", exc) from exc
        self._lock = threading.Lock()
        self._batch: list[Pending] = []
        self._flushing = False
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="loom-journal")
        self._relief = sqlite_writer.WalRelief()  # the WAL's space after a full disk
        self.transactions = 0
        self.writes = 0
        self._unindexed = 0  # commits appended since the last catch-up was queued
        self._indexed_at = time.monotonic()
        self._index_failures = 0  # catch-ups failed in a row
        self._index_paused_until = 0.0  # no catch-up for appends before (after a failure)
        # what the run index needs of the commits this journal landed and the catch-up has
        # not folded yet: it takes them from here instead of decoding their rows again
        # (rows written elsewhere it decodes; see _landed)
        self._unfolded: dict[tuple[str, int], Commit] = {}
        self.tombstone_ttl_s = tombstone_ttl_s
        self.commit_margin_s = commit_margin_s
        self.compact_every_s = compact_every_s
        self.clock = clock
        self._compact_at = time.monotonic() + (compact_every_s or 0.0)
        self._compacting = self._closing = False
        # the writer process (sqlite_writer.py): started once `writer_process_after`
        # transactions went through here (None: never); given up for good if it dies
        self._process_after = writer_process_after
        self._want_process = writer_process_after is not None and str(path) != ":memory:"
        self._process: sqlite_writer.WriterProcess | None = None
        self._process_loop: asyncio.AbstractEventLoop | None = None
        self._sent: list[list[Pending]] = []  # batches the process is writing, in order
        self._loop: asyncio.AbstractEventLoop | None = None

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
        if sched and "hash_hi" not in sched:  # before schema 7
            self._migrate_v7(db)
        if version < VERSION:
            db.execute("DROP INDEX IF EXISTS commits_state")
            if version < 4:
                self._backfill_runs(db)
            # up to here, every commit is in the index (backfilled, or indexed as written by
            # schema 4; schema 5 already has its own watermark)
            db.execute("INSERT INTO meta (key, value) SELECT 'runs_indexed', COALESCE(MAX("
                       f"rowid), 0) FROM commits WHERE true ON CONFLICT (key) DO UPDATE SET "
                       f"value = CASE WHEN {version} < 5 THEN excluded.value ELSE value END")
            db.execute(f"PRAGMA user_version={VERSION}")
        db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('runs_indexed', 0)")

    @staticmethod
    def _migrate_v7(db: sqlite3.Connection) -> None:
        """Add the schedule's partition hash and fill it, in one transaction; a process
        that opened the file at the same moment may have done it first."""
        db.execute("BEGIN IMMEDIATE")
        try:
            if "hash_hi" not in {r[1] for r in db.execute("PRAGMA table_info(sched)")}:
                for statement in MIGRATE_V7.strip().splitlines():
                    db.execute(statement)
                actors = [r[0] for r in db.execute("SELECT actor FROM sched")]
                db.executemany("UPDATE sched SET hash_hi = ?2, hash_lo = ?3 WHERE actor = ?1",
                               [(a, *key_hash(a)) for a in actors])
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @staticmethod
    def _backfill_runs(db: sqlite3.Connection) -> int:
        """Build the run index from the commits already written (a journal of Loom before
        the index): one pass in (actor, seq) order, in one transaction."""
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("DELETE FROM runs")
            db.execute("DELETE FROM run_activities")
            rows: dict[tuple[str, str], run_index.Run] = {}
            for (doc,) in db.execute("SELECT doc FROM commits ORDER BY actor, seq"):
                commit = _decode(doc)
                run = commit.get("run")
                if not isinstance(run, dict):
                    continue
                key = (str(commit["actor"]), str(run.get("msg")))
                row = run_index.fold(rows.get(key), commit)
                if row is not None:
                    rows[key] = row
            sqlite_runs.write_runs(db, {}, rows, to_json)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(rows)

    def _connect(self, synchronous: str) -> sqlite3.Connection:
        self._synchronous = synchronous
        return sqlite_writer.connect(str(self.path), synchronous)

    # -- group commit ----------------------------------------------------------------------
    # Writes queue up while a transaction is being committed; the next transaction takes all
    # of them. Its statements run on the event loop (a few, in bulk: microseconds, and no
    # trip through the GIL for each one, which a writer thread pays while the loop runs);
    # the COMMIT, which writes and fsyncs, runs on the writer thread, so the loop never
    # waits for the disk. If another process holds the write lock, the whole transaction
    # goes to the writer thread, which waits for the lock there.
    def _submit(self, write: Write, bulk: Bulk = None) -> asyncio.Future[Any]:
        loop = self._loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._batch.append((write, fut, bulk))
        if not self._flushing:
            self._flushing = True
            loop.call_soon(self._flush, loop)
        return fut

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        batch = self._batch
        if not batch:
            self._flushing = False
            return
        if self._want_process and self.transactions >= (self._process_after or 0):
            self._start_process(loop)
        elif self._process is not None and self._process_loop is not loop:
            self._move_process(loop)
        process = self._process
        if self._sent or (process is not None and
                          all(bulk is not None for _, _, bulk in batch)):
            if process is None or len(self._sent) >= PIPELINE or \
                    any(bulk is None for _, _, bulk in batch):
                return  # an answer flushes again (the batch waits, _flushing stays set)
            self._batch = []
            self._send(loop, process, batch)
            self._flushing = False  # the next write may go while this batch is written
            return
        self._batch = []
        db = self._writer
        if self._relief.due:  # after a full disk the thread checkpoints first (WalRelief)
            done = loop.run_in_executor(self._thread, self._write_batch, batch)
            done.add_done_callback(lambda f: self._finish(loop, f))
            return
        try:
            db.execute("BEGIN IMMEDIATE")  # no wait (busy_timeout 0): see above
        except sqlite3.OperationalError:
            done = loop.run_in_executor(self._thread, self._write_batch, batch)
        except Exception as exc:  # a closed or broken connection: the batch fails with it,
            self._resolve([(fut, None, exc) for _, fut, _ in batch])  # and the chain goes on
            loop.call_soon(self._flush, loop)
            return
        else:
            try:
                results = self._in_bulk(db, batch)
            except Exception:
                with contextlib.suppress(sqlite3.Error):  # the thread begins afresh anyway
                    db.execute("ROLLBACK")
                done = loop.run_in_executor(self._thread, self._write_batch, batch)
            else:
                done = loop.run_in_executor(self._thread, self._commit, batch, results)
        done.add_done_callback(lambda f: self._finish(loop, f))

    # -- the writer process (sqlite_writer.py) -------------------------------------------------
    # A batch of bulk writes only goes to the process as one message, sent from the loop;
    # the loop reads the answer when its pipe is readable (no thread in between: a thread
    # would wait for the GIL twice a batch). Anything else runs here, as above.
    def _start_process(self, loop: asyncio.AbstractEventLoop) -> None:
        self._want_process = False  # one start only
        if self._closing:
            return
        try:
            process = sqlite_writer.WriterProcess(str(self.path), self._synchronous)
        except Exception as exc:  # the writes go on here
            log.warning("journal writer process did not start (writes stay in process): %s",
                        exc)
            return
        try:
            loop.add_reader(process.fileno(), self._answered, loop, process)
        except Exception as exc:  # a loop that cannot watch a pipe: the writes go on here
            log.warning("journal writer process unused (%s): writes stay in process", exc)
            process.close(timeout=1.0)
            return
        self._process = process
        self._process_loop = loop
        self._unfolded.clear()  # from now on the process runs the catch-ups

    def _move_process(self, loop: asyncio.AbstractEventLoop) -> None:
        """The journal is used from another event loop (the last one ended): answers are
        read there from now on. Batches sent from the old loop cannot be answered to it, so
        a process still holding some is let go (it finishes them and exits)."""
        process, old = self._process, self._process_loop
        assert process is not None and old is not None
        if self._sent:
            self._sent = []
            self._drop_process(old)
            self._want_process = True
            return
        if not old.is_closed():
            old.remove_reader(process.fileno())
        self._process_loop = loop
        loop.add_reader(process.fileno(), self._answered, loop, process)

    def _send(self, loop: asyncio.AbstractEventLoop, process: sqlite_writer.WriterProcess,
              batch: list[Pending]) -> None:
        ops: list[sqlite_writer.Op] = []
        for _, _, bulk in batch:
            assert bulk is not None
            kind, data = bulk  # (what the run index folds stays here)
            ops.append((kind, data[:2] if kind == "append" else
                        data[:4] if kind == "accept" else data))
        self._sent.append(batch)
        try:
            if process.send(ops):  # the pipe is full: the rest as it drains (never blocking:
                loop.add_writer(process.out_fileno(), self._drain, loop, process)  # see there)
        except sqlite_writer.WriterGone as exc:
            self._answered(loop, process, gone=exc)

    def _drain(self, loop: asyncio.AbstractEventLoop,
               process: sqlite_writer.WriterProcess) -> None:
        try:
            if not process.flush():
                loop.remove_writer(process.out_fileno())
        except sqlite_writer.WriterGone as exc:
            loop.remove_writer(process.out_fileno())
            self._answered(loop, process, gone=exc)

    def _answered(self, loop: asyncio.AbstractEventLoop,
                  process: sqlite_writer.WriterProcess, *,
                  gone: sqlite_writer.WriterGone | None = None) -> None:
        try:
            if gone is not None:
                raise gone
            answers = process.receive()
        except sqlite_writer.WriterGone as exc:  # landed or not, as a failed COMMIT
            log.warning("%s; writes stay in process from now on", exc)
            self._drop_process(loop)
            lost, self._sent = [item for sent in self._sent for item in sent], []
            self._resolve([(fut, None, exc) for _, fut, _ in lost])
            self._flush(loop)
            return
        batch = self._sent.pop(0) if self._sent else []
        if isinstance(answers, Exception):  # rolled back as a whole: again, each on its own
            done = loop.run_in_executor(self._thread, self._write_batch, batch)
            done.add_done_callback(lambda f: self._finish(loop, f))
            return
        results: list[Result] = [
            (fut, value, None) if kind == "ok" else (fut, None, JournalConflict(value))
            for (_, fut, _), (kind, value) in zip(batch, answers, strict=True)]
        self.transactions += 1
        self.writes += len(batch)
        self._landed(batch, results)
        resolve_all(results)
        self._flush(loop)

    @property
    def writer_pid(self) -> int | None:
        """The writer process's pid while one runs."""
        return self._process.pid if self._process is not None else None

    def _drop_process(self, loop: asyncio.AbstractEventLoop | None) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        loop = self._process_loop
        if loop is not None and not loop.is_closed():
            loop.remove_reader(process.fileno())
            loop.remove_writer(process.out_fileno())
        process.close(timeout=1.0)

    def _commit(self, batch: list[Pending], results: list[Result]) -> list[Result]:
        db = self._writer
        try:
            db.execute("COMMIT")
        except Exception as exc:  # every write of the batch fails; the journal goes on
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            self._relief.after_failure(db, exc, committing=True)
            return [(fut, None, exc) for _, fut, _ in batch]
        self.transactions += 1
        self.writes += len(batch)
        self._landed(batch, results)
        return results

    def _landed(self, batch: list[Pending], results: list[Result]) -> None:
        """After a COMMIT: what the run index folds of each commit it landed, for the
        catch-up (a row with that (actor, seq) can only be this commit's: the key is
        unique). Registered before the next transaction begins, so no catch-up can meet a
        row of a commit whose append failed."""
        if self._process is not None:  # the process folds the index: it decodes the rows
            return
        landed = {id(fut): value for fut, value, error in results if error is None}
        for _, fut, bulk in batch:
            if bulk is None or id(fut) not in landed:
                continue
            if bulk[0] == "append":
                row, _, part = bulk[1]
            elif bulk[0] == "accept" and landed[id(fut)] == (bulk[1][1], None):
                _, _, row, _, part = bulk[1]  # the entry became n: the commit went with it
            else:
                continue
            if part is not None and len(self._unfolded) < UNFOLDED_MAX:
                self._unfolded[(row[0], row[1])] = part

    def _finish(self, loop: asyncio.AbstractEventLoop,
                done: asyncio.Future[list[Result]]) -> None:
        self._resolve(done.result())
        self._flush(loop)

    def _resolve(self, results: list[Result]) -> None:
        """Hand each writer its outcome; a SQLite failure as a StorageError."""
        resolve_all([(fut, value, None if error is None else
                      _storage_error(self.path, "write", error))
                     for fut, value, error in results])

    def _write_batch(self, batch: list[Pending]) -> list[Result]:
        """One transaction for the whole batch. A write may fail alone only with
        JournalConflict, which it raises before it changes anything (a failed statement is
        undone by SQLite itself), so no savepoints are needed: they cost two statements a
        write. Appends, enqueues and settles go in bulk (sqlite_bulk). Any other failure rolls the
        batch back and runs it again with a savepoint per write, so that only the failing
        write fails."""
        self._relief.before_write(self._writer)
        try:
            _begin_waiting(self._writer)
        except Exception as exc:  # the lock never came (or the file is broken): no second wait
            return [(fut, None, exc) for _, fut, _ in batch]
        try:
            return self._transaction(batch, savepoints=False, begun=True)
        except Exception:
            pass  # rolled back: again, each write on its own
        try:
            return self._transaction(batch, savepoints=True)
        except Exception as exc:
            return [(fut, None, exc) for _, fut, _ in batch]

    def _transaction(self, batch: list[Pending], *, savepoints: bool,
                     begun: bool = False) -> list[Result]:
        db = self._writer
        if not begun:
            _begin_waiting(db)
        committing = False
        try:
            if savepoints:
                results = [self._one(db, write, fut, savepoint=True) for write, fut, _ in batch]
            else:
                results = self._in_bulk(db, batch)
            committing = True
            db.execute("COMMIT")
        except BaseException as exc:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self._relief.after_failure(db, exc, committing=committing)
            raise
        self.transactions += 1
        self.writes += len(batch)
        self._landed(batch, results)
        return results

    @staticmethod
    def _one(db: sqlite3.Connection, write: Write, fut: asyncio.Future[Any], *,
             savepoint: bool) -> Result:
        if savepoint:
            db.execute("SAVEPOINT w")
        try:
            result: Result = (fut, write(db), None)
        except Exception as exc:
            if savepoint:
                db.execute("ROLLBACK TO w")
            elif not isinstance(exc, JournalConflict):
                raise
            result = (fut, None, exc)
        if savepoint:
            db.execute("RELEASE w")
        return result

    def _in_bulk(self, db: sqlite3.Connection, batch: list[Pending]) -> list[Result]:
        """The enqueues, then the other writes, then the settles, then the appends (see
        sqlite_bulk for why any order of one batch is a valid one)."""
        kinds: dict[str, list[Pending]] = {"enqueue": [], "append": [], "settle": [], "": []}
        for item in batch:  # (an entry with its commit goes as one write of its own)
            kinds.get(item[2][0] if item[2] else "", kinds[""]).append(item)
        results: list[Result] = []
        enqueues = kinds["enqueue"]
        if len(enqueues) > 1:
            created = sqlite_bulk.enqueue_many(db, [b[1] for _, _, b in enqueues if b])
            results += [(fut, made, None)
                        for (_, fut, _), made in zip(enqueues, created, strict=True)]
        else:
            results += [self._one(db, w, f, savepoint=False) for w, f, _ in enqueues]
        results += [self._one(db, w, f, savepoint=False) for w, f, _ in kinds[""]]
        settles = kinds["settle"]
        if len(settles) > 1 and sqlite_bulk.settle_many(db, [b[1] for _, _, b in settles if b]):
            results += [(fut, None, None) for _, fut, _ in settles]
        else:
            results += [self._one(db, w, f, savepoint=False) for w, f, _ in settles]
        appends = kinds["append"]
        items = [b[1] for _, _, b in appends if b]
        if len(appends) > 1 and sqlite_bulk.append_many(
                db, [row for row, _, _ in items], [t for _, tomb, _ in items for t in tomb]):
            results += [(fut, None, None) for _, fut, _ in appends]
        else:
            results += [self._one(db, w, f, savepoint=False) for w, f, _ in appends]
        return results

    # -- commits ---------------------------------------------------------------------------
    async def append(self, commit: Commit) -> None:
        row, tombstones, part = self._append_row(commit)

        def write(db: sqlite3.Connection) -> None:
            try:
                sqlite_bulk.append_one(db, row, tombstones)
            except sqlite_bulk.Conflict as exc:
                raise JournalConflict(str(exc)) from None
        await self._submit(write, ("append", (row, tombstones, part)))
        self._appended(commit)

    def _append_row(self, commit: Commit) -> tuple[sqlite_bulk.AppendRow,
                                                   list[sqlite_bulk.Tombstone], Any]:
        """The commit's row, the entries it consumes, and what the run index folds of it
        (in process only: the writer process decodes the rows itself)."""
        doc = to_json(commit)
        done = commit["run"]["msg"] if "kind" in commit and commit.get("run") else None
        row = (commit["actor"], commit["seq"], int("state" in commit), doc, done,
               commit.get("epoch") or None)
        # nothing to dispatch first: its consumed entries become tombstones with it
        tombstones = [(float(commit["ts"]), commit["actor"], i)
                      for i in commit.get("consumed") or ()] if not commit.get("outbox") else []
        part = None
        if isinstance(commit.get("run"), dict) and self._process is None:
            with contextlib.suppress(Exception):  # an odd commit: the catch-up decodes it
                part = run_index.foldable(commit)
        return row, tombstones, part

    def _appended(self, commit: Commit) -> None:
        if self.compact_every_s is not None and not self._compacting and \
                time.monotonic() >= self._compact_at:
            self._compacting = True
            self._spawn_compaction()
        if isinstance(commit.get("run"), dict) and self._process is None:  # (else the
            self._unindexed += 1  # process folds them)
            now = time.monotonic()
            if now >= self._index_paused_until and (
                    self._unindexed >= INDEX_EVERY or now - self._indexed_at >= INDEX_EVERY_S):
                self._queue_catch_up()

    # -- compaction ------------------------------------------------------------------------
    def _compact_step(self, db: sqlite3.Connection) -> sqlite_compact.Step:
        return sqlite_compact.step(db, self.clock(), self.tombstone_ttl_s,
                                   self.commit_margin_s)

    def _spawn_compaction(self) -> None:
        """Steps one after another (a pause between them: messages go first) until nothing
        old enough is left; the next round after `compact_every_s`."""
        if self._closing:
            return

        def done(fut: asyncio.Future[sqlite_compact.Step]) -> None:
            step = None if fut.cancelled() or fut.exception() is not None else fut.result()
            if step is None:
                log.warning("journal compaction step failed (tried again later): %s",
                            None if fut.cancelled() else fut.exception())
            if step is not None and step.more and self._loop is not None:
                self._loop.call_later(COMPACT_PAUSE_S, self._spawn_compaction)
                return
            self._compact_at = time.monotonic() + (self.compact_every_s or 0.0)
            self._compacting = False

        self._submit(self._compact_step).add_done_callback(done)

    async def compact(self, *, now: float | None = None) -> tuple[int, int]:
        """Compact the whole journal now; (commits, tombstones) deleted."""
        while await self._submit(self._catch_up) == INDEX_BATCH:  # what it may delete
            pass
        commits = tombstones = 0
        while True:
            step: sqlite_compact.Step = await self._submit(functools.partial(
                sqlite_compact.step, now=self.clock() if now is None else now,
                tombstone_ttl_s=self.tombstone_ttl_s, commit_margin_s=self.commit_margin_s))
            commits, tombstones = commits + step.commits, tombstones + step.tombstones
            if not step.more:
                return commits, tombstones

    # -- the run index ---------------------------------------------------------------------
    # Folded in batches behind a durable watermark (sqlite_runs): by the writer process
    # between its batches while there is one, else here, in a group commit every
    # INDEX_EVERY commits. `runs()` catches up first, so a query sees every commit that
    # landed before it.
    def _queue_catch_up(self) -> None:
        self._unindexed = 0
        self._indexed_at = time.monotonic()
        self._submit(self._catch_up).add_done_callback(self._caught_up)

    def _caught_up(self, fut: asyncio.Future[int]) -> None:
        """After a catch-up's transaction: the next batch of a backlog only once this one
        committed; after a failure (a full disk), no catch-up for a pause that doubles
        while they keep failing (a backlog would otherwise be decoded again and again)."""
        if fut.cancelled():
            return
        if fut.exception() is not None:
            self._index_failures += 1
            pause = min(INDEX_RETRY_MAX_S, INDEX_EVERY_S * 2 ** min(self._index_failures - 1, 8))
            self._index_paused_until = time.monotonic() + pause
            log.warning("run index catch-up failed (again in %.0f s at the earliest): %s",
                        pause, fut.exception())
            return
        self._index_failures = 0
        if fut.result() == INDEX_BATCH and not self._closing:  # more to fold
            self._queue_catch_up()

    def _catch_up(self, db: sqlite3.Connection) -> int:
        return sqlite_runs.catch_up(db, self._unfolded, _decode, to_json)

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        try:
            with self._lock:
                return self._db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise _storage_error(self.path, "read", exc) from exc

    async def read(self, actor: str, after_seq: int = -1) -> list[Commit]:
        rows = self._query("SELECT doc FROM commits WHERE actor=? AND seq>? ORDER BY seq",
                           (actor, after_seq))
        return _decode_rows(rows)

    async def read_tail(self, actor: str) -> list[Commit]:
        # the newest snapshot: found walking back along (actor, seq), inside SQLite
        rows = self._query(
            "SELECT doc FROM commits WHERE actor=?1 AND seq >= COALESCE((SELECT seq FROM "
            "commits WHERE actor=?1 AND has_state=1 ORDER BY seq DESC LIMIT 1), 0) "
            "ORDER BY seq", (actor,))
        return _decode_rows(rows)

    async def outcome(self, actor: str, msg_id: str) -> Commit | None:
        rows = self._query("SELECT doc FROM commits WHERE actor=? AND done_msg=? "
                           "ORDER BY seq DESC LIMIT 1", (actor, msg_id))
        return _decode(rows[0][0]) if rows else None

    async def runs(self, *, type: str | None = None, status: str | None = None,
                   activity: str | None = None, id_prefix: str | None = None,
                   started_after: float | None = None, started_before: float | None = None,
                   ended_after: float | None = None, ended_before: float | None = None,
                   limit: int = 100, after: str | None = None) -> list[dict[str, Any]]:
        key = run_index.check(status, limit, after)
        while await self._submit(self._catch_up) == INDEX_BATCH:  # every commit landed so far
            pass
        where: list[str] = []
        args: list[Any] = []
        source = "runs r"
        if activity is not None:
            source = "run_activities a JOIN runs r ON r.actor = a.actor AND r.msg = a.msg"
            where.append("a.activity = ?")
            args.append(activity)
        for cond, value in (("r.type = ?", type), ("r.status = ?", status),
                            ("r.started >= ?", started_after),
                            ("r.started < ?", started_before), ("r.ended >= ?", ended_after),
                            ("r.ended < ?", ended_before)):
            if value is not None:
                where.append(cond)
                args.append(value)
        if id_prefix is not None:
            where.append("r.ident >= ? AND r.ident < ?")
            args += [id_prefix, id_prefix + "\U0010ffff"]
        if key is not None:
            where.append("(r.started, r.actor, r.msg) < (?, ?, ?)")
            args += list(key)
        sql = (f"SELECT r.doc, CASE WHEN r.ended IS NULL THEN (SELECT MAX(c.seq) FROM commits c "
               f"WHERE c.actor = r.actor) END FROM {source}"
               f"{' WHERE ' if where else ''}{' AND '.join(where)} "
               "ORDER BY r.started DESC, r.actor DESC, r.msg DESC LIMIT ?")
        out = []
        for doc, last_seq in self._query(sql, (*args, limit)):
            row = _decode(doc)
            if last_seq is not None:
                row["last_seq"] = last_seq
            out.append(run_index.shown(row))
        return out

    # -- inbox -----------------------------------------------------------------------------
    async def enqueue(self, envelope: Envelope) -> bool:
        return bool(await self.enqueue_numbered(envelope))

    async def enqueue_numbered(self, envelope: Envelope) -> int:
        """`enqueue`, answering the number `n` the entry was created with (0: not created)."""
        entry = _entry_row(envelope)
        number: int = await self._submit(lambda db: _enqueue_one(db, entry),
                                         ("enqueue", entry))
        return number

    async def append_entry(self, commit: Commit, envelope: Envelope, n: int) -> int:
        """Write `envelope`'s entry (as `enqueue_numbered`) and, only if it became entry
        `n`, `commit` with it, in one transaction; the entry's number (0: the id was taken,
        nothing written). JournalConflict: the entry was written, the commit refused."""
        entry = _entry_row(envelope)
        row, tombstones, part = self._append_row(commit)

        def write(db: sqlite3.Connection) -> tuple[int, str | None]:
            number = _enqueue_one(db, entry)
            if number != n:
                return number, None
            try:
                sqlite_bulk.append_one(db, row, tombstones)
            except sqlite_bulk.Conflict as exc:  # the entry stays: it is run the usual way
                return number, str(exc)
            return number, None

        number, refused = await self._submit(write, ("accept", (entry, n, row, tombstones,
                                                                part)))
        self._appended(commit)
        if refused is not None:
            raise JournalConflict(refused)
        return int(number)

    async def inbox(self, actor: str, now: float, *, calls: int | None = None) -> list[Envelope]:
        base = ("SELECT n, doc FROM inbox WHERE actor=?1 AND consumed_at IS NULL AND "
                "deliver_at<=?2")
        if calls is None:
            rows = self._query(f"{base} ORDER BY n", (actor, now))
        else:  # one query (each costs the loop a trip through the GIL): the rest, then calls
            rows = self._query(
                f"SELECT n, doc, 0 AS part FROM ({base} AND kind != 'call') UNION ALL "
                f"SELECT n, doc, 1 FROM ({base} AND kind = 'call' ORDER BY n LIMIT ?3) "
                "ORDER BY part, n", (actor, now, calls))
        out = []
        for n, doc, *_ in rows:
            env = _decode(doc)
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
                         versions: Collection[str] | None = None,
                         scope: Scope | None = None) -> list[str]:
        free = "" if owner is None else " AND (owner IS NULL OR owner=? OR lease_until<?)"
        pin, vers = self._pin(versions)
        args: tuple[Any, ...] = (() if owner is None else (owner, now)) + vers
        if scope is not None:  # the hash's partition, from its halves (see keyhash.py)
            pin += (" AND (hash_hi IS NULL OR ((hash_hi % ?) * ? + hash_lo % ?) % ? IN "
                    "(SELECT value FROM json_each(?)))")
            p = scope.partitions
            args += (p, (1 << 32) % p, p, p, to_json(sorted(scope.held)).decode())
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

    @staticmethod
    def _as_of_write(now: float) -> Callable[[], float]:
        """`now` (the caller's clock) moved on by how long the write then waited, if that was
        long enough to matter to a lease (another process's lock: seconds, at worst): the
        lease lasts `ttl` from when it is written, and is judged expired as of then. A group
        commit's few milliseconds are left out: the caller's clock (virtual in tests and
        simulations) is then taken as it is."""
        asked = time.monotonic()

        def at() -> float:
            waited = time.monotonic() - asked
            return now + waited if waited >= LEASE_WAIT_S else now

        return at

    async def acquire(self, actor: str, owner: str, now: float, ttl: float
                      ) -> ActorLease | None:
        at = self._as_of_write(now)

        def write(db: sqlite3.Connection) -> ActorLease | None:
            now = at()
            before = db.execute("SELECT owner, lease_until FROM sched WHERE actor=?",
                                (actor,)).fetchone()
            row = db.execute(
                "INSERT INTO sched (actor, owner, lease_until, epoch, hash_hi, hash_lo) VALUES "
                "(?1, ?2, ?3, 1, ?5, ?6) ON CONFLICT (actor) DO UPDATE SET "
                "hash_hi = COALESCE(hash_hi, ?5), hash_lo = COALESCE(hash_lo, ?6), "
                "epoch = CASE WHEN owner IS ?2 THEN epoch ELSE epoch + 1 END, "
                "owner = ?2, lease_until = ?3 "
                "WHERE owner IS NULL OR owner = ?2 OR lease_until < ?4 RETURNING epoch",
                (actor, owner, now + ttl, now, *key_hash(actor))).fetchone()
            if row is None:
                return None
            taken = before is not None and (before[0] not in (None, owner) or (
                before[0] is None and before[1] == CRASHED))
            return ActorLease(int(row[0]), taken)

        lease: ActorLease | None = await self._submit(write)
        return lease

    async def renew(self, owner: str, now: float, ttl: float) -> set[str]:
        at = self._as_of_write(now)

        def write(db: sqlite3.Connection) -> set[str]:
            now = at()
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

        bulk = None if release else ("settle", (actor, owner, now, seen_n, int(busy), ver,
                                                int(keep)))
        await self._submit(write, bulk)

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
        return _decode_rows(rows)

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
            return sqlite_compact.purge_tombstones(db, older_than, -1)  # all of them

        purged: int = await self._submit(write)
        return purged

    async def close(self) -> None:
        self._closing = True
        while self._flushing or self._batch or self._sent:
            await asyncio.sleep(0.001)
        self._thread.shutdown(wait=True)
        self._drop_process(self._loop)
        with self._lock:
            self._db.close()
        self._writer.close()


_begin_waiting = sqlite_writer.begin_waiting
