"""The SQLite journal under storage faults: a full disk, an I/O error, a file that is not a
database, a writer process that dies. Callers get a retryable `errors.StorageError` that
keeps SQLite's code and message (never a raw sqlite3 error: the service answers it 503 with
Retry-After); the run index's catch-up neither spins nor runs ahead of its commit; the WAL's
space comes back once a little space is freed; compaction judges ages by the runtime's clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from runtime.actors import Actor, ActorContext, ActorRuntime, handler
from runtime.journal import sqlite_writer
from runtime.journal.sqlite import INDEX_BATCH, SqliteJournal
from runtime.journal.sqlite_writer import WriterGone
from runtime.service.problems import from_loom


def env(actor: str, mid: str, payload: Any = None) -> dict[str, Any]:
    return {"id": mid, "target": actor, "kind": "call", "handler": "add", "payload": payload,
            "deliver_at": 0.0}


def disk_full() -> sqlite3.OperationalError:
    exc = sqlite3.OperationalError("database or disk is full")
    exc.sqlite_errorcode, exc.sqlite_errorname = sqlite3.SQLITE_FULL, "SQLITE_FULL"
    return exc


class Faulty:
    """A connection whose statements starting with one of `fail` raise `error()` while
    `armed` (a count, or -1: until disarmed); it records every statement it runs."""

    def __init__(self, db: sqlite3.Connection, fail: dict[str, int],
                 error: Any = disk_full) -> None:
        self.db, self.fail, self.error = db, fail, error
        self.log: list[str] = []

    def execute(self, sql: str, *args: Any) -> Any:
        self.log.append(sql)
        for start, left in self.fail.items():
            if left and sql.startswith(start):
                self.fail[start] = left - 1 if left > 0 else left
                raise self.error()
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def assert_storage_error(exc: BaseException, message: str, code: int | None = None) -> None:
    assert isinstance(exc, errors.StorageError), repr(exc)
    assert exc.retryable and message in str(exc), str(exc)
    assert isinstance(exc.__cause__, sqlite3.Error)
    assert exc.details["sqlite_message"] == str(exc.__cause__)
    if code is not None:
        assert exc.details["sqlite_errorcode"] == code
    assert from_loom(exc).status == 503  # and the service adds Retry-After


class Tally(Actor, type_name="storage_tally"):
    def initial_state(self) -> dict[str, int]:
        return {"n": 0}

    @handler
    async def add(self, ctx: ActorContext, payload: Any) -> int:
        self.state["n"] += 1
        return int(self.state["n"])


# -- 1: typed errors ---------------------------------------------------------------------------
def test_a_full_disk_reaches_ask_send_and_signal_as_a_storage_error(tmp_path: Path) -> None:
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db", writer_process_after=None)
        async with ActorRuntime(journal, lint=False, poll_interval_s=0.01) as rt:
            rt.register(Tally)
            assert await rt.ask("storage_tally/a", "add", msg_id="m0", timeout=5) == 1
            writer = Faulty(journal._writer, {"COMMIT": -1})
            journal._writer = writer  # type: ignore[assignment]
            for call in (rt.ask("storage_tally/a", "add", msg_id="m1", timeout=5),
                         rt.send("storage_tally/a", "add", msg_id="m2"),
                         rt.signal("storage_tally/a", "go", msg_id="m3")):
                with pytest.raises(errors.StorageError) as info:
                    await call
                assert_storage_error(info.value, "write failed: database or disk is full "
                                     "(SQLITE_FULL)", sqlite3.SQLITE_FULL)
                assert info.value.details["sqlite_errorname"] == "SQLITE_FULL"
            writer.fail["COMMIT"] = 0  # space again: the same ids go through
            assert await rt.ask("storage_tally/a", "add", msg_id="m1", timeout=5) == 2
        await journal.close()

    asyncio.run(main())


def test_reads_and_the_run_index_raise_a_storage_error(tmp_path: Path) -> None:
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        try:
            assert await journal.enqueue(env("a/1", "m1")) is True
            io_error = sqlite3.OperationalError
            journal._db = Faulty(  # type: ignore[assignment]
                journal._db, {"SELECT": -1}, error=lambda: io_error("disk I/O error"))
            for read in (journal.read("a/1"), journal.read_tail("a/1"),
                         journal.inbox("a/1", time.time()), journal.outcome("a/1", "m1"),
                         journal.due_actors(time.time()), journal.runs()):
                with pytest.raises(errors.StorageError) as info:
                    await read
                assert_storage_error(info.value, "read failed: disk I/O error")
        finally:
            await journal.close()

    asyncio.run(main())


def test_opening_a_file_that_is_no_database_raises_a_storage_error(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    path.write_bytes(b"not a database, " * 512)
    with pytest.raises(errors.StorageError) as info:
        SqliteJournal(path)
    assert_storage_error(info.value, "opening failed: file is not a database",
                         sqlite3.SQLITE_NOTADB)


def test_a_writer_process_gone_fails_its_writes_with_a_storage_error(tmp_path: Path) -> None:
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db", writer_process_after=0)
        await journal.enqueue(env("a/1", "warm"))
        pid = journal.writer_pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)  # it takes the batch but never answers
        pending = asyncio.ensure_future(journal.enqueue(env("a/1", "m1")))
        await asyncio.sleep(0.2)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(errors.StorageError) as info:
            await asyncio.wait_for(pending, 10)
        assert_storage_error(info.value, "the journal's writer process is gone")
        assert isinstance(info.value.__cause__, WriterGone)
        assert "may or may not have landed" in str(info.value)
        assert await journal.enqueue(env("a/1", "m1")) is True  # the retry lands
        await journal.close()

    asyncio.run(main())


# -- 2: the run index's catch-up on a failing disk --------------------------------------------
def test_a_failing_catch_up_queues_nothing_before_its_commit_and_backs_off(
        tmp_path: Path) -> None:
    """1,500 commits another process wrote, not yet in the run index; every COMMIT fails.
    A catch-up used to queue its next batch before its own COMMIT, so it ran again at once,
    for as long as the disk was full (decoding 1,024 commits each time)."""
    path = tmp_path / "j.db"
    asyncio.run(SqliteJournal(path).close())
    db = sqlite3.connect(path, isolation_level=None)
    rows = []
    for i in range(1500):
        actor, seq = f"a/{i % 50}", i // 50
        doc = {"actor": actor, "seq": seq, "ts": 1.0, "kind": "completed", "state": {},
               "run": {"msg": f"m{i}", "ts": 1.0, "start": seq}, "events": []}
        rows.append((actor, seq, json.dumps(doc), f"m{i}"))
    db.executemany("INSERT INTO commits (actor, seq, has_state, doc, done_msg) "
                   "VALUES (?, ?, 1, ?, ?)", rows)
    db.close()

    async def main() -> None:
        journal = SqliteJournal(path, compact_every_s=None, writer_process_after=None)
        real = journal._catch_up
        calls: list[int] = []

        def counted(db: sqlite3.Connection) -> int:
            calls.append(1)
            return real(db)

        journal._catch_up = counted  # type: ignore[method-assign]
        writer = Faulty(journal._writer, {"COMMIT": -1})
        journal._writer = writer  # type: ignore[assignment]
        try:
            journal._queue_catch_up()
            await asyncio.sleep(0.5)
            assert len(calls) == 1, f"the catch-up ran {len(calls)} times on a failing disk"
            assert journal._index_paused_until > time.monotonic()  # appends queue none yet
            with pytest.raises(errors.StorageError):
                await journal.runs()
            writer.fail["COMMIT"] = 0
            calls.clear()
            journal._queue_catch_up()  # the backlog: the next batch once this one committed
            for _ in range(200):
                if len(calls) == 2 and not journal._flushing:
                    break
                await asyncio.sleep(0.01)
            assert len(calls) == 2
            mark = journal._query("SELECT value FROM meta WHERE key = 'runs_indexed'", ())
            assert mark[0][0] == 1500 > INDEX_BATCH
            assert len(await journal.runs(limit=1000)) == 1000
        finally:
            writer.fail["COMMIT"] = 0
            await journal.close()

    asyncio.run(main())


# -- 3: the WAL's space after a full disk -----------------------------------------------------
def wal_size(path: Path) -> int:
    return (path.parent / (path.name + "-wal")).stat().st_size


def test_a_failed_commit_truncates_the_wal_and_a_failed_checkpoint_goes_first_next_time(
        tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = SqliteJournal(path, writer_process_after=None)
        try:
            limit = journal._writer.execute("PRAGMA journal_size_limit").fetchone()[0]
            assert limit == sqlite_writer.WAL_LIMIT
            for i in range(20):
                await journal.enqueue(env("a/1", f"m{i}"))
            assert wal_size(path) > 0
            writer = Faulty(journal._writer, {"COMMIT": 1})
            journal._writer = writer  # type: ignore[assignment]
            with pytest.raises(errors.StorageError):
                await journal.enqueue(env("a/1", "x1"))
            assert wal_size(path) == 0  # checkpointed and truncated
            # the checkpoint itself fails (the database cannot grow on a full disk): it
            # goes first, on the writer thread, before the next write
            writer.fail.update({"COMMIT": 1, "PRAGMA wal_checkpoint": 1})
            writer.log.clear()
            with pytest.raises(errors.StorageError):
                await journal.enqueue(env("a/1", "x2"))
            assert journal._relief.due
            assert await journal.enqueue(env("a/1", "x2")) is True
            checkpoints = [i for i, sql in enumerate(writer.log) if "wal_checkpoint" in sql]
            assert len(checkpoints) == 2
            assert writer.log[checkpoints[1] + 1] == "BEGIN IMMEDIATE"
            assert not journal._relief.due
        finally:
            await journal.close()

    asyncio.run(main())


def test_the_writer_process_checkpoints_after_its_failed_batch(tmp_path: Path) -> None:
    """`run_batch` as the child runs it, on its own connection."""
    path = tmp_path / "j.db"
    asyncio.run(SqliteJournal(path).close())
    db = sqlite_writer.connect(str(path), "FULL")
    db.execute("PRAGMA busy_timeout=0")
    assert db.execute("PRAGMA journal_size_limit").fetchone()[0] == sqlite_writer.WAL_LIMIT
    relief = sqlite_writer.WalRelief()

    def ops(tag: str) -> list[sqlite_writer.Op]:
        return [("enqueue", ("a/1", f"{tag}{i}", "call", 0.0, b"{}")) for i in range(5)]

    sqlite_writer.run_batch(db, ops("a"), 1.0, relief)
    assert wal_size(path) > 0
    faulty = Faulty(db, {"COMMIT": 1})
    with pytest.raises(sqlite3.OperationalError):
        sqlite_writer.run_batch(faulty, ops("b"), 1.0, relief)  # type: ignore[arg-type]
    assert wal_size(path) == 0 and not relief.due
    faulty.fail.update({"COMMIT": 1, "PRAGMA wal_checkpoint": 1})
    with pytest.raises(sqlite3.OperationalError):
        sqlite_writer.run_batch(faulty, ops("c"), 1.0, relief)  # type: ignore[arg-type]
    assert relief.due
    faulty.log.clear()
    sqlite_writer.run_batch(faulty, ops("c"), 1.0, relief)  # type: ignore[arg-type]
    assert faulty.log[:2] == ["PRAGMA wal_checkpoint(TRUNCATE)", "BEGIN IMMEDIATE"]
    assert not relief.due
    db.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs: needs root (CAP_SYS_ADMIN); skipped where mounting is not permitted,
    always unmounted."""
    where = tmp_path / "disk"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        if subprocess.run(["umount", str(where)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(where)], check=False)


