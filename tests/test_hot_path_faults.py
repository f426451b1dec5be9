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
            assert all(isinstance(r, sqlite3.OperationalError) for r in results), results
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


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_call_written_by_another_process_during_a_run_is_taken_after_it(
        kind: str, tmp_path: Path) -> None:
    """After a run the inbox is read again only if a call may be waiting. A call that another
    process wrote to the journal during the run sends no notification here: the schedule,
    settled as of the last read, must make the actor due so that the poll finds it."""
    async def main() -> None:
        from runtime.journal import MemoryJournal

        journal: Any = SqliteJournal(tmp_path / "j.db") if kind == "sqlite" \
            else MemoryJournal()
        Slow.gate = asyncio.Event()
        rt = ActorRuntime(journal, activities=StubActivities(), lint=False,
                          poll_interval_s=0.02)
        rt.register(Slow)
        async with rt:
            first = asyncio.create_task(rt.ask("slow/s1", "take", "first"))
            while not (rt.activations.get("slow/s1") and rt.activations["slow/s1"].run):
                await asyncio.sleep(0.005)
            assert await journal.enqueue(env("slow/s1", "second")) is True  # not via rt
            Slow.gate.set()
            assert await first == "first"
            deadline = time.monotonic() + 10
            while await journal.outcome("slow/s1", "second") is None:
                assert time.monotonic() < deadline, "the call written meanwhile was never run"
                await asyncio.sleep(0.02)
            assert await rt.state_of("slow/s1") == {"taken": ["first", "second"]}
        await journal.close()

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
