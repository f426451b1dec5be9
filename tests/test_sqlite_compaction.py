"""The SQLite journal compacts itself under the Cosmos journal's rule: tombstones older than
the TTL go, and commits older than both their actor's latest snapshot and the TTL plus the
margin, and folded into the run index. What a recovery reads (the latest snapshot and
everything after it), an unfinished run, what the run index has not folded, and an outcome
within the margin are never touched, whoever writes meanwhile."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from runtime.actors import Actor, ActorContext, ActorRuntime, handler
from runtime.journal import sqlite_compact
from runtime.journal.sqlite import SqliteJournal
from runtime.testing import StubActivities

DAY = 86400.0


class Tally(Actor, type_name="tally"):
    @handler
    async def add(self, ctx: ActorContext, payload: int) -> int:
        await ctx.call_activity("echo", {"n": payload})
        self.state["n"] = self.state.get("n", 0) + payload
        return int(self.state["n"])

    @handler
    async def park(self, ctx: ActorContext, payload: Any) -> int:
        for i in range(3):
            await ctx.call_activity("echo", {"i": i})
        got = await ctx.wait_for_event("go")
        self.state["n"] = self.state.get("n", 0) + int(got)
        return int(self.state["n"])


def count(path: Path, sql: str, *args: Any) -> int:
    con = sqlite3.connect(path)
    try:
        return int(con.execute(sql, args).fetchone()[0])
    finally:
        con.close()


def runtime(journal: SqliteJournal, stub: StubActivities | None = None) -> ActorRuntime:
    if stub is None:
        stub = StubActivities()
    stub.add("echo", lambda input, key: input)
    rt = ActorRuntime(journal, activities=stub, lint=False, poll_interval_s=0.01)
    rt.register(Tally)
    return rt


async def add_many(journal: SqliteJournal, actor: str, n: int) -> None:
    async with runtime(journal) as rt:
        for i in range(n):
            assert await rt.ask(actor, "add", 1) == i + 1


def test_old_commits_and_tombstones_go_and_what_a_recovery_reads_stays(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = SqliteJournal(path, compact_every_s=None)
        await add_many(journal, "tally/a", 20)
        tail = await journal.read_tail("tally/a")
        assert count(path, "SELECT COUNT(*) FROM commits") > len(tail)
        assert count(path, "SELECT COUNT(*) FROM inbox") == 20
        # within the TTL: nothing goes
        assert await journal.compact() == (0, 0)
        commits, tombstones = await journal.compact(now=time.time() + 8 * DAY)
        assert tombstones == 20 and commits > 0
        assert await journal.read_tail("tally/a") == tail
        assert count(path, "SELECT COUNT(*) FROM commits") == len(tail)
        assert count(path, "SELECT COUNT(*) FROM deliveries") == 0
        assert await journal.compact(now=time.time() + 8 * DAY) == (0, 0)  # all done
        async with runtime(journal) as rt:  # recovered from what is left
            assert await rt.ask("tally/a", "add", 1) == 21
        runs = await journal.runs(type="tally")
        assert len(runs) == 21  # the run index keeps its rows
        await journal.close()

    asyncio.run(main())


def test_an_outcome_within_the_margin_still_answers_a_duplicate(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = SqliteJournal(path, compact_every_s=None, tombstone_ttl_s=DAY,
                                commit_margin_s=3600.0)
        async with runtime(journal) as rt:
            first = await rt.send("tally/o", "add", 5)
            assert await rt.ask("tally/o", "add", 1) == 6
            assert (await journal.outcome("tally/o", first)) is not None
            # past the TTL, within the margin: the tombstone is gone, the outcome stays
            await journal.compact(now=time.time() + DAY + 60)
            assert count(path, "SELECT COUNT(*) FROM inbox") == 0
            assert (await journal.outcome("tally/o", first)) is not None
            await journal.compact(now=time.time() + DAY + 3700)
            assert (await journal.outcome("tally/o", first)) is None  # the newest is a
            assert await rt.state_of("tally/o") == {"n": 6}  # snapshot: state stays
        await journal.close()

    asyncio.run(main())


def test_an_unfinished_run_survives_compaction_and_resumes_without_rerunning(
        tmp_path: Path) -> None:
    """A run parked longer than the TTL: its commits are the tail, and stay; once it ends,
    a later compaction takes the commits it no longer needs."""
    path = tmp_path / "j.db"
    later = time.time() + 30 * DAY

    async def main() -> None:
        stub = StubActivities()
        journal = SqliteJournal(path, compact_every_s=None)
        await add_many(journal, "tally/p", 3)
        async with runtime(journal, stub) as rt:
            msg = await rt.send("tally/p", "park", None)
            while len(stub.calls) < 3:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
        calls = len(stub.calls)
        tail = await journal.read_tail("tally/p")
        await journal.compact(now=later)
        assert await journal.read_tail("tally/p") == tail
        stub2 = StubActivities()
        async with runtime(journal, stub2) as rt:
            await rt.signal("tally/p", "go", 10)
            outcome = None
            for _ in range(300):
                outcome = await journal.outcome("tally/p", msg)
                if outcome is not None:
                    break
                await asyncio.sleep(0.01)
            assert outcome is not None
            assert await rt.state_of("tally/p") == {"n": 13}
        assert stub2.calls == [] and calls == 3  # replayed, not run again
        before = count(path, "SELECT COUNT(*) FROM commits WHERE actor = 'tally/p'")
        await journal.compact(now=later)
        after = count(path, "SELECT COUNT(*) FROM commits WHERE actor = 'tally/p'")
        assert after < before and after == len(await journal.read_tail("tally/p"))
        await journal.close()

    asyncio.run(main())


def test_commits_the_run_index_has_not_folded_stay(tmp_path: Path) -> None:
    """A step never deletes past the index's watermark: the catch-up reads those rows."""
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = SqliteJournal(path, compact_every_s=None)
        await add_many(journal, "tally/i", 10)
        await journal.close()

    asyncio.run(main())
    con = sqlite3.connect(path, isolation_level=None)
    try:
        con.execute("UPDATE meta SET value = 5 WHERE key = 'runs_indexed'")
        past = con.execute("SELECT rowid, doc FROM commits WHERE rowid > 5").fetchall()
        con.execute("BEGIN IMMEDIATE")
        step = sqlite_compact.step(con, time.time() + 30 * DAY, DAY, 3600.0)
        con.execute("COMMIT")
        assert step.commits > 0  # some of the first five
        assert con.execute("SELECT rowid, doc FROM commits WHERE rowid > 5").fetchall() == past
        assert con.execute("SELECT value FROM meta WHERE key = 'compacted_to'"
                           ).fetchone() == (5,)
    finally:
        con.close()