@pytest.mark.parametrize("process", [None, 0], ids=["in-process", "writer-process"])
def test_space_freed_on_a_full_disk_brings_the_wal_space_back(
        small_disk: Path, process: int | None) -> None:
    """Fill the disk, free 1 MiB: the first write afterwards checkpoints the WAL (~3 MiB of
    page copies) into the database and truncates it. Before, that space stayed in the WAL
    (it checkpoints at 32 MiB) and the freed MiB filled up again."""
    path = small_disk / "j.db"
    reserve = small_disk / "reserve"
    freed = 1 << 20

    def free() -> int:
        st = os.statvfs(small_disk)
        return st.f_bavail * st.f_frsize

    async def main() -> None:
        journal = SqliteJournal(path, compact_every_s=None, writer_process_after=process)
        reserve.write_bytes(b"\1" * freed)
        n = 0

        async def batch() -> None:
            nonlocal n
            n += 1
            await asyncio.gather(*(journal.enqueue(env(f"a/{(n * 8 + k) % 50}", f"m{n}-{k}",
                                                       "x" * 300)) for k in range(8)))

        try:
            failure: BaseException | None = None
            while failure is None and n < 2000:
                try:
                    await batch()
                except Exception as exc:
                    failure = exc
            assert failure is not None, "the disk never filled"
            assert_storage_error(failure, "database or disk is full", sqlite3.SQLITE_FULL)
            reserve.unlink()
            await batch()
            assert free() > 2 * freed, (free(), wal_size(path))
            assert wal_size(path) < freed
            if process is not None:
                assert journal.writer_pid is not None
        finally:
            await journal.close()

    asyncio.run(main())


# -- 4: compaction's clock ---------------------------------------------------------------------
def test_compaction_judges_ages_by_the_clock_the_runtime_writes_with(tmp_path: Path) -> None:
    """A runtime on the loop's clock (as the simulation kit runs it) writes tombstone and
    commit times from it; compaction judged them by time.time(), so a tombstone consumed a
    moment ago was 'older than 7 days', was purged, and a duplicate message ran again."""
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db", compact_every_s=None)
        loop = asyncio.get_running_loop()
        journal.clock = loop.time  # what ActorRuntime(clock=...) hands the journal
        async with ActorRuntime(journal, lint=False, poll_interval_s=0.01,
                                clock=loop.time) as rt:
            rt.register(Tally)
            assert await rt.ask("storage_tally/c", "add", msg_id="pay-1", timeout=5) == 1
            await asyncio.sleep(0.1)
            assert await journal.compact() == (0, 0)
            assert await rt.ask("storage_tally/c", "add", msg_id="pay-1", timeout=5) == 1
            journal.clock = lambda: loop.time() + 8 * 86400.0  # a week on: the tombstone goes
            assert (await journal.compact())[1] == 1
        await journal.close()

    asyncio.run(main())
