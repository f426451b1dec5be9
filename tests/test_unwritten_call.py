"""An ask with an id made up here, to an idle actor held here, starts its run before the
call's entry is written (`ActorRuntime._run_unwritten`, `Activation.take_unwritten`); the
entry goes with the run's first commit (`append_entry`). What must still hold:

- the entry and the commit land together, and the asker is answered only once they have;
- an entry written elsewhere before it (not read yet) runs first: the early run is
  discarded and the inbox read in order;
- a failed entry write fails the ask and leaves nothing: no entry, no commit, no state;
  one that landed but reported a failure runs exactly once;
- an activity that reaches outside the process (HTTP, logs), a wait or a delivery count
  comes only after the entry has landed.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from runtime import errors
from runtime.actors import Actor, ActorContext, ActorRuntime, handler
from runtime.actors import activation as activation_module
from runtime.journal import MemoryJournal
from runtime.journal.sqlite import SqliteJournal
from runtime.journal.store import Envelope, JournalStore


class Tally(Actor, type_name="unwritten_tally"):
    def initial_state(self) -> dict[str, Any]:
        return {"seen": []}

    @handler
    async def note(self, ctx: ActorContext, payload: Any) -> Any:
        self.state["seen"].append(payload)
        return list(self.state["seen"])

    @handler
    async def fetch(self, ctx: ActorContext, payload: Any) -> Any:
        out = await ctx.call_activity("probe", payload)
        self.state["seen"].append(out)
        return out

    @handler
    async def nap(self, ctx: ActorContext, payload: Any) -> Any:
        await ctx.sleep(0.01)
        self.state["seen"].append(payload)
        return payload


class Gated(MemoryJournal):
    """Holds every enqueue at `gate` while it is closed (then writes it, or fails as
    armed), and records the order of enqueues and appends as they land."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.fail: str | None = None  # "before": nothing lands; "after": lands, then raises
        self.landed: list[str] = []

    async def enqueue(self, envelope: Envelope) -> bool:
        return bool(await self.enqueue_numbered(envelope))

    async def enqueue_numbered(self, envelope: Envelope) -> int:
        await self.gate.wait()
        fail, self.fail = self.fail, None
        if fail == "before":
            raise errors.StorageError("injected: the entry was not written")
        number = await super().enqueue_numbered(envelope)
        self.landed.append(f"entry:{envelope.get('payload')}")
        if fail == "after":
            raise errors.StorageError("injected: the entry landed, then the write failed")
        return number

    async def append(self, commit: dict[str, Any]) -> None:
        await super().append(commit)
        if commit.get("run"):
            self.landed.append(f"commit:{commit['seq']}")

    async def append_entry(self, commit: dict[str, Any], envelope: Envelope, n: int) -> int:
        await self.gate.wait()
        fail, self.fail = self.fail, None
        if fail == "before":
            raise errors.StorageError("injected: the entry was not written")
        number = await super().append_entry(commit, envelope, n)
        if fail == "after":
            raise errors.StorageError("injected: the entry landed, then the write failed")
        return number


def open_store(kind: str, tmp_path: Path) -> JournalStore:
    if kind == "memory":
        return MemoryJournal()
    return SqliteJournal(tmp_path / "j.db", synchronous="NORMAL",
                         writer_process_after=0 if kind == "sqlite-process" else None)


