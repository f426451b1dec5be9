"""A worker's due poll asks for its own partitions only. It used to read the fleet's first
`due_batch` due actors and keep its own: a backlog of that many in partitions held
elsewhere (a stalled worker, a Redis wipe that lost the wake-ups) hid this worker's due
actors for as long as the backlog lasted. Each test runs the backlog from another journal
connection (another process: no local wake-up), so only the poll can find the message."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

from runtime.actors import Actor, ActorContext, ActorRuntime, handler
from runtime.cluster.partitions import partition_of
from runtime.journal.keyhash import Scope, key_hash
from runtime.journal.sqlite import SqliteJournal
from runtime.testing import StubActivities

PARTITIONS = 4


class Counter(Actor, type_name="counter"):
    @handler
    async def inc(self, ctx: ActorContext, payload: Any) -> int:
        self.state["n"] = self.state.get("n", 0) + 1
        return int(self.state["n"])


class HoldsPartitionZero:
    """The ownership of a worker that holds partition 0 of 4."""

    def partition(self, key: str) -> int:
        return partition_of(key, PARTITIONS)

    def owns(self, key: str) -> bool:
        return self.partition(key) == 0

    def scope(self) -> Scope:
        return Scope(PARTITIONS, frozenset({0}))

    def report(self, in_flight: int) -> None:
        pass

    def accepts(self, key: str, version: str) -> bool:
        return True


def keys_in(partition: int, n: int, prefix: str = "counter/") -> list[str]:
    return [k for k in (f"{prefix}{i}" for i in range(10_000))
            if partition_of(k, PARTITIONS) == partition][:n]


async def mine_is_run_behind_a_backlog(path: Path) -> None:
    sender = SqliteJournal(path)  # another process's connection
    backlog = [k for p in (1, 2, 3) for k in keys_in(p, 8)]
    for key in backlog:
        await sender.enqueue({"id": f"m-{key}", "target": key, "kind": "call",
                              "handler": "inc", "payload": None, "deliver_at": 0.0})
    mine, = keys_in(0, 1)
    rt = ActorRuntime(SqliteJournal(path), activities=StubActivities(), lint=False,
                      poll_interval_s=0.01, due_batch=4, ownership=HoldsPartitionZero())
    rt.register(Counter)
    async with rt:
        await sender.enqueue({"id": "m-mine", "target": mine, "kind": "call",
                              "handler": "inc", "payload": None, "deliver_at": 0.0})
        for _ in range(300):
            if await rt.state_of(mine) == {"n": 1}:
                break
            await asyncio.sleep(0.01)
        assert await rt.state_of(mine) == {"n": 1}
        assert not any(k in rt.activations for k in backlog)  # not this worker's to run
    await rt.journal.close()
    await sender.close()


def test_a_worker_runs_its_due_actor_behind_a_backlog_in_other_partitions(
        tmp_path: Path) -> None:
    asyncio.run(mine_is_run_behind_a_backlog(tmp_path / "j.db"))


def test_a_journal_of_schema_6_gets_its_schedule_hashes_and_the_poll_still_finds_old_rows(
        tmp_path: Path) -> None:
    """Opening a schema-6 journal adds the hash columns and fills them; a row written
    without a hash later (a worker of the old version, mid-upgrade) is still polled."""
    path = tmp_path / "j.db"

    async def write_old() -> None:
        journal = SqliteJournal(path)
        await journal.enqueue({"id": "a", "target": "counter/old", "kind": "call",
                               "handler": "inc", "payload": None, "deliver_at": 0.0})
        await journal.close()

    asyncio.run(write_old())
    con = sqlite3.connect(path)
    with con:  # back to schema 6: no hash columns
        con.execute("ALTER TABLE sched DROP COLUMN hash_hi")
        con.execute("ALTER TABLE sched DROP COLUMN hash_lo")
        con.execute("PRAGMA user_version=6")
    con.close()

    async def reopen() -> None:
        journal = SqliteJournal(path)
        await journal.due_actors(0.0)  # opened: migrated
        con = sqlite3.connect(path)
        try:
            assert con.execute("SELECT hash_hi, hash_lo FROM sched WHERE actor = "
                               "'counter/old'").fetchone() == key_hash("counter/old")
            with con:  # a row as an old worker writes it
                con.execute("INSERT INTO sched (actor, last_n, due_at, ready_n) VALUES "
                            "('counter/unhashed', 1, 0, 1)")
                con.execute("INSERT INTO sched (actor, last_n, due_at, ready_n) VALUES "
                            "('counter/later', 0, NULL, 0)")
        finally:
            con.close()
        # a row without a hash gets one the next time it is written
        await journal.enqueue({"id": "b", "target": "counter/later", "kind": "call",
                               "handler": "inc", "payload": None, "deliver_at": 5.0})
        await journal.acquire("counter/later", "w", 0.0, 1.0)
        con = sqlite3.connect(path)
        try:
            assert con.execute("SELECT hash_hi, hash_lo FROM sched WHERE actor = "
                               "'counter/later'").fetchone() == key_hash("counter/later")
        finally:
            con.close()
        part = partition_of("counter/old", PARTITIONS)
        elsewhere = Scope(PARTITIONS, frozenset(set(range(PARTITIONS)) - {part}))
        got = await journal.due_actors(1.0, scope=elsewhere)
        assert got == ["counter/unhashed"]  # the caller filters rows without a hash itself
        got = await journal.due_actors(1.0, scope=Scope(PARTITIONS, frozenset({part})))
        assert set(got) == {"counter/old", "counter/unhashed"}
        await journal.close()

    asyncio.run(reopen())


def _open_at_once(path: Path, barrier: threading.Barrier, errors: list[BaseException]
                  ) -> None:
    barrier.wait()
    try:
        asyncio.run(SqliteJournal(path).close())
    except BaseException as exc:
        errors.append(exc)


def test_two_processes_opening_a_schema_6_journal_at_once_both_start(tmp_path: Path) -> None:
    """The migration checks the columns again under the write lock: the second process
    finds them added and does nothing (it failed with "duplicate column name")."""
    for trial in range(5):
        path = tmp_path / f"j{trial}.db"
        asyncio.run(SqliteJournal(path).close())
        con = sqlite3.connect(path)
        with con:
            con.execute("INSERT INTO sched (actor, last_n) VALUES ('counter/a', 0)")
            con.execute("ALTER TABLE sched DROP COLUMN hash_hi")
            con.execute("ALTER TABLE sched DROP COLUMN hash_lo")
            con.execute("PRAGMA user_version=6")
        con.close()
        barrier = threading.Barrier(2)
        errors: list[BaseException] = []

        threads = [threading.Thread(target=_open_at_once, args=(path, barrier, errors))
                   for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        con = sqlite3.connect(path)
        assert con.execute("SELECT hash_hi, hash_lo FROM sched").fetchone() == \
            key_hash("counter/a")
        con.close()


def test_a_guest_run_is_polled_although_its_partition_is_held_elsewhere(
        tmp_path: Path) -> None:
    """A run this worker hosts as a guest (pinned to a version only it can resume) lies in
    a partition another worker holds: the poll's scope takes its partition too."""
    path = tmp_path / "j.db"

    async def main() -> None:
        sender = SqliteJournal(path)
        guest, = keys_in(1, 1)
        rt = ActorRuntime(SqliteJournal(path), activities=StubActivities(), lint=False,
                          poll_interval_s=0.01, ownership=HoldsPartitionZero())
        rt.register(Counter)
        async with rt:
            rt._guests.add(guest)
            await sender.enqueue({"id": "m", "target": guest, "kind": "call",
                                  "handler": "inc", "payload": None, "deliver_at": 0.0})
            for _ in range(300):
                if await rt.state_of(guest) == {"n": 1}:
                    break
                await asyncio.sleep(0.01)
            assert await rt.state_of(guest) == {"n": 1}
        await rt.journal.close()
        await sender.close()

    asyncio.run(main())
