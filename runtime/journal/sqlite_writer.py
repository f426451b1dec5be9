"""The SQLite journal's writer process: the group commits' bulk writes, off the GIL.

Each statement of a transaction lets the GIL go and must win it back. Run on a writer thread
that wait was most of a transaction's time (the event loop holds the GIL); run on the loop,
the statements cost the loop ~a quarter of its time under load. A child process has its own
GIL: the loop hands it a whole batch of appends, enqueues and settles as data (one pickled
message), the child runs them in one transaction with the same statements (`sqlite_bulk`)
and answers once the COMMIT is durable. Batches that wait together go in one transaction.
Between batches the child folds the run index (`sqlite_runs`, `IdleIndex`). Every other
write (leases, compaction) still runs in the parent; batches never overlap, so the two
connections take turns.

The child knows nothing of Loom beyond `sqlite_bulk`, `sqlite_runs` and what they import:
its first answer comes ~50 ms after it is started, and it exits when the parent's end of its
pipe closes (the parent exited, or died).
"""

from __future__ import annotations

import collections
import contextlib
import importlib.util
import logging
import os
import pickle
import sqlite3
import struct
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

Op = tuple[str, Any]  # ("enqueue", EnqueueRow) | ("settle", SettleRow) |
# ("append", (AppendRow, [Tombstone])) | ("accept", (EnqueueRow, n, AppendRow, [Tombstone]))
Answer = tuple[str, Any]  # ("ok", value) | ("conflict", message)
log = logging.getLogger("loom.journal")
LOCK_WAIT_S = 30.0  # for another process's write lock, then the batch fails (as in process)
AUTOCHECKPOINT = 8192  # WAL pages (4 KiB) before a commit checkpoints
WAL_LIMIT = 64 << 20  # bytes a WAL file is cut back to after a checkpoint (journal_size_limit):
# twice what it holds between two checkpoints, so the usual cycle reuses the file (faster
# than extending it) and only a WAL that outgrew it (a checkpoint held back by a reader) is cut


class WriterGone(sqlite3.OperationalError):
    """The writer process died or could not be reached: the batch it held may or may not
    have landed (as with a COMMIT that failed). The journal hands its writers a StorageError
    caused by it."""


def connect(path: str, synchronous: str) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(f"PRAGMA synchronous={synchronous.upper()}")
    db.execute(f"PRAGMA wal_autocheckpoint={AUTOCHECKPOINT}")
    db.execute(f"PRAGMA journal_size_limit={WAL_LIMIT}")
    db.execute("PRAGMA cache_size=-65536")
    return db


class WalRelief:
    """Gives a full disk back the space of the WAL. The WAL keeps up to AUTOCHECKPOINT pages
    of commits (each page once per transaction that wrote it) and is reused, not shrunk: on
    a full disk, space freed would go to the WAL again (the retries refill it) long before a
    checkpoint ran. So after a transaction failed at its COMMIT or on a full disk, the WAL is
    copied into the database and truncated, best effort (busy timeout 0: no wait for
    readers); if that fails too (the database cannot grow on a full disk), it is tried again
    before each write transaction until it completes, so that space freed goes to the
    checkpoint first (it needs what the database grows by, far less than the WAL frees)."""

    def __init__(self) -> None:
        self.due = False

    def after_failure(self, db: sqlite3.Connection, exc: BaseException, *,
                      committing: bool) -> None:
        code = getattr(exc, "sqlite_errorcode", None)
        if committing or (isinstance(code, int) and code & 0xFF == sqlite3.SQLITE_FULL):
            self.due = True
            self.before_write(db)

    def before_write(self, db: sqlite3.Connection) -> None:
        if self.due and not db.in_transaction:
            try:  # readers of older commits may keep it from truncating: no matter, the
                # WAL restarts from its beginning once they are done (cut to WAL_LIMIT)
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            except sqlite3.Error:
                return  # the database could not grow: again before the next write
            self.due = False