class CountsEarlyRuns:
    """Counts the runs started before their entry was written."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        real = activation_module.Activation.take_unwritten

        def take_unwritten(act: Any, env: Envelope) -> bool:
            taken = real(act, env)
            self.n += taken
            return taken

        monkeypatch.setattr(activation_module.Activation, "take_unwritten", take_unwritten)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "sqlite-process"])
def test_asks_from_here_run_early_and_each_lands_once(kind: str, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    early = CountsEarlyRuns(monkeypatch)

    async def main() -> None:
        journal = open_store(kind, tmp_path)
        async with ActorRuntime(journal, poll_interval_s=5.0, lint=False) as rt:
            rt.register(Tally)
            for i in range(20):
                assert (await rt.ask("unwritten_tally/a", "note", i, timeout=10))[-1] == i
            answers = await asyncio.gather(*(rt.ask(f"unwritten_tally/k{i % 4}", "note", i,
                                                    timeout=10) for i in range(40)))
            assert all(a for a in answers)
            assert (await rt.state_of("unwritten_tally/a"))["seen"] == list(range(20))
            for k in range(4):
                seen = (await rt.state_of(f"unwritten_tally/k{k}"))["seen"]
                assert sorted(seen) == list(range(k, 40, 4))
            # every entry consumed by its run's commit, no commit twice for a message
            for key in ["unwritten_tally/a"] + [f"unwritten_tally/k{k}" for k in range(4)]:
                assert await journal.inbox(key, 1e18) == []
                msgs = [c["run"]["msg"] for c in await journal.read(key) if c.get("run")]
                assert len(msgs) == len(set(msgs))
        await journal.close()
        assert early.n >= 19  # the first ask activates the actor the usual way

    asyncio.run(main())


def test_nothing_is_committed_before_the_entry_and_the_answer_waits_for_both(
        monkeypatch: pytest.MonkeyPatch) -> None:
    early = CountsEarlyRuns(monkeypatch)

    async def main() -> None:
        journal = Gated()
        async with ActorRuntime(journal, poll_interval_s=5.0, lint=False) as rt:
            rt.register(Tally)
            assert await rt.ask("unwritten_tally/g", "note", "warm", timeout=10) == ["warm"]
            journal.gate.clear()
            asked = asyncio.ensure_future(rt.ask("unwritten_tally/g", "note", "x", timeout=10))
            for _ in range(50):  # the run goes as far as it may
                await asyncio.sleep(0)
            assert early.n == 1
            assert not asked.done()
            assert journal.landed == ["entry:warm", "commit:0"]  # nothing new landed
            journal.gate.set()
            assert await asked == ["warm", "x"]
            assert journal.landed == ["entry:warm", "commit:0", "entry:x", "commit:1"]
            assert await journal.inbox("unwritten_tally/g", 1e18) == []

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["memory", "sqlite", "sqlite-process"])
def test_an_entry_written_elsewhere_first_runs_first(kind: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Entry n came from elsewhere (no notification here); the ask from here starts early
    as entry n+1, finds out when its entry lands, and is discarded: n runs first."""
    early = CountsEarlyRuns(monkeypatch)

    async def main() -> None:
        journal = open_store(kind, tmp_path)
        async with ActorRuntime(journal, poll_interval_s=5.0, lint=False) as rt:
            rt.register(Tally)
            assert await rt.ask("unwritten_tally/o", "note", "warm", timeout=10) == ["warm"]
            await asyncio.sleep(0.05)
            assert await journal.enqueue({"id": "elsewhere", "target": "unwritten_tally/o",
                                          "kind": "call", "handler": "note",
                                          "payload": "first", "deliver_at": 0.0})
            seen = await rt.ask("unwritten_tally/o", "note", "second", timeout=10)
            assert seen == ["warm", "first", "second"]
            assert (await rt.state_of("unwritten_tally/o"))["seen"] == seen
            msgs = [c["run"]["msg"] for c in await journal.read("unwritten_tally/o")
                    if c.get("run")]
            assert len(msgs) == 3 and msgs[1] == "elsewhere"
        await journal.close()
        assert early.n == 1  # it did start early, and was discarded

    asyncio.run(main())


def test_a_failed_entry_write_fails_the_ask_and_leaves_nothing() -> None:
    async def main() -> None:
        journal = Gated()
        async with ActorRuntime(journal, poll_interval_s=0.02, lint=False) as rt:
            rt.register(Tally)
            assert await rt.ask("unwritten_tally/f", "note", 1, timeout=10) == [1]
            journal.fail = "before"
            with pytest.raises(errors.StorageError, match="was not written"):
                await rt.ask("unwritten_tally/f", "note", 2, timeout=10)
            assert journal.landed == ["entry:1", "commit:0"]
            assert await journal.inbox("unwritten_tally/f", 1e18) == []
            assert await rt.ask("unwritten_tally/f", "note", 3, timeout=10) == [1, 3]
            assert (await rt.state_of("unwritten_tally/f"))["seen"] == [1, 3]

    asyncio.run(main())


def test_an_entry_that_landed_but_reported_failure_runs_exactly_once() -> None:
    async def main() -> None:
        journal = Gated()
        async with ActorRuntime(journal, poll_interval_s=0.02, lint=False) as rt:
            rt.register(Tally)
            assert await rt.ask("unwritten_tally/l", "note", 1, timeout=10) == [1]
            journal.fail = "after"
            with pytest.raises(errors.StorageError, match="landed"):
                await rt.ask("unwritten_tally/l", "note", 2, timeout=10)
            # the discarded run is reloaded from the journal: the entry runs there, once
            assert await rt.ask("unwritten_tally/l", "note", 3, timeout=10) == [1, 2, 3]
            msgs = [c["run"]["msg"] for c in await journal.read("unwritten_tally/l")
                    if c.get("run")]
            assert len(msgs) == 3 == len(set(msgs))

    asyncio.run(main())


