"""Faults against the hot-path shortcuts of issue #12: a COMMIT that fails, a call written to
the journal by another process while a run is in progress (no notification reaches this
one), message ids across a fork, and a bad LOOM_STATE_DELTAS."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from runtime.actors import Actor, ActorContext, ActorRuntime, handler
from runtime.actors.runtime import message_id
from runtime.journal.sqlite import SqliteJournal
from runtime.settings import load_settings
from runtime.testing import StubActivities


class FailingCommit:
    """The writer connection, except that its next COMMIT fails (a full disk, an I/O
    error): everything else goes to the real connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db, self.armed = db, True

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "COMMIT" and self.armed:
            self.armed = False
            raise sqlite3.OperationalError("disk I/O error")
        return self.db.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.db, name)


def test_a_failed_commit_fails_its_whole_batch_and_the_journal_goes_on(tmp_path: Path) -> None:
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        try:
            assert await journal.enqueue(env("a/1", "before")) is True
            journal._writer = FailingCommit(journal._writer)  # type: ignore[assignment]
            results = await asyncio.gather(
                journal.enqueue(env("a/1", "m1")), journal.enqueue(env("a/2", "m2")),
                journal.append({"actor": "a/1", "seq": 1, "ts": 1.0, "consumed": ["before"]}),
                return_exceptions=True)
            assert all(isinstance(r, errors.StorageError) and isinstance(
                r.__cause__, sqlite3.OperationalError) for r in results), results
            # nothing of the batch landed, and what was there before is untouched
            assert [e["id"] for e in await journal.inbox("a/1", 9.0)] == ["before"]
            assert await journal.inbox("a/2", 9.0) == []
            assert await journal.read("a/1") == []
            # the next batch commits normally, numbered as if the failed one never was
            assert await journal.enqueue(env("a/1", "m1")) is True
            await journal.append({"actor": "a/1", "seq": 1, "ts": 1.0, "consumed": ["before"]})
            assert [(e["id"], e["n"]) for e in await journal.inbox("a/1", 9.0)] == [("m1", 2)]
        finally:
            await journal.close()

    asyncio.run(main())


class BrokenBegin(FailingCommit):
    """The writer connection, except that its next BEGIN fails with an error that is not
    a busy lock (a corrupt file, a connection closed under it)."""

    def execute(self, sql: str, *args: Any) -> Any:
        if sql == "BEGIN IMMEDIATE" and self.armed:
            self.armed = False
            raise sqlite3.DatabaseError("database disk image is malformed")
        return self.db.execute(sql, *args)


def test_a_begin_that_fails_fails_its_batch_and_the_journal_goes_on(tmp_path: Path) -> None:
    """Only a busy lock sends a batch to the writer thread; any other error at BEGIN fails
    that batch's writes, and the next batch, close() and a write after close() all finish
    (none waits for ever)."""
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        journal._writer = BrokenBegin(journal._writer)  # type: ignore[assignment]
        with pytest.raises(errors.StorageError, match="malformed"):
            await asyncio.wait_for(journal.enqueue(env("a/1", "m1")), 5)
        assert await asyncio.wait_for(journal.enqueue(env("a/1", "m2")), 5) is True
        assert [e["id"] for e in await journal.inbox("a/1", time.time())] == ["m2"]
        await asyncio.wait_for(journal.close(), 5)
        with pytest.raises(errors.StorageError):  # closed: an error, not a hang
            await asyncio.wait_for(journal.enqueue(env("a/1", "m3")), 5)

    asyncio.run(main())