def begin_waiting(db: sqlite3.Connection, timeout: float = 30.0) -> None:
    """BEGIN IMMEDIATE on a connection with busy timeout 0, waiting up to `timeout` for
    another process's write lock, as a busy timeout would."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        try:
            db.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or \
                    time.monotonic() > deadline:
                raise
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def run_batch(db: sqlite3.Connection, ops: list[Op], lock_wait_s: float = LOCK_WAIT_S,
              relief: WalRelief | None = None) -> list[Answer]:
    """One transaction: the enqueues, then the settles, then the appends (sqlite_bulk says
    why any order of one batch is valid), each kind in bulk, one by one where the bulk
    statement cannot vouch for every item. An "accept" is an entry with a commit that goes
    in only if the entry became entry n (`SqliteJournal.append_entry`): (number, None), or
    (number, why the commit was refused). Answers in the order of `ops`. Any other failure
    rolls everything back and raises: the batch failed as a whole."""
    from runtime.journal import sqlite_bulk

    answers: list[Answer] = [("ok", None)] * len(ops)
    kinds: dict[str, list[int]] = {"enqueue": [], "settle": [], "append": [], "accept": []}
    for i, (kind, _) in enumerate(ops):
        kinds[kind].append(i)
    relief = relief or WalRelief()
    relief.before_write(db)
    begin_waiting(db, lock_wait_s)
    committing = False
    try:
        enqueues, accepts = kinds["enqueue"], kinds["accept"]
        commits = [(i, *ops[i][1]) for i in kinds["append"]]  # (i, row, tombstones)
        if enqueues or accepts:
            made = sqlite_bulk.enqueue_many(db, [ops[i][1] for i in enqueues] +
                                            [ops[i][1][0] for i in accepts])
            for i, created in zip(enqueues + accepts, made, strict=True):
                answers[i] = ("ok", created)
                if ops[i][0] == "accept":
                    answers[i] = ("ok", (created, None))
                    if created == ops[i][1][1]:
                        commits.append((i, ops[i][1][2], ops[i][1][3]))
        settles = kinds["settle"]
        if settles and not sqlite_bulk.settle_many(db, [ops[i][1] for i in settles]):
            for i in settles:  # an actor settled twice: in order, the later reads the earlier
                sqlite_bulk.settle_many(db, [ops[i][1]])
        if commits and not sqlite_bulk.append_many(
                db, [row for _, row, _ in commits], [t for _, _, ts in commits for t in ts]):
            for i, row, tombstones in commits:
                try:
                    sqlite_bulk.append_one(db, row, tombstones)
                except sqlite_bulk.Conflict as exc:  # an accept's entry stays
                    answers[i] = ("conflict", str(exc)) if ops[i][0] == "append" else \
                        ("ok", (answers[i][1][0], str(exc)))
        committing = True
        db.execute("COMMIT")
    except BaseException as exc:
        if db.in_transaction:
            db.execute("ROLLBACK")
        relief.after_failure(db, exc, committing=committing)
        raise
    return answers


# -- the parent's side ---------------------------------------------------------------------
class WriterProcess:
    """A running writer child for one journal file. `send` a batch, then `receive` the
    answers once `fileno` is readable (the event loop watches it).

    Sending never blocks: what the pipe does not take now waits here, and `flush` writes
    more of it once `out_fileno` is writable. A blocking send could deadlock with the
    child: the parent stuck writing a big batch the child does not read, because the child
    is stuck writing answers (a big batch's) the parent does not read."""

    def __init__(self, path: str, synchronous: str) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-S", "-c", _BOOT, str(Path(__file__).resolve().parent),
                 _site_of("pydantic_core"), path, synchronous, str(LOCK_WAIT_S),
                 str(to_child_r), str(from_child_w)],
                pass_fds=(to_child_r, from_child_w), stdin=subprocess.DEVNULL,
                close_fds=True)
        except BaseException:
            for fd in (to_child_w, from_child_r):
                os.close(fd)
            raise
        finally:
            os.close(to_child_r)
            os.close(from_child_w)
        os.set_blocking(to_child_w, False)
        self._out_fd = to_child_w
        self._unsent: collections.deque[memoryview] = collections.deque()
        self._in = Connection(from_child_r, writable=False)
        self.pid = self._proc.pid

    def fileno(self) -> int:
        return self._in.fileno()

    def out_fileno(self) -> int:
        return self._out_fd

    def send(self, ops: list[Op]) -> bool:
        """Queue a batch for the child (framed as `Connection.send_bytes` frames it) and
        write what the pipe takes; True if some is left for `flush`."""
        data = pickle.dumps(ops, pickle.HIGHEST_PROTOCOL)
        header = struct.pack("!i", len(data)) if len(data) <= 0x7FFFFFFF else \
            struct.pack("!i", -1) + struct.pack("!Q", len(data))
        self._unsent.append(memoryview(header))
        self._unsent.append(memoryview(data))
        return self.flush()

    def flush(self) -> bool:
        """Write what the pipe takes now; True if some is left. Raises WriterGone."""
        unsent = self._unsent
        try:
            while unsent:
                written = os.write(self._out_fd, unsent[0])
                if written < len(unsent[0]):
                    unsent[0] = unsent[0][written:]
                    return True
                unsent.popleft()
        except BlockingIOError:
            return True
        except OSError as exc:
            raise WriterGone(f"the journal's writer process is gone ({exc})") from None
        return False

    def receive(self) -> list[Answer] | sqlite3.Error:
        """The answers to the oldest batch sent, or the error that rolled it back (as the
        SQLite error type it was); raises WriterGone."""
        try:
            kind, value = pickle.loads(self._in.recv_bytes())
        except (OSError, EOFError) as exc:
            raise WriterGone(f"the journal's writer process is gone ({exc or 'EOF'})") \
                from None
        if kind == "failed":
            name, message, code = value
            error = (sqlite3.IntegrityError if name == "IntegrityError"
                     else sqlite3.OperationalError)(message)
            error.sqlite_errorcode = code
            return error
        answers: list[Answer] = value
        return answers

    def close(self, timeout: float = 5.0) -> None:
        with contextlib.suppress(OSError):
            os.close(self._out_fd)
        with contextlib.suppress(OSError):
            self._in.close()
        try:
            self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()