@pytest.mark.parametrize("contained", [True, False])
def test_only_a_contained_activity_runs_before_the_entry(contained: bool) -> None:
    """An activity the executor's cached manifest shows reaching nothing outside (no HTTP,
    no log) may run while the entry is written, pinned to that version; any other waits."""
    async def main() -> None:
        journal = Gated()
        calls: list[tuple[str | None, list[str]]] = []

        class Runtime(ActorRuntime):
            def contained_version(self, name: str, version: str | None) -> str | None:
                return "1.2.3" if contained else None

            async def run_activity(self, name: str, input: Any, *, version: str | None,
                                   **_: Any) -> Any:
                calls.append((version, list(journal.landed)))
                return input

        async with Runtime(journal, poll_interval_s=5.0, lint=False) as rt:
            rt.register(Tally)
            assert await rt.ask("unwritten_tally/c", "fetch", "warm", timeout=10) == "warm"
            journal.gate.clear()
            asked = asyncio.ensure_future(rt.ask("unwritten_tally/c", "fetch", "x", timeout=10))
            for _ in range(50):
                await asyncio.sleep(0)
            assert len(calls) == (2 if contained else 1)
            journal.gate.set()
            assert await asked == "x"
            assert len(calls) == 2
            if contained:  # ran before its entry landed, on the version it was judged by
                assert calls[1] == ("1.2.3", ["entry:warm", "commit:0"])
            else:
                assert calls[1] == (None, ["entry:warm", "commit:0", "entry:x"])

    asyncio.run(main())


def test_a_wait_comes_only_after_the_entry() -> None:
    async def main() -> None:
        journal = Gated()
        async with ActorRuntime(journal, poll_interval_s=0.02, lint=False) as rt:
            rt.register(Tally)
            assert await rt.ask("unwritten_tally/w", "note", "warm", timeout=10) == ["warm"]
            journal.gate.clear()
            asked = asyncio.ensure_future(rt.ask("unwritten_tally/w", "nap", "x", timeout=10))
            for _ in range(50):
                await asyncio.sleep(0)
            assert journal.landed == ["entry:warm", "commit:0"]  # no timer commit yet
            journal.gate.set()
            assert await asked == "x"
            assert journal.landed[:3] == ["entry:warm", "commit:0", "entry:x"]
            assert (await rt.state_of("unwritten_tally/w"))["seen"] == ["warm", "x"]

    asyncio.run(main())


