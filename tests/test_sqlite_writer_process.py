"""The SQLite journal's writer process (runtime/journal/sqlite_writer.py), under attack: the
child killed while idle or while it holds a batch, its parent killed, the journal moved to
another event loop, a whole batch refused. Nothing accepted may be lost, nothing may hang,
and a failure reaches only the writes it may have touched, as a StorageError.
(The journal contract suite runs every store test through the process too: `sqlite-process`.)
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from runtime.journal import sqlite as journal_sqlite
from runtime.journal import sqlite_writer
from runtime.journal.sqlite import SqliteJournal
from runtime.journal.sqlite_writer import WriterGone
from runtime.journal.store import JournalConflict

ROOT = Path(__file__).resolve().parents[1]


def env(target: str, mid: str) -> dict[str, Any]:
    return {"id": mid, "target": target, "kind": "call", "payload": {"mid": mid},
            "deliver_at": 0.0}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead: reap it if it is ours
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and \
            "zombie" not in Path(f"/proc/{pid}/status").read_text()


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.02)
    return False


async def started(journal: SqliteJournal) -> int:
    """Write until the journal runs its writer process; its pid."""
    for i in range(3):
        await journal.enqueue(env("warm/a", f"w{i}"))
    pid = journal.writer_pid
    assert pid is not None, "the writer process did not start"
    return pid


def test_bulk_writes_go_through_the_process_and_answer_like_in_process(tmp_path: Path) -> None:
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db", writer_process_after=0)
        await started(journal)
        tx0 = journal.transactions
        made = await asyncio.gather(*(journal.enqueue(env("t/a", f"m{i % 5}"))
                                      for i in range(10)))
        assert made == [True] * 5 + [False] * 5  # the duplicates, in the same batch
        await journal.append({"actor": "t/a", "seq": 0, "ts": 1.0, "state": {"n": 0}})
        outcomes = await asyncio.gather(
            journal.append({"actor": "t/a", "seq": 1, "ts": 1.0, "state": {"n": 1}}),
            journal.append({"actor": "t/a", "seq": 1, "ts": 1.0, "state": {"n": 2}}),
            journal.append({"actor": "t/b", "seq": 0, "ts": 1.0, "state": {}}),
            return_exceptions=True)
        assert sum(isinstance(o, JournalConflict) for o in outcomes) == 1
        assert outcomes[2] is None
        assert journal.transactions > tx0
        assert [e["id"] for e in await journal.inbox("t/a", 2.0)] == [f"m{i}" for i in range(5)]
        assert [c["seq"] for c in await journal.read("t/a")] == [0, 1]
        pid = journal.writer_pid
        assert pid is not None
        await journal.close()
        assert journal.writer_pid is None
        assert wait_gone(pid), "close() left the writer process running"

    asyncio.run(main())


def test_a_child_killed_while_idle_costs_no_write(tmp_path: Path) -> None:
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db", writer_process_after=0)
        pid = await started(journal)
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
        await asyncio.sleep(0.05)  # its end of the pipe closes: the loop notices
        made = await asyncio.gather(*(journal.enqueue(env("t/a", f"m{i}")) for i in range(20)))
        assert made == [True] * 20
        assert journal.writer_pid is None  # given up: the writes run in process now
        assert len(await journal.inbox("t/a", 2.0)) == 20
        await journal.close()

    asyncio.run(main())


def test_a_child_killed_holding_a_batch_fails_that_batch_only(tmp_path: Path) -> None:
    """The batch may or may not have landed (as with a failed COMMIT): its writers get
    a retryable StorageError (caused by WriterGone); what the journal holds afterwards is
    whole, and the writes after it land in process."""
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db", writer_process_after=0)
        pid = await started(journal)
        os.kill(pid, signal.SIGSTOP)  # it takes the batch but never answers
        pending = [asyncio.ensure_future(journal.enqueue(env("t/a", f"m{i}")))
                   for i in range(10)]
        await asyncio.sleep(0.2)
        assert not any(p.done() for p in pending)
        os.kill(pid, signal.SIGKILL)
        outcomes = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 10)
        assert all(isinstance(o, errors.StorageError) for o in outcomes), outcomes
        assert all(isinstance(o.__cause__, WriterGone) for o in outcomes)
        assert journal.writer_pid is None
        # the callers retry (a message id makes that safe): each lands exactly once
        again = await asyncio.gather(*(journal.enqueue(env("t/a", f"m{i}")) for i in range(10)))
        assert again == [True] * 10  # the stopped child never ran the batch
        assert sorted(e["id"] for e in await journal.inbox("t/a", 2.0)) == \
            sorted(f"m{i}" for i in range(10))
        await journal.close()

    asyncio.run(main())
    db = sqlite3.connect(tmp_path / "j.db")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


def test_the_child_exits_when_its_parent_is_killed(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from runtime.journal.sqlite import SqliteJournal

        async def main():
            journal = SqliteJournal({str(tmp_path / "j.db")!r}, writer_process_after=0)
            for i in range(3):
                await journal.enqueue({{"id": f"m{{i}}", "target": "t/a", "kind": "call",
                                        "deliver_at": 0.0}})
            print(journal.writer_pid, flush=True)
            time.sleep(60)

        asyncio.run(main())
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()
        parent.wait(10)
        assert wait_gone(child), "the writer process outlived its parent"
    finally:
        parent.kill()
        parent.wait()
    db = sqlite3.connect(tmp_path / "j.db")
    assert db.execute("SELECT COUNT(*) FROM inbox").fetchone() == (3,)
    db.close()


def test_the_journal_follows_its_caller_to_another_event_loop(tmp_path: Path) -> None:
    journal = SqliteJournal(tmp_path / "j.db", writer_process_after=0)
    pid = asyncio.run(started(journal))

    async def some(round_: int) -> list[bool]:
        return await asyncio.wait_for(asyncio.gather(
            *(journal.enqueue(env("t/a", f"r{round_}-{i}")) for i in range(5))), 10)

    for round_ in range(3):  # each asyncio.run is a new loop: the answers are read there
        assert asyncio.run(some(round_)) == [True] * 5
    assert journal.writer_pid == pid
    asyncio.run(journal.close())
    assert wait_gone(pid)


def test_a_batch_the_child_rolls_back_is_written_again_in_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure that is not one write's (here the child cannot begin: another process
    holds the write lock past its wait) rolls the batch back; the journal writes it again
    itself, one write at a time, and every write lands."""
    monkeypatch.setattr(sqlite_writer, "LOCK_WAIT_S", 0.1)

    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db", writer_process_after=0)
        pid = await started(journal)
        blocker = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        real = journal_sqlite._begin_waiting
        monkeypatch.setattr(journal_sqlite, "_begin_waiting",
                            lambda db, timeout=30.0: real(db, 5.0))
        pending = asyncio.gather(*(journal.enqueue(env("t/a", f"m{i}")) for i in range(5)))
        await asyncio.sleep(0.5)
        blocker.execute("COMMIT")  # within the in-process retry's wait
        blocker.close()
        assert await asyncio.wait_for(pending, 60) == [True] * 5
        assert len(await journal.inbox("t/a", 2.0)) == 5
        assert journal.writer_pid == pid  # kept: it failed a batch, it did not die
        assert await journal.enqueue(env("t/a", "after"))
        await journal.close()

    asyncio.run(main())


