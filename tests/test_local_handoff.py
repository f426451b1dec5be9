"""A call enqueued by this process to an idle actor it holds starts at once, without the
inbox read (runtime `_arrived`, `Activation.take_call`), and only when that read could have
found nothing else: every rule here is one a careless hand-off breaks.

- the journal's number for the entry (`enqueue_numbered`) is the one a read reports;
- an entry written by another process first (never announced here) runs first;
- a delayed call that came due meanwhile is not forgotten by the schedule;
- events, a pump in progress, a journal whose `enqueue` was replaced: the usual way.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from runtime.actors import Actor, ActorContext, ActorRuntime, handler
from runtime.actors.runtime import _numbering
from runtime.journal import MemoryJournal
from runtime.journal.sqlite import SqliteJournal
from runtime.journal.store import Envelope, JournalStore


class Log(Actor, type_name="handoff_log"):
    def initial_state(self) -> dict[str, Any]:
        return {"seen": []}

    @handler
    async def note(self, ctx: ActorContext, payload: Any) -> Any:
        self.state["seen"].append(payload)
        return list(self.state["seen"])

    @handler
    async def size(self, ctx: ActorContext, payload: Any) -> Any:
        return len(payload)


def env(target: str, mid: str, payload: Any = None, **extra: Any) -> Envelope:
    return {"id": mid, "target": target, "kind": "call", "handler": "note",
            "payload": payload, "deliver_at": 0.0, **extra}


def open_store(kind: str, tmp_path: Path) -> JournalStore:
    if kind == "memory":
        return MemoryJournal()
    return SqliteJournal(tmp_path / "j.db", synchronous="NORMAL",
                         writer_process_after=0 if kind == "sqlite-process" else None)


STORES = ["memory", "sqlite", "sqlite-process"]


class CountsReads:
    """Counts the inbox reads of one actor (wraps the journal's method in place)."""

    def __init__(self, journal: Any, actor: str) -> None:
        self.n = 0
        real = journal.inbox

        async def inbox(key: str, now: float, **kw: Any) -> list[Envelope]:
            if key == actor:
                self.n += 1
            found: list[Envelope] = await real(key, now, **kw)
            return found

        journal.inbox = inbox


@pytest.mark.parametrize("kind", STORES)
def test_numbers_are_the_ones_a_read_reports(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        journal: Any = open_store(kind, tmp_path)
        try:
            numbers = await asyncio.gather(*(journal.enqueue_numbered(env("n/1", f"m{i}"))
                                             for i in range(6)))
            again = await asyncio.gather(journal.enqueue_numbered(env("n/1", "m2")),
                                         journal.enqueue_numbered(env("n/2", "m2")))
            assert sorted(numbers) == [1, 2, 3, 4, 5, 6]
            assert again == [0, 1]  # a taken id: 0; another actor numbers from 1
            read = {e["id"]: e["n"] for e in await journal.inbox("n/1", time.time() + 1)}
            assert read == {f"m{i}": numbers[i] for i in range(6)}
            assert await journal.enqueue(env("n/1", "m9")) is True
            assert await journal.enqueue(env("n/1", "m9")) is False
        finally:
            await journal.close()

    asyncio.run(main())


@pytest.mark.parametrize("kind", STORES)
def test_an_idle_actor_takes_a_call_from_here_without_reading(kind: str,
                                                              tmp_path: Path) -> None:
    async def main() -> None:
        journal = open_store(kind, tmp_path)
        # no schedule poll meanwhile: its reads would be its own, not the hand-off's
        async with ActorRuntime(journal, poll_interval_s=30.0, lint=False) as rt:
            rt.register(Log)
            assert await rt.ask("handoff_log/a", "note", 0, timeout=10) == [0]
            await asyncio.sleep(0.05)  # idle, every entry read
            reads = CountsReads(journal, "handoff_log/a")
            for i in range(1, 6):
                assert await rt.ask("handoff_log/a", "note", i, timeout=10) == \
                    list(range(i + 1))
            assert reads.n == 0
            # what the run saw as its message is a copy, as a read would decode it
            payload = {"k": [1, 2]}
            assert await rt.ask("handoff_log/a", "note", payload, timeout=10) == \
                [0, 1, 2, 3, 4, 5, {"k": [1, 2]}]
            act = rt.activations["handoff_log/a"]
            assert act.complete_n == act.seen_n == 7

    asyncio.run(main())


@pytest.mark.parametrize("kind", STORES)
def test_a_call_another_process_enqueued_first_runs_first(kind: str, tmp_path: Path) -> None:
    """Entry n-1 came from elsewhere (no notification here yet); entry n is this process's
    own ask: the hand-off must not jump the queue. The inbox is read; n-1 runs first."""
    async def main() -> None:
        journal = open_store(kind, tmp_path)
        async with ActorRuntime(journal, poll_interval_s=5.0, lint=False) as rt:
            rt.register(Log)
            assert await rt.ask("handoff_log/b", "note", "warm", timeout=10) == ["warm"]
            await asyncio.sleep(0.05)
            assert await journal.enqueue(env("handoff_log/b", "elsewhere", "first"))
            seen = await rt.ask("handoff_log/b", "note", "second", timeout=10)
            assert seen[:2] == ["warm", "first"], seen
            assert seen[-1] == "second"

    asyncio.run(main())


@pytest.mark.parametrize("kind", STORES)
def test_a_delayed_call_below_the_handed_off_one_still_runs(kind: str, tmp_path: Path) -> None:
    """Entry 1 is a call due later (from elsewhere); entry 2, read and run, makes entry 3 a
    hand-off although entry 1 was never read (it was not due). Only the schedule brings
    entry 1 back, so the hand-off settles as of the last read, when entry 1 was not due
    yet: settled as of a later time, entry 1 would count as read and wait for ever."""
    async def main() -> None:
        journal = open_store(kind, tmp_path)
        async with ActorRuntime(journal, poll_interval_s=0.02, lint=False) as rt:
            rt.register(Log)
            await journal.enqueue(env("handoff_log/c", "later", "delayed",
                                      deliver_at=time.time() + 0.5))
            assert await rt.ask("handoff_log/c", "note", "one", timeout=10) == ["one"]
            act = rt.activations["handoff_log/c"]
            assert act.complete_n == 2
            read_at, taken = act.read_at, act.take_call
            handed: list[tuple[int, Any]] = []

            def spy(env: Envelope, n: int) -> bool:
                done = taken(env, n)
                if done:
                    handed.append((n, rt._unsettled.get("handoff_log/c")))
                return done

            act.take_call = spy  # type: ignore[method-assign]
            # an id of the caller's: the entry is written first (an id made up here would
            # start the run early instead: tests/test_unwritten_call.py)
            assert await rt.ask("handoff_log/c", "note", "two", msg_id="two",
                                timeout=10) == ["one", "two"]
            assert handed == [(3, (read_at, 3, True))]  # as of the read that took "one"
            deadline = time.monotonic() + 10
            while "delayed" not in (await rt.state_of("handoff_log/c"))["seen"]:
                assert time.monotonic() < deadline, "the delayed call was never run"
                await asyncio.sleep(0.02)
            assert (await rt.state_of("handoff_log/c"))["seen"] == ["one", "two", "delayed"]

    asyncio.run(main())


def test_events_and_busy_actors_go_the_usual_way(tmp_path: Path) -> None:
    async def main() -> None:
        journal = MemoryJournal()
        async with ActorRuntime(journal, poll_interval_s=0.01, lint=False) as rt:
            rt.register(Log)
            assert await rt.ask("handoff_log/d", "note", 1, timeout=10) == [1]
            act = rt.activations["handoff_log/d"]
            n = act.complete_n + 1
            event = {**env("handoff_log/d", "ev"), "kind": "event", "name": "go"}
            assert act.take_call(event, n) is False
            assert act.take_call(env("handoff_log/d", "x"), n + 1) is False  # a gap
            assert act.take_call(env("handoff_log/d", "y", deliver_at=time.time() + 60),
                                 n) is False  # not due
            async with act.pump_lock:  # a read in progress decides
                assert act.take_call(env("handoff_log/d", "z"), n) is False
            assert act.run is None

    asyncio.run(main())


def test_a_journal_whose_enqueue_was_replaced_is_called_through_it() -> None:
    class Counting(MemoryJournal):
        calls = 0

        async def enqueue(self, envelope: Envelope) -> bool:
            Counting.calls += 1
            return await super().enqueue(envelope)

    assert _numbering(MemoryJournal()) is not None
    assert _numbering(Counting()) is None
    patched = MemoryJournal()
    patched.enqueue = Counting().enqueue  # type: ignore[method-assign]
    assert _numbering(patched) is None

    async def main() -> None:
        async with ActorRuntime(Counting(), poll_interval_s=0.01, lint=False) as rt:
            rt.register(Log)
            assert await rt.ask("handoff_log/e", "note", 1, timeout=10) == [1]
            assert await rt.ask("handoff_log/e", "note", 2, timeout=10) == [1, 2]
        assert Counting.calls == 2

    asyncio.run(main())


def test_a_payload_the_copy_refuses_goes_the_usual_way() -> None:
    """The memory journal stores with `json` (a lone surrogate passes); the hand-off's copy
    refuses it: the message, already stored, must still run (not raise out of `ask`)."""
    async def main() -> None:
        async with ActorRuntime(MemoryJournal(), poll_interval_s=30.0, lint=False) as rt:
            rt.register(Log)
            assert await rt.ask("handoff_log/s", "size", "ok", timeout=10) == 2
            assert await rt.ask("handoff_log/s", "size", "x\ud800", timeout=10) == 2

    asyncio.run(main())


def test_a_faulty_wrapper_numbers_entries_only_if_its_journal_does() -> None:
    """The simulation's wrapper must not invent numbers for a journal that has none (a
    number 1 for every entry would pass `complete_n == n - 1` on a fresh actor and jump
    the queue)."""
    from runtime.testing.faults import FaultyJournal

    class Unnumbered:  # a journal without enqueue_numbered (as Cosmos)
        url = "x://"

        async def enqueue(self, envelope: Envelope) -> bool:
            return True

    node: Any = object()
    assert _numbering(FaultyJournal.around(Unnumbered(), node)) is None  # type: ignore[arg-type]
    assert _numbering(FaultyJournal.around(MemoryJournal(), node)) is not None


def test_a_duplicate_and_a_landed_but_failed_enqueue_run_once() -> None:
    """The same message id asked twice (the second finds it taken: 0, no hand-off), and an
    enqueue that lands but reports a storage error (the caller retries the same id): each
    message runs exactly once, and the retry gets its answer."""
    from runtime import errors

    class LandsThenFails(MemoryJournal):
        armed = False

        async def enqueue(self, envelope: Envelope) -> bool:
            return bool(await self.enqueue_numbered(envelope))

        async def enqueue_numbered(self, envelope: Envelope) -> int:
            number = await super().enqueue_numbered(envelope)
            if self.armed:
                self.armed = False
                raise errors.StorageError("injected: landed, then failed")
            return number

    async def main() -> None:
        journal = LandsThenFails()
        assert _numbering(journal) is not None
        async with ActorRuntime(journal, poll_interval_s=0.02, lint=False) as rt:
            rt.register(Log)
            assert await rt.ask("handoff_log/f", "note", 1, msg_id="a", timeout=10) == [1]
            assert await rt.ask("handoff_log/f", "note", 1, msg_id="a", timeout=10) == [1]
            journal.armed = True
            with pytest.raises(errors.StorageError):
                await rt.ask("handoff_log/f", "note", 2, msg_id="b", timeout=10)
            assert await rt.ask("handoff_log/f", "note", 2, msg_id="b", timeout=10) == [1, 2]
            assert await rt.ask("handoff_log/f", "note", 3, timeout=10) == [1, 2, 3]
            assert (await rt.state_of("handoff_log/f"))["seen"] == [1, 2, 3]

    asyncio.run(main())