def test_a_write_lock_held_too_long_fails_the_batch_after_one_wait(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process holds the write lock past the wait: the batch fails with the busy
    error after one wait (it used to wait a second time to retry with savepoints)."""
    from runtime.journal import sqlite as journal_sqlite

    waits: list[float] = []
    real = journal_sqlite._begin_waiting

    def short_wait(db: sqlite3.Connection, timeout: float = 30.0) -> None:
        waits.append(timeout)
        real(db, 0.3)

    monkeypatch.setattr(journal_sqlite, "_begin_waiting", short_wait)

    async def main() -> None:
        path = tmp_path / "j.db"
        journal = SqliteJournal(path)
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's write transaction
        try:
            with pytest.raises(errors.StorageError, match="locked"):
                await asyncio.wait_for(journal.enqueue(env("a/1", "m1")), 10)
            assert len(waits) == 1
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert await journal.enqueue(env("a/1", "m2")) is True  # and it goes on
        await journal.close()

    asyncio.run(main())


def env(actor: str, mid: str) -> dict[str, Any]:
    return {"id": mid, "target": actor, "kind": "call", "handler": "take",
            "payload": mid, "deliver_at": 0.0}


class Slow(Actor, type_name="slow"):
    """Its first run waits until the test lets it go."""

    gate: asyncio.Event | None = None

    @handler
    async def take(self, ctx: ActorContext, payload: Any) -> Any:
        if payload == "first" and Slow.gate is not None:
            await Slow.gate.wait()
        self.state.setdefault("taken", []).append(payload)
        return payload


def journal_of(kind: str, tmp_path: Path) -> Any:
    from runtime.journal import MemoryJournal

    return SqliteJournal(tmp_path / "j.db") if kind == "sqlite" else MemoryJournal()


async def inside_first_run(journal: Any, key: str, **options: Any
                           ) -> tuple[ActorRuntime, asyncio.Task[Any]]:
    """A started runtime on `journal` whose actor `key` is inside its first run (held until
    Slow.gate is set), and the ask of that run."""
    Slow.gate = asyncio.Event()
    rt = ActorRuntime(journal, activities=StubActivities(), lint=False, poll_interval_s=0.02,
                      **options)
    rt.register(Slow)
    await rt.start()
    first = asyncio.create_task(rt.ask(key, "take", "first"))
    while not (rt.activations.get(key) and rt.activations[key].run):
        await asyncio.sleep(0.005)
    return rt, first


async def until_outcome(journal: Any, key: str, msg_id: str, why: str) -> None:
    deadline = time.monotonic() + 10
    while await journal.outcome(key, msg_id) is None:
        assert time.monotonic() < deadline, why
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_call_written_by_another_process_during_a_run_is_taken_after_it(
        kind: str, tmp_path: Path) -> None:
    """After a run the inbox is read again only if a call may be waiting. A call that another
    process wrote to the journal during the run sends no notification here: the schedule,
    settled as of the last read, must make the actor due so that the poll finds it."""
    async def main() -> None:
        journal = journal_of(kind, tmp_path)
        rt, first = await inside_first_run(journal, "slow/s1")
        try:
            assert await journal.enqueue(env("slow/s1", "second")) is True  # not via rt
            assert Slow.gate is not None
            Slow.gate.set()
            assert await first == "first"
            await until_outcome(journal, "slow/s1", "second",
                                "the call written meanwhile was never run")
            assert await rt.state_of("slow/s1") == {"taken": ["first", "second"]}
        finally:
            await rt.stop()
        await journal.close()

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
@pytest.mark.parametrize("seen_past_the_call", ["event", "untaken call"])
def test_a_drain_never_counts_an_unread_call_as_seen(kind: str, seen_past_the_call: str,
                                                      tmp_path: Path) -> None:
    """A drain reads the inbox without calls (it starts no new run). An entry numbered
    after a queued call (an event nobody waits for, here) must not make the released
    schedule count that call as seen: the next worker on the journal runs it."""
    async def main() -> None:
        journal = journal_of(kind, tmp_path)
        rt, first = await inside_first_run(journal, "slow/d1")
        assert Slow.gate is not None
        await rt.send("slow/d1", "take", "second")  # n=2: queued behind the run
        if seen_past_the_call == "event":
            await rt.signal("slow/d1", "nobody-waits", {})  # n=3
        else:
            await rt.send("slow/d1", "take", "third")  # n=3
        await asyncio.sleep(0.05)
        drained = asyncio.create_task(rt.drain(5.0))
        await asyncio.sleep(0.01)
        Slow.gate.set()
        assert await first == "first" and await drained
        again = ActorRuntime(journal, activities=StubActivities(), lint=False,
                             poll_interval_s=0.02)
        again.register(Slow)
        want = ["first", "second"] + (["third"] if seen_past_the_call != "event" else [])
        async with again:
            deadline = time.monotonic() + 10
            while (await again.state_of("slow/d1") or {}).get("taken") != want:
                assert time.monotonic() < deadline, await again.state_of("slow/d1")
                await asyncio.sleep(0.02)
        await journal.close()

    asyncio.run(main())


def test_a_settle_that_fails_is_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    """The schedule settles in batches, off the run's path. One that fails (a failed group
    COMMIT) is kept for the next pass: dropped, a call another process wrote during the run
    would wait behind a schedule that says nothing is due until the actor is evicted."""
    from runtime.journal import MemoryJournal

    class FlakySettle(MemoryJournal):
        armed = False

        async def settle(self, actor: str, owner: str, **kw: Any) -> None:
            if self.armed and not kw.get("busy") and not kw.get("release"):
                self.armed = False
                raise sqlite3.OperationalError("disk I/O error")
            await super().settle(actor, owner, **kw)

    async def main() -> None:
        journal = FlakySettle()
        rt, first = await inside_first_run(journal, "slow/f1", lease_ttl_s=60.0)
        try:
            assert await journal.enqueue(env("slow/f1", "second")) is True  # not via rt
            await asyncio.sleep(0.1)  # the busy settle lands (calls left out while busy)
            journal.armed = True  # the settle after the run fails once
            assert Slow.gate is not None
            Slow.gate.set()
            assert await first == "first"
            await until_outcome(journal, "slow/f1", "second", "a failed settle was dropped")
        finally:
            await rt.stop()
        assert not journal.armed and "settling 1 actor(s) failed (slow/f1: " in caplog.text

    asyncio.run(main())


def test_message_ids_stay_unique_across_a_fork() -> None:
    read, write = os.pipe()
    message_id()
    pid = os.fork()
    if pid == 0:  # the child: its next id, then out at once
        os.write(write, message_id().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    child = os.read(read, 100).decode()
    os.close(read)
    ours = {message_id() for _ in range(1000)}
    assert child and child not in ours


def test_a_bad_state_deltas_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOOM_STATE_DELTAS", "of")
    with pytest.raises(errors.SettingsInvalid, match="LOOM_STATE_DELTAS"):
        load_settings()
    with pytest.raises(errors.SettingsInvalid, match="LOOM_STATE_DELTAS"):
        ActorRuntime(SqliteJournal(":memory:"), activities=StubActivities(), lint=False)
    monkeypatch.setenv("LOOM_STATE_DELTAS", "off")
    assert load_settings().state_deltas is False