def test_the_setting_turns_the_writer_process_off(tmp_path: Path) -> None:
    from runtime.journal.factory import open_journal
    from runtime.settings import load_settings

    async def main(on: bool) -> int | None:
        settings = load_settings(home=tmp_path, journal_url=f"sqlite:///{tmp_path / 'j.db'}",
                                 sqlite_writer_process=on)
        journal = open_journal(settings)
        assert isinstance(journal, SqliteJournal)
        for i in range(journal_sqlite.PROCESS_AFTER + 8):  # one transaction each
            await journal.enqueue(env("t/a", f"m{on}{i}"))
        pid = journal.writer_pid
        await journal.close()
        return pid

    assert asyncio.run(main(True)) is not None
    assert asyncio.run(main(False)) is None


def test_two_processes_writing_one_file_through_their_own_writers(tmp_path: Path) -> None:
    """Two journals on one file (two worker processes, as far as SQLite knows), each with a
    writer process, enqueue to the same actors at once, duplicates included: every id lands
    once, and each actor's inbox is numbered 1..n with no gap and no repeat."""
    path = tmp_path / "j.db"

    async def main() -> None:
        a = SqliteJournal(path, writer_process_after=0)
        b = SqliteJournal(path, writer_process_after=0)
        await started(a)
        await started(b)
        assert a.writer_pid != b.writer_pid
        made = await asyncio.gather(*(
            journal.enqueue(env(f"t/{i % 4}", f"m{i}"))
            for i in range(400) for journal in (a, b)))  # each id twice, once from each
        assert sorted(made).count(True) == 400
        for actor in range(4):
            entries = await a.inbox(f"t/{actor}", 2.0)
            assert sorted(e["id"] for e in entries) == sorted(
                f"m{i}" for i in range(400) if i % 4 == actor)
            assert [e["n"] for e in entries] == list(range(1, len(entries) + 1))
        await a.close()
        await b.close()

    asyncio.run(main())


