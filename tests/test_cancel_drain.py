"""Cancelling a run wherever it runs (issue "many workers"), and draining a runtime.

A cancel is journaled before it takes effect: the run raises RunCancelled at its next step
or in the wait it is parked on, its saga compensates, and its completing commit is
`cancelled`; replay reaches the same point. Draining stops taking work and lets runs in
flight finish before the leases are released.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import durable_actors as da
import pytest
from test_durable_core import (
    KINDS,
    _has_op,
    _true,
    completions,
    eventually,
    open_journal,
    run,
    runtime,
    stubs,
)

from runtime import errors
from runtime.actors.replay import replay_commits
from runtime.journal import SqliteJournal
from runtime.testing import Receiver


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_a_parked_run_compensates_and_is_journaled_cancelled(kind: str,
                                                                   tmp_path: Path) -> None:
    receiver = Receiver()

    async def main() -> None:
        journal = open_journal(kind, tmp_path)
        acts = stubs("book", "unbook", receiver=receiver)
        async with runtime(journal, acts, da.Booking, max_activations=1) as rt:
            task = asyncio.ensure_future(rt.ask("booking/b1", "book", {"trip": "t1"},
                                                msg_id="m1"))
            await eventually(lambda: _has_op(journal, "booking/b1", "wait.start"))
            await rt.send("booking/other", "book", {"trip": "t2"})  # evicts the parked run
            await asyncio.sleep(0.1)
            await rt.cancel("booking/b1", "the customer changed their mind")
            with pytest.raises(errors.RunCancelled, match="changed their mind"):
                await asyncio.wait_for(task, 10)
            assert await rt.state_of("booking/b1") == {}
        done = await completions(journal, "booking/b1")
        assert [c["kind"] for c in done] == ["cancelled"]
        report = await replay_commits(da.Booking, "booking/b1", await journal.read("booking/b1"))
        assert [r.status for r in report.runs] == ["ok"], report.runs
        await journal.close()

    run(main())
    assert [e.key for e in receiver.of("unbook")] == ["booking/b1:m1:comp:2"]


@pytest.mark.parametrize("kind", KINDS)
def test_cancel_during_an_activity_stops_at_the_next_step(kind: str, tmp_path: Path) -> None:
    receiver = Receiver()
    hold = asyncio.Event()

    async def main() -> None:
        journal = open_journal(kind, tmp_path)
        acts = stubs("book", "unbook", "slow", "ticket", receiver=receiver)
        started = [False]

        async def before() -> None:
            if not started[0] and len(acts.calls) == 2:  # the "slow" call
                started[0] = True
                await hold.wait()

        acts.before = before
        async with runtime(journal, acts, da.Booking) as rt:
            task = asyncio.ensure_future(rt.ask("booking/b2", "book",
                                                {"trip": "t2", "slow": True}, msg_id="m1"))
            await eventually(lambda: _true(started[0]), what="the slow activity")
            await rt.cancel("booking/b2", "stop")
            await eventually(lambda: _has_op(journal, "booking/b2", "run.cancelled"))
            hold.set()
            with pytest.raises(errors.RunCancelled):
                await asyncio.wait_for(task, 10)
        await journal.close()

    run(main())
    assert [e.activity for e in receiver.applied.values()] == ["book", "slow", "unbook"]
    assert not receiver.of("ticket")  # the step after the cancel never ran


def test_cancel_from_another_process_and_a_cancel_with_no_run(tmp_path: Path) -> None:
    receiver = Receiver()

    async def main() -> None:
        j1, j2 = SqliteJournal(tmp_path / "j.db"), SqliteJournal(tmp_path / "j.db")
        owner = runtime(j1, stubs("book", "unbook", receiver=receiver), da.Booking)
        client = runtime(j2, stubs(), da.Booking)
        client.types.clear()  # a client: runs no actors
        async with owner, client:
            await client.cancel("booking/idle", "nothing to cancel")
            task = asyncio.ensure_future(client.ask("booking/b3", "book", {"trip": "t3"},
                                                    msg_id="m1"))
            await eventually(lambda: _has_op(j1, "booking/b3", "wait.start"))
            await client.cancel("booking/b3", "from elsewhere")
            with pytest.raises(errors.RunCancelled):
                await asyncio.wait_for(task, 10)
            # the idle actor's cancel did not wait around for a later run: this run ends by
            # its own timeout, not by that cancel
            with pytest.raises(errors.HandlerFailed, match="no 'confirmed' event"):
                await client.ask("booking/idle", "book", {"trip": "t4", "timeout": 0.2},
                                 msg_id="m2")
        await j1.close()
        await j2.close()

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_drain_finishes_runs_in_flight_and_starts_no_new_one(kind: str, tmp_path: Path) -> None:
    hold = asyncio.Event()

    async def main() -> None:
        journal = open_journal(kind, tmp_path)
        acts = stubs("book", "unbook", "slow", "ticket")
        busy = [False]

        async def before() -> None:
            if not busy[0] and acts.calls[-1][0] == "slow":
                busy[0] = True
                await hold.wait()

        acts.before = before
        rt = runtime(journal, acts, da.Booking)
        await rt.start()
        await rt.send("booking/d1", "book", {"trip": "d1", "slow": True, "timeout": 0},
                      msg_id="m1")
        await eventually(lambda: _true(busy[0]), what="the run in flight")
        drained = asyncio.ensure_future(rt.drain(10))
        await asyncio.sleep(0.05)
        await rt.send("booking/d2", "book", {"trip": "d2"}, msg_id="m2")  # not taken now
        await asyncio.sleep(0.2)
        assert not drained.done()  # waiting for the run in flight
        hold.set()
        assert await asyncio.wait_for(drained, 10) is True
        assert [c["kind"] for c in await completions(journal, "booking/d1")] == ["failed"]
        assert await journal.read("booking/d2") == []  # no new run was started
        assert {a for a, _, _ in acts.calls} == {"book", "slow", "ticket", "unbook"}
        await journal.close()

    run(main())


def test_drain_is_cut_short_by_abort(tmp_path: Path) -> None:
    async def main() -> None:
        journal = open_journal("sqlite", tmp_path)
        acts = stubs("book", "unbook", "slow", "ticket")

        async def forever() -> None:
            if acts.calls[-1][0] == "slow":
                await asyncio.Event().wait()

        acts.before = forever
        rt = runtime(journal, acts, da.Booking)
        await rt.start()
        await rt.send("booking/d3", "book", {"trip": "d3", "slow": True}, msg_id="m1")
        await eventually(lambda: _true(any(a == "slow" for a, _, _ in acts.calls)))
        abort = asyncio.Event()
        drained = asyncio.ensure_future(rt.drain(30, abort=abort))
        await asyncio.sleep(0.1)
        abort.set()
        assert await asyncio.wait_for(drained, 5) is False  # cut off: resumes elsewhere
        assert not await completions(journal, "booking/d3")
        await journal.close()

    run(main())