# -- the child's side ----------------------------------------------------------------------
class IdleIndex:
    """The run index's catch-ups, run by the child while no batch waits (folded in the
    transaction of a batch, 256 commits held that batch, and every write behind it, ~10 ms).
    It folds once MIN of its own commits gathered, or EVERY_S after the last fold (commits
    written by others), CHUNK commits a transaction, so that a batch that comes meanwhile
    waits for one chunk at most; and between batches regardless once
    FORCE commits gathered, up to 1,024 at a time (a child never idle must not leave the
    index behind)."""

    MIN, CHUNK, FORCE, EVERY_S, RETRY_MAX_S = 128, 32, 2048, 1.0, 30.0

    def __init__(self, relief: WalRelief, synchronous: str = "FULL") -> None:
        self.relief = relief
        self.synchronous = synchronous.upper()
        self.pending = 0  # commits this child appended since the index was last caught up
        self.at = time.monotonic()  # when it last was
        self.failures = 0
        self.paused_until = 0.0  # after a failure (a full disk), or another writer

    def wait(self) -> float:
        """How long the child may wait for a batch before it should fold."""
        now = time.monotonic()
        if now < self.paused_until:
            return self.paused_until - now
        if self.pending >= self.MIN:
            return 0.0
        return max(0.0, self.at + self.EVERY_S - now)

    def step(self, db: sqlite3.Connection, *, force: bool = False) -> None:
        """One chunk, in a transaction of its own; never raises."""
        from runtime.journal import sqlite_runs

        now = time.monotonic()
        if now < self.paused_until or (force and self.pending < self.FORCE):
            return
        # Not fsync'd (WAL, NORMAL): the index is derived, behind a watermark written with
        # it, and the next batch's fsync makes it durable with that batch. A crash before
        # loses the fold, never a later transaction (the WAL is recovered as a prefix).
        unsynced = self.synchronous in ("FULL", "EXTRA")
        try:
            self.relief.before_write(db)
            if unsynced:
                db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error:  # another process writes (no wait here): later
            self._restore(db, unsynced)
            self.paused_until = now + 0.05
            return
        committing = False
        chunk = sqlite_runs.INDEX_BATCH if force else self.CHUNK  # a backlog: bigger bites
        try:
            folded = sqlite_runs.catch_up(db, {}, limit=chunk)
            committing = True
            db.execute("COMMIT")
        except Exception as exc:
            with contextlib.suppress(sqlite3.Error):
                if db.in_transaction:
                    db.execute("ROLLBACK")
            self._restore(db, unsynced)
            self.relief.after_failure(db, exc, committing=committing)
            self.failures += 1
            pause = min(self.RETRY_MAX_S, self.EVERY_S * 2 ** min(self.failures - 1, 8))
            self.paused_until = time.monotonic() + pause
            log.warning("run index catch-up failed in the writer process (again in %.0f s):"
                        " %s", pause, exc)
            return
        self._restore(db, unsynced)
        self.failures = 0
        if folded < chunk:  # caught up
            self.pending, self.at = 0, time.monotonic()
        else:  # more: the next chunk as soon as the child is idle again
            self.pending = max(self.pending - folded, self.MIN)

    def _restore(self, db: sqlite3.Connection, unsynced: bool) -> None:
        """Batches are fsync'd again. If this fails, the child ends (the parent writes in
        process from then on): a batch must never be committed unsynced."""
        if unsynced:
            db.execute(f"PRAGMA synchronous={self.synchronous}")