def run_commit(actor: str, seq: int, msg: str) -> dict[str, Any]:
    """A commit that starts and completes the run of `msg` (one run index row)."""
    return {"actor": actor, "seq": seq, "ts": 1.0 + seq, "kind": "completed", "result": seq,
            "run": {"msg": msg, "ts": 1.0, "start": seq}, "events": [],
            "message": {"id": msg, "handler": "h"}}


def watermark(path: Path) -> tuple[int, int]:
    """(the run index's watermark, the last commit rowid), read by another connection."""
    db = sqlite3.connect(path)
    try:
        mark = db.execute("SELECT value FROM meta WHERE key = 'runs_indexed'").fetchone()[0]
        last = db.execute("SELECT COALESCE(MAX(rowid), 0) FROM commits").fetchone()[0]
        return int(mark), int(last)
    finally:
        db.close()


def test_the_child_folds_the_run_index_between_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """While the writer process runs, the run index is its business: the parent queues no
    catch-up (it would stall the pipeline, and cost the loop); the child folds every commit
    once it has nothing to write, in chunks, and a run query finds every run."""
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db", writer_process_after=0)
        await started(journal)
        queued = []
        monkeypatch.setattr(journal, "_queue_catch_up", lambda: queued.append(1))
        n = sqlite_writer.IdleIndex.CHUNK * 2 + 37  # more than one chunk
        await asyncio.gather(*(journal.append(run_commit(f"r/{i % 7}", i // 7, f"m{i}"))
                               for i in range(n)))
        deadline = time.monotonic() + 20
        while (mark := watermark(tmp_path / "j.db"))[0] < mark[1]:
            assert time.monotonic() < deadline, f"the child left the index at {mark}"
            await asyncio.sleep(0.05)
        assert queued == []
        rows = await journal.runs(limit=1000)
        assert len(rows) == n and {r["status"] for r in rows} == {"completed"}
        await journal.close()

    asyncio.run(main())


def test_a_writer_holding_the_lock_delays_the_fold_not_the_writes(tmp_path: Path) -> None:
    """Another process holds the write lock when the child wants to fold: the fold waits
    for a later turn (no lock wait of its own), the next batch waits for the lock as
    batches do, and the index still catches up once the lock is free."""
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db", writer_process_after=0)
        await started(journal)
        blocker = sqlite3.connect(tmp_path / "j.db", isolation_level=None)
        await asyncio.gather(*(journal.append(run_commit("r/a", i, f"m{i}"))
                               for i in range(sqlite_writer.IdleIndex.MIN + 5)))
        blocker.execute("BEGIN IMMEDIATE")
        pending = asyncio.ensure_future(journal.append(run_commit("r/b", 0, "late")))
        await asyncio.sleep(0.4)
        assert not pending.done()  # behind the lock
        blocker.execute("COMMIT")
        blocker.close()
        await asyncio.wait_for(pending, 30)
        deadline = time.monotonic() + 20
        while (mark := watermark(tmp_path / "j.db"))[0] < mark[1]:
            assert time.monotonic() < deadline, f"the child left the index at {mark}"
            await asyncio.sleep(0.05)
        await journal.close()

    asyncio.run(main())


def serve_batches(path: Path, batches: list[list[Any]]) -> list[Any]:
    """Run the child's loop (in a thread) on batches all sent before it reads the first;
    its answers, once it has seen the end of its input."""
    import pickle
    import threading

    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    out = sqlite_writer.Connection(to_child_w, readable=False)
    back = sqlite_writer.Connection(from_child_r, writable=False)
    for batch in batches:
        out.send_bytes(pickle.dumps(batch))
    out.close()
    child = threading.Thread(target=sqlite_writer.serve, args=(
        str(path), "NORMAL", 1.0, sqlite_writer.Connection(to_child_r, writable=False),
        sqlite_writer.Connection(from_child_w, readable=False)), daemon=True)
    child.start()
    answers = [pickle.loads(back.recv_bytes()) for _ in batches]
    child.join(10)
    assert not child.is_alive()
    back.close()
    return answers


def test_batches_waiting_together_are_one_transaction(tmp_path: Path) -> None:
    """The child takes every batch already sent into one transaction (none of their writes
    can depend on another's: none was sent after another was answered). One answer per
    batch, in order; a failure rolls all of them back and each is answered as failed (the
    parent writes each again on its own)."""
    path = tmp_path / "j.db"
    SqliteJournal(path, writer_process_after=None)  # the schema

    def enqueue(actor: str, mid: str, doc: bytes | None = b"{}") -> Any:
        return ("enqueue", (actor, mid, "call", 0.0, doc))

    bad = enqueue("t/b", "x", None)  # doc is NOT NULL: the INSERT fails, and the batch
    answers = serve_batches(path, [[enqueue("t/a", "m1")], [bad]])
    assert [a[0] for a in answers] == ["failed", "failed"]
    assert "IntegrityError" in answers[0][1][1]
    answers = serve_batches(path, [[enqueue("t/a", "m1")],
                                   [enqueue("t/a", "m1"), enqueue("t/a", "m2")],
                                   [enqueue("t/c", "m1")]])
    assert answers == [("ok", [("ok", 1)]), ("ok", [("ok", 0), ("ok", 2)]),
                       ("ok", [("ok", 1)])]
    db = sqlite3.connect(path)
    rows = db.execute("SELECT actor, id, n FROM inbox ORDER BY actor, n").fetchall()
    db.close()
    assert rows == [("t/a", "m1", 1), ("t/a", "m2", 2), ("t/c", "m1", 1)]


def test_a_child_never_idle_folds_a_backlog_in_big_bites(tmp_path: Path) -> None:
    """Batches always waiting: the child folds only between them, regardless of waiting
    batches once FORCE commits gathered, and then up to 1,024 at a time, so a backlog
    shrinks even if batches carry more than a small chunk of commits each."""
    path = tmp_path / "j.db"
    SqliteJournal(path, writer_process_after=None)  # the schema
    db = sqlite_writer.connect(str(path), "NORMAL")
    db.execute("BEGIN")
    for i in range(1500):
        doc = __import__("json").dumps(run_commit(f"r/{i % 9}", i // 9, f"m{i}")).encode()
        db.execute("INSERT INTO commits (actor, seq, has_state, doc) VALUES (?, ?, 0, ?)",
                   (f"r/{i % 9}", i // 9, doc))
    db.execute("COMMIT")
    index = sqlite_writer.IdleIndex(sqlite_writer.WalRelief())
    index.pending = sqlite_writer.IdleIndex.FORCE - 1
    index.step(db, force=True)
    assert watermark(path)[0] == 0  # below FORCE: batches first
    index.pending = sqlite_writer.IdleIndex.FORCE
    index.step(db, force=True)
    assert watermark(path)[0] == 1024  # one big bite
    index.step(db)
    assert watermark(path)[0] == 1024 + sqlite_writer.IdleIndex.CHUNK  # idle: small ones
    db.close()


def test_big_batches_sent_back_to_back_never_block_the_sender(tmp_path: Path) -> None:
    """Batches bigger than the pipe, sent while nobody reads the answers: a blocking send
    deadlocked (the parent stuck writing batch 2, which the child does not read, because
    the child is stuck writing batch 1's answers, which the parent does not read: seen
    under a burst of 90,000 enqueues). A send now queues what the pipe does not take and
    returns; `flush` writes more as the pipe drains, and every answer arrives."""
    import threading

    SqliteJournal(tmp_path / "j.db", writer_process_after=None)  # the schema
    process = sqlite_writer.WriterProcess(str(tmp_path / "j.db"), "NORMAL")
    batches = [[("enqueue", ("t/a", f"m{b}-{i}", "call", 0.0, b'{"pad": "' + b"x" * 40 + b'"}'))
                for i in range(15000)] for b in range(3)]  # answers ~150 KB, batches ~1 MB
    left: list[bool] = []
    sender = threading.Thread(target=lambda: left.extend(process.send(b) for b in batches),
                              daemon=True)
    sender.start()
    sender.join(10)
    assert not sender.is_alive(), "a send blocked on a full pipe"
    assert left[-1] is True  # some of it waits for the pipe to drain
    answers: list[Any] = []
    deadline = time.monotonic() + 60
    import select
    while len(answers) < 3:
        assert time.monotonic() < deadline, f"{len(answers)} answers of 3"
        pending = process.flush()
        readable, _, _ = select.select([process.fileno()], [], [], 0.05)
        if readable:
            answers.append(process.receive())
        elif not pending:
            time.sleep(0.01)
    assert [[n for _, n in a] for a in answers] == \
        [list(range(1 + b * 15000, 1 + (b + 1) * 15000)) for b in range(3)]
    process.close()


def test_a_child_killed_while_the_parent_still_holds_unsent_bytes(tmp_path: Path) -> None:
    """A batch bigger than the pipe, half written, when the child dies: the writers of
    every batch it held or was being sent get a StorageError (WriterGone), nothing waits
    for a pipe nobody reads, and the journal goes on in process."""
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db", writer_process_after=0)
        pid = await started(journal)
        os.kill(pid, signal.SIGSTOP)  # reads nothing more: the big batch stays half sent
        pad = "x" * 2000
        pending = [asyncio.ensure_future(journal.enqueue(
            {**env("t/a", f"m{i}"), "payload": {"pad": pad}})) for i in range(400)]
        await asyncio.sleep(0.3)
        assert not any(p.done() for p in pending)
        os.kill(pid, signal.SIGKILL)
        outcomes = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 10)
        assert all(isinstance(o, errors.StorageError) for o in outcomes), outcomes[:3]
        assert journal.writer_pid is None
        assert await journal.enqueue(env("t/a", "after"))  # in process now
        await journal.close()

    asyncio.run(main())


def test_after_the_child_dies_the_parent_folds_the_index_again(tmp_path: Path) -> None:
    """The child folded the run index; once it is gone, the parent's own catch-ups take
    over (every INDEX_EVERY commits), without a `runs()` query asking."""
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db", writer_process_after=0)
        pid = await started(journal)
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
        for seq in range(journal_sqlite.INDEX_EVERY):
            try:  # the first may be the one that finds the child gone
                await journal.append(run_commit("r/a", seq, f"m{seq}"))
            except errors.StorageError:
                await journal.append(run_commit("r/a", seq, f"m{seq}"))
        assert journal.writer_pid is None
        last = watermark(tmp_path / "j.db")[1]
        deadline = time.monotonic() + 10
        while watermark(tmp_path / "j.db")[0] < last:
            assert time.monotonic() < deadline, "nobody folds the index"
            await asyncio.sleep(0.05)
        await journal.close()

    asyncio.run(main())


def test_a_fold_commits_without_fsync_and_every_batch_after_it_is_fsynced(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run index is derived and behind a watermark written with it, so the child folds
    in NORMAL (no fsync; the next batch's fsync covers it). The connection is back to FULL
    after every fold: one that folded, one that failed, one that found the lock taken."""
    from runtime.journal import sqlite_runs

    path = tmp_path / "j.db"
    SqliteJournal(path, writer_process_after=None)  # the schema
    db = sqlite_writer.connect(str(path), "FULL")
    db.execute("PRAGMA busy_timeout=0")  # as the child's
    for i in range(300):
        db.execute("INSERT INTO commits (actor, seq, has_state, doc) VALUES (?, ?, 0, ?)",
                   (f"r/{i % 3}", i // 3, __import__("json").dumps(
                       run_commit(f"r/{i % 3}", i // 3, f"m{i}")).encode()))
    index = sqlite_writer.IdleIndex(sqlite_writer.WalRelief(), "full")
    levels: list[int] = []
    real = sqlite_runs.catch_up

    def watched(con: sqlite3.Connection, *args: Any, **kw: Any) -> int:
        levels.append(con.execute("PRAGMA synchronous").fetchone()[0])
        return real(con, *args, **kw)

    monkeypatch.setattr(sqlite_runs, "catch_up", watched)
    index.pending = index.MIN
    index.step(db)
    assert levels == [1]  # NORMAL while folding
    assert watermark(path)[0] == index.CHUNK
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL again

    def broken(con: sqlite3.Connection, *args: Any, **kw: Any) -> int:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sqlite_runs, "catch_up", broken)
    index.step(db)
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2
    assert watermark(path)[0] == index.CHUNK  # nothing half-folded

    monkeypatch.setattr(sqlite_runs, "catch_up", watched)
    index.paused_until = 0.0
    other = sqlite3.connect(str(path), isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
    index.step(db)
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2
    other.execute("ROLLBACK")
    other.close()
    index.paused_until = 0.0
    index.step(db)
    assert watermark(path)[0] == 2 * index.CHUNK
    db.close()