def test_a_second_process_writes_while_one_compacts_continuously(tmp_path: Path) -> None:
    """One connection compacts with a TTL of zero, round after round, while a runtime on
    another connection runs messages over 8 actors until 20 rounds have deleted something:
    every answer is right, and a recovery afterwards finds every state."""
    path = tmp_path / "j.db"

    async def main() -> None:
        compactor = SqliteJournal(path, compact_every_s=None, tombstone_ttl_s=0.0,
                                  commit_margin_s=0.0)
        worker = SqliteJournal(path, compact_every_s=None)
        stop = asyncio.Event()
        rounds = [0]

        async def compact_forever() -> None:
            while not stop.is_set():
                if sum(await compactor.compact()) > 0:
                    rounds[0] += 1
                await asyncio.sleep(0.001)

        task = asyncio.create_task(compact_forever())
        asked = [0] * 8
        async with runtime(worker) as rt:
            async def one(i: int) -> None:
                while rounds[0] < 20 and asked[i] < 5000:
                    asked[i] += 1
                    assert await rt.ask(f"tally/c{i}", "add", 1) == asked[i]
            await asyncio.gather(*(one(i) for i in range(8)))
        stop.set()
        await task
        assert rounds[0] >= 20
        async with runtime(SqliteJournal(path, compact_every_s=None)) as rt:  # recovery
            for i in range(8):
                assert await rt.state_of(f"tally/c{i}") == {"n": asked[i]}
                assert await rt.ask(f"tally/c{i}", "add", 1) == asked[i] + 1
            await rt.journal.close()
        await compactor.close()
        await worker.close()

    asyncio.run(main())