def serve(path: str, synchronous: str, lock_wait_s: float, inbound: Connection,
          outbound: Connection) -> None:
    db = connect(path, synchronous)
    db.execute("PRAGMA busy_timeout=0")
    relief = WalRelief()
    index = IdleIndex(relief, synchronous)
    while True:
        try:
            if not inbound.poll(index.wait()):
                index.step(db)  # nothing to write: fold
                continue
            # every batch already sent, in one transaction: none was sent after another
            # was answered, so no write in them can depend on another (any order is valid)
            batches: list[list[Op]] = [pickle.loads(inbound.recv_bytes())]
        except (EOFError, OSError):
            break  # the parent closed its end, or died
        ending = False
        try:
            while inbound.poll(0):
                batches.append(pickle.loads(inbound.recv_bytes()))
        except (EOFError, OSError):
            ending = True  # after these: a batch read is written, as it always was
        ops = [op for batch in batches for op in batch]
        try:
            answers = run_batch(db, ops, lock_wait_s, relief)
            index.pending += sum(1 for kind, _ in ops if kind in ("append", "accept"))
            replies: list[tuple[str, Any]] = []
            for batch in batches:
                replies.append(("ok", answers[:len(batch)]))
                answers = answers[len(batch):]
        except Exception as exc:
            replies = [("failed", (type(exc).__name__, f"{type(exc).__name__}: {exc}",
                                   getattr(exc, "sqlite_errorcode", None)))] * len(batches)
        try:
            for reply in replies:
                outbound.send_bytes(pickle.dumps(reply, pickle.HIGHEST_PROTOCOL))
        except OSError:
            break
        if ending:
            break
        index.step(db, force=True)
    db.close()


# The child's entry. `runtime` and `runtime.journal` are registered as bare packages, so
# that importing this module and `sqlite_bulk` runs neither package's `__init__` (the
# executor, wasmtime, pydantic: a third of a second); `-S`: no site-packages but the one
# pydantic-core is in (the run index decodes commits with it, 4x faster than `json`).
_BOOT = """
import sys, types
here = sys.argv[1]
if sys.argv[2]:
    sys.path.append(sys.argv[2])
for name, where in (("runtime", here + "/.."), ("runtime.journal", here)):
    module = types.ModuleType(name)
    module.__path__ = [where]
    sys.modules[name] = module
from runtime.journal.sqlite_writer import boot_main
boot_main(sys.argv[3:])
"""


def _site_of(package: str) -> str:
    """The directory `package` is imported from ("" if it is not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return ""
    return str(Path(next(iter(spec.submodule_search_locations))).parent)


def boot_main(argv: list[str]) -> None:
    path, synchronous, lock_wait_s, rfd, wfd = argv
    serve(path, synchronous, float(lock_wait_s), Connection(int(rfd), writable=False),
          Connection(int(wfd), readable=False))
