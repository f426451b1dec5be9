"""Dead letters (issue "many workers"): a message whose activation keeps ending before its
run finishes (a worker killed each time) is moved to the dead-letter list after
`max_deliveries`; storage errors never count towards it. `loom dlq` lists, shows, retries
and drops."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import durable_actors as da
import pytest
from test_durable_core import (
    Tripwire,
    _has_op,
    _true,
    completions,
    eventually,
    run,
    runtime,
    stubs,
)

from runtime import errors
from runtime.cli import main as loom
from runtime.journal import SqliteJournal


def test_a_message_that_kills_its_worker_every_time_is_dead_lettered(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "loom.db"

    async def main() -> None:
        journal = SqliteJournal(db)
        for attempt in range(3):  # three workers die while running it
            acts = stubs("boom")
            reached = [False]

            async def die(reached: list[bool] = reached) -> None:
                reached[0] = True
                await asyncio.Event().wait()  # the process is gone before this returns

            acts.before = die
            rt = runtime(journal, acts, da.Poison, max_deliveries=3)
            await rt.start()
            if attempt == 0:
                await rt.send("poison/p1", "go", None, msg_id="m1")
            await eventually(lambda r=reached: _true(r[0]), what=f"delivery {attempt + 1}")
            rt.abandon()
        async with runtime(journal, stubs("boom"), da.Poison, max_deliveries=3) as rt:
            with pytest.raises(errors.DeadLettered, match="taken up 4 times"):
                await rt.ask("poison/p1", "go", None, msg_id="m1", timeout=10)
        assert [c["kind"] for c in await completions(journal, "poison/p1")] == ["dead_lettered"]
        dead = await journal.dead_letters()
        assert [(d["actor"], d["msg"], d["deliveries"]) for d in dead] == [
            ("poison/p1", "m1", 4)]
        await journal.close()

    run(main())
    monkeypatch.setenv("LOOM_HOME", str(tmp_path))
    assert loom(["dlq", "list"]) == 0
    assert "poison/p1" in capsys.readouterr().out
    assert loom(["dlq", "show", "poison", "p1", "m1"]) == 0
    assert json.loads(capsys.readouterr().out)["envelope"]["handler"] == "go"
    assert loom(["dlq", "retry", "poison", "p1", "m1"]) == 0
    assert "re-sent as m1~retry-" in capsys.readouterr().out
    assert loom(["dlq", "list"]) == 1  # unlisted after the retry

    async def requeued() -> list[Any]:
        journal = SqliteJournal(db)
        try:
            return await journal.inbox("poison/p1", 1e12, calls=None)
        finally:
            await journal.close()

    assert [e["id"].split("~")[0] for e in asyncio.run(requeued())] == ["m1"]


def test_a_handler_that_kills_its_worker_before_any_activity_call_is_dead_lettered(
        tmp_path: Path) -> None:
    """No activity call ever counts here: each takeover of a lease whose holder was cut off
    counts one delivery as the run starts, so the poison does not take down one worker after
    another for ever."""

    async def main() -> None:
        journal = SqliteJournal(tmp_path / "loom.db")
        for attempt in range(3):  # three processes die inside the handler
            rt = runtime(journal, stubs("boom"), da.Crasher, max_deliveries=2)
            await rt.start()
            if attempt == 0:
                await rt.send("crasher/c1", "go", None, msg_id="m1")

            async def running(rt: Any = rt) -> bool:
                act = rt.activations.get("crasher/c1")
                return act is not None and act.run is not None and act.counted
            await eventually(running, what=f"activation {attempt + 1} to run the handler") \
                if attempt else await eventually(
                    lambda rt=rt: _true("crasher/c1" in rt.activations), what="the first")
            rt.abandon()
        async with runtime(journal, stubs("boom"), da.Crasher, max_deliveries=2) as rt:
            with pytest.raises(errors.DeadLettered, match="taken up 3 times"):
                await rt.ask("crasher/c1", "go", None, msg_id="m1", timeout=10)
        dead = await journal.dead_letters()
        assert [(d["actor"], d["msg"], d["deliveries"]) for d in dead] == [
            ("crasher/c1", "m1", 3)]
        assert [c["kind"] for c in await completions(journal, "crasher/c1")] == [
            "dead_lettered"]
        await journal.close()

    run(main())


def test_storage_errors_never_dead_letter_a_message(tmp_path: Path) -> None:
    journal = Tripwire(SqliteJournal(tmp_path / "j.db"))
    failures = [0]

    def flaky_commits(op: str, args: tuple[Any, ...]) -> None:
        if op == "append" and failures[0] < 8:
            failures[0] += 1
            raise errors.StorageError("injected: 503")
        return None

    journal.rules.append(flaky_commits)

    async def main() -> None:
        async with runtime(journal, stubs("boom"), da.Poison, max_deliveries=2) as rt:
            out = await rt.ask("poison/p2", "go", None, msg_id="m1", timeout=30)
        assert out == {"id": "boom:poison/p2:m1:0"}
        assert await journal.dead_letters() == []
        await journal.close()

    run(main())
    assert failures[0] == 8


def test_a_parked_run_reactivated_many_times_is_never_dead_lettered(tmp_path: Path) -> None:
    """Worker restarts (even crashes) while a run waits for its event are no poison: the
    replayed run makes no live call, so no delivery is counted."""
    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        rt = runtime(journal, stubs("book", "unbook"), da.Booking, max_deliveries=2)
        await rt.start()
        await rt.send("booking/b1", "book", {"trip": "t1"}, msg_id="m1")
        await eventually(lambda: _has_op(journal, "booking/b1", "wait.start"))
        for _ in range(6):
            rt.abandon()
            rt = runtime(journal, stubs("book", "unbook"), da.Booking, max_deliveries=2)
            await rt.start()
            rt.notify("booking/b1")  # activates and replays the parked run
            await asyncio.sleep(0.05)
        await rt.signal("booking/b1", "confirmed", True, msg_id="c1")
        assert await rt.ask("booking/b1", "book", {"trip": "t1"}, msg_id="m1",
                            timeout=10) == "booked"
        await rt.stop()
        assert await journal.dead_letters() == []
        await journal.close()

    run(main())