def test_an_id_given_by_the_caller_writes_the_entry_first(monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    """A caller's own id may be in the inbox already (a retry): no early run."""
    early = CountsEarlyRuns(monkeypatch)

    async def main() -> None:
        async with ActorRuntime(MemoryJournal(), poll_interval_s=5.0, lint=False) as rt:
            rt.register(Tally)
            for _ in range(3):
                assert await rt.ask("unwritten_tally/i", "note", 1, msg_id="same",
                                    timeout=10) == [1]
        assert early.n == 0

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["memory", "sqlite", "sqlite-process"])
def test_a_delayed_call_below_an_early_run_still_runs(kind: str, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Entry 1 is a call due later (from elsewhere), never read; entry 2 was read and run;
    the ask from here starts early as entry 3. Only the schedule brings entry 1 back, so
    the early run must not count it as read."""
    early = CountsEarlyRuns(monkeypatch)

    async def main() -> None:
        journal = open_store(kind, tmp_path)
        async with ActorRuntime(journal, poll_interval_s=0.02, lint=False) as rt:
            rt.register(Tally)
            await journal.enqueue({"id": "later", "target": "unwritten_tally/d",
                                   "kind": "call", "handler": "note", "payload": "delayed",
                                   "deliver_at": time.time() + 0.5})
            assert await rt.ask("unwritten_tally/d", "note", "one", timeout=10) == ["one"]
            assert rt.activations["unwritten_tally/d"].complete_n == 2
            assert await rt.ask("unwritten_tally/d", "note", "two", timeout=10) == \
                ["one", "two"]
            assert rt.activations["unwritten_tally/d"].complete_n == 3
            assert early.n == 1
            deadline = time.monotonic() + 10
            while "delayed" not in (await rt.state_of("unwritten_tally/d"))["seen"]:
                assert time.monotonic() < deadline, "the delayed call was never run"
                await asyncio.sleep(0.02)
            assert (await rt.state_of("unwritten_tally/d"))["seen"] == \
                ["one", "two", "delayed"]
        await journal.close()

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["memory", "sqlite", "sqlite-process"])
def test_append_entry_writes_the_commit_only_with_the_entry_it_expects(
        kind: str, tmp_path: Path) -> None:
    def commit(seq: int, msg: str) -> dict[str, Any]:
        return {"actor": "t/1", "seq": seq, "ts": 1.0, "run": {"msg": msg, "ts": 1.0,
                "start": seq}, "events": [], "consumed": [msg], "kind": "completed",
                "state": {}, "result": msg}

    def entry(msg: str) -> Envelope:
        return {"id": msg, "target": "t/1", "kind": "call", "handler": "note",
                "payload": msg, "deliver_at": 0.0}

    async def main() -> None:
        journal: Any = open_store(kind, tmp_path)
        try:
            assert await journal.append_entry(commit(0, "a"), entry("a"), 1) == 1
            assert await journal.inbox("t/1", 1e18) == []  # consumed with the commit
            assert await journal.enqueue(entry("b"))  # entry 2, from elsewhere
            # expected as entry 2, became 3: the entry is written, the commit is not
            assert await journal.append_entry(commit(1, "c"), entry("c"), 2) == 3
            assert [e["id"] for e in await journal.inbox("t/1", 1e18)] == ["b", "c"]
            assert [c["seq"] for c in await journal.read("t/1")] == [0]
            # an id already in the inbox: nothing written
            assert await journal.append_entry(commit(1, "b"), entry("b"), 4) == 0
            assert [c["seq"] for c in await journal.read("t/1")] == [0]
            # the commit's seq is taken: the entry stays, the commit is refused
            with pytest.raises(errors.JournalConflict):
                await journal.append_entry(commit(0, "d"), entry("d"), 4)
            assert [e["id"] for e in await journal.inbox("t/1", 1e18)] == ["b", "c", "d"]
            assert await journal.outcome("t/1", "d") is None
        finally:
            await journal.close()

    asyncio.run(main())


def test_an_early_run_cut_off_before_its_entry_hands_the_call_back() -> None:
    """The activation is lost (a storage error elsewhere) while the early run's activity
    runs: the entry, never written, is written then, and the reloaded actor answers."""
    async def main() -> None:
        journal = Gated()
        release = asyncio.Event()
        calls: list[Any] = []

        class Runtime(ActorRuntime):
            def contained_version(self, name: str, version: str | None) -> str | None:
                return "1"

            async def run_activity(self, name: str, input: Any, **_: Any) -> Any:
                calls.append(input)
                if input == "x" and len(calls) == 2:
                    await release.wait()
                return input

        async with Runtime(journal, poll_interval_s=0.02, lint=False) as rt:
            rt.register(Tally)
            assert await rt.ask("unwritten_tally/h", "fetch", "warm", timeout=10) == "warm"
            act = rt.activations["unwritten_tally/h"]
            asked = asyncio.ensure_future(rt.ask("unwritten_tally/h", "fetch", "x", timeout=10))
            while len(calls) < 2:
                await asyncio.sleep(0.001)
            assert journal.landed == ["entry:warm", "commit:0"]
            act._lose(errors.StorageError("injected: a write of this activation failed"))
            assert await asked == "x"  # run again by the reloaded actor
            assert journal.landed == ["entry:warm", "commit:0", "entry:x", "commit:1"]
            assert (await rt.state_of("unwritten_tally/h"))["seen"] == ["warm", "x"]
            release.set()

    asyncio.run(main())


def test_an_early_run_cut_off_while_its_entry_is_being_written_hands_the_call_back() -> None:
    """The activation is lost while the early run's first commit, with the call's entry, is
    held in the journal (and so never lands): the call is written then, once, and the asker
    answered. Found by the simulation: the entry was no longer the run's while its write
    was in flight, so nothing was handed back and the ask waited forever."""
    async def main() -> None:
        journal = Gated()
        async with ActorRuntime(journal, poll_interval_s=0.02, lint=False) as rt:
            rt.register(Tally)
            assert await rt.ask("unwritten_tally/w", "note", "warm", timeout=10) == ["warm"]
            act = rt.activations["unwritten_tally/w"]
            journal.gate.clear()
            asked = asyncio.ensure_future(rt.ask("unwritten_tally/w", "note", "x", timeout=3))
            while act.run is None or act.run.committing == 0:
                await asyncio.sleep(0.001)
            await asyncio.sleep(0.01)
            assert "entry:x" not in journal.landed  # the first commit is held at the gate
            act._lose(errors.StorageError("injected: a write of this activation failed"))
            journal.gate.set()
            assert await asked == ["warm", "x"]
            assert [e for e in journal.landed if e.startswith("entry:")] == \
                ["entry:warm", "entry:x"]
            assert (await rt.state_of("unwritten_tally/w"))["seen"] == ["warm", "x"]

    asyncio.run(main())


class Flaky(MemoryJournal):
    """Every write may fail before it lands or after (seeded): what a storage outage does to
    early runs and their entries."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        import random
        self.rng = random.Random(seed)
        self.failures = 0

    def _roll(self, when: str) -> None:
        if self.rng.random() < 0.08:
            self.failures += 1
            raise errors.StorageError(f"injected: failed {when}")

    async def enqueue(self, envelope: Envelope) -> bool:
        return bool(await self.enqueue_numbered(envelope))

    async def enqueue_numbered(self, envelope: Envelope) -> int:
        self._roll("before the entry")
        number = await super().enqueue_numbered(envelope)
        self._roll("after the entry")
        return number

    async def append(self, commit: dict[str, Any]) -> None:
        self._roll("before the commit")
        await super().append(commit)
        self._roll("after the commit")

    async def append_entry(self, commit: dict[str, Any], envelope: Envelope, n: int) -> int:
        return await super().append_entry(commit, envelope, n)  # through both of the above


@pytest.mark.parametrize("seed", range(4))
def test_under_failing_writes_each_answered_ask_ran_once_and_none_twice(
        seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    early = CountsEarlyRuns(monkeypatch)

    async def main() -> None:
        journal = Flaky(seed)
        async with ActorRuntime(journal, poll_interval_s=0.01, lint=False) as rt:
            rt.register(Tally)

            async def client(k: int) -> list[tuple[int, bool]]:
                out = []
                for i in range(40):
                    payload = k * 1000 + i
                    try:
                        await rt.ask(f"unwritten_tally/f{k}", "note", payload, timeout=10)
                        out.append((payload, True))
                    except errors.StorageError:
                        out.append((payload, False))  # may have run, or not: at most once
                return out

            results = [r for part in await asyncio.gather(*(client(k) for k in range(4)))
                       for r in part]
            await rt.drain(10)
            seen: list[int] = []
            for k in range(4):
                seen += (await rt.state_of(f"unwritten_tally/f{k}"))["seen"]
        assert journal.failures > 10
        assert early.n > 20
        assert len(seen) == len(set(seen)), "a message ran twice"
        answered = {p for p, ok in results if ok}
        assert answered <= set(seen), "an answered ask left no trace"
        assert set(seen) <= {p for p, _ in results}

    asyncio.run(main())


def test_an_early_run_fenced_by_another_activation_leaves_its_call_to_run_again() -> None:
    """While the early run's activity runs, another activation commits first: its commit
    is refused with the entry written (JournalConflict), so the asker is not failed; the
    reloaded actor runs the call on top of the other commit and answers it."""
    async def main() -> None:
        journal = Gated()
        release, started = asyncio.Event(), asyncio.Event()

        class Runtime(ActorRuntime):
            def contained_version(self, name: str, version: str | None) -> str | None:
                return "1"

            async def run_activity(self, name: str, input: Any, **_: Any) -> Any:
                if input == "x" and not release.is_set():
                    started.set()
                    await release.wait()
                return input

        async with Runtime(journal, poll_interval_s=0.02, lint=False) as rt:
            rt.register(Tally)
            assert await rt.ask("unwritten_tally/z", "fetch", "warm", timeout=10) == "warm"
            act = rt.activations["unwritten_tally/z"]
            asked = asyncio.ensure_future(rt.ask("unwritten_tally/z", "fetch", "x", timeout=10))
            await started.wait()
            await journal.append({"actor": "unwritten_tally/z", "seq": act.seq + 1, "ts": 1.0,
                                  "events": [], "state": {"seen": ["warm", "other"]}})
            release.set()
            assert await asked == "x"
            assert (await rt.state_of("unwritten_tally/z"))["seen"] == ["warm", "other", "x"]
            assert journal.landed[-2:] == ["entry:x", f"commit:{act.seq + 2}"]

    asyncio.run(main())