def test_the_journal_compacts_itself_as_commits_are_appended(tmp_path: Path) -> None:
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = SqliteJournal(path, compact_every_s=0.0, tombstone_ttl_s=0.0,
                                commit_margin_s=0.0)
        await add_many(journal, "tally/s", 300)
        commits = count(path, "SELECT COUNT(*) FROM commits")
        # 600 written (a step and a completion per message); what is left is what the run
        # index had not folded yet (it catches up every 256 commits or every second)
        assert commits < 300, commits
        assert count(path, "SELECT COUNT(*) FROM inbox") < 300
        await journal.compact()
        assert count(path, "SELECT COUNT(*) FROM commits") == len(
            await journal.read_tail("tally/s"))
        await journal.close()

    asyncio.run(main())


def test_a_failed_compaction_step_undoes_itself_and_fails_nothing_else(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "j.db"
    real = sqlite_compact.step

    def failing(db: sqlite3.Connection, *args: Any, **kw: Any) -> Any:
        real(db, *args, **kw)  # deletes, then fails
        raise sqlite3.OperationalError("disk I/O error (injected)")

    async def main() -> None:
        journal = SqliteJournal(path, compact_every_s=None)
        await add_many(journal, "tally/f", 10)
        before = count(path, "SELECT COUNT(*) FROM commits")
        monkeypatch.setattr(sqlite_compact, "step", failing)
        async with runtime(journal) as rt:
            asked = asyncio.gather(*(rt.ask(f"tally/g{i}", "add", 1) for i in range(4)))
            with pytest.raises(errors.StorageError):
                await journal.compact(now=time.time() + 30 * DAY)
            assert await asked == [1, 1, 1, 1]
        assert count(path, "SELECT COUNT(*) FROM commits WHERE actor = 'tally/f'") == before
        monkeypatch.setattr(sqlite_compact, "step", real)
        assert (await journal.compact(now=time.time() + 30 * DAY))[0] > 0
        await journal.close()

    asyncio.run(main())


def test_a_document_deeper_than_the_fast_reader_goes_is_still_read(tmp_path: Path) -> None:
    """pydantic-core writes 254 levels but reads ~200: a row written deeper by any path
    that did not refuse it (an older Loom, a direct journal write) is read with `json`,
    so its actor is not left failing its load for ever."""
    path = tmp_path / "j.db"

    async def main() -> None:
        journal = SqliteJournal(path, compact_every_s=None)
        deep: Any = 1
        for _ in range(240):
            deep = [deep]
        assert await journal.enqueue({"id": "m", "target": "tally/deep", "kind": "call",
                                      "handler": "add", "payload": deep, "deliver_at": 0.0})
        (entry,) = await journal.inbox("tally/deep", 1.0)
        assert entry["payload"] == deep
        # commits too, read one at a time and in bulk (the replay's path)
        await journal.append({"actor": "tally/deep", "seq": 0, "ts": 1.0, "state": {"d": 0}})
        await journal.append({"actor": "tally/deep", "seq": 1, "ts": 1.0, "state": {"d": deep}})
        assert [c["seq"] for c in await journal.read("tally/deep")] == [0, 1]
        (tail,) = await journal.read_tail("tally/deep")
        assert tail["state"]["d"] == deep
        await journal.close()

    asyncio.run(main())
