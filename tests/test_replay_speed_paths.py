"""The fast paths of replay stay as strict as the slow ones: a changed step is still caught
(by kind, name or input, with or without the canonical digest), today's and older event
formats replay, and the cyclic GC paused for a load is always switched back on."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from typing import Any

import pytest

from runtime import errors
from runtime.actors import Actor, ActorContext, ActorRuntime, handler
from runtime.actors.context import digest
from runtime.actors.replay import replay_commits
from runtime.journal import MemoryJournal
from runtime.journal.store import Commit
from runtime.testing import StubActivities

KEY = "steps/s1"


class Steps(Actor, type_name="steps"):
    """Three activity calls with dict inputs (not in sorted key order), then a wait."""

    input_of: Any = staticmethod(lambda i: {"zeta": i, "alpha": [i, "é"], "mid": {"b": 1}})
    activity = "echo"

    @handler
    async def go(self, ctx: ActorContext, payload: Any) -> Any:
        out = [await ctx.call_activity(self.activity, self.input_of(i)) for i in range(3)]
        if payload and payload.get("wait"):
            await ctx.wait_for_event("go")
        self.state["out"] = out
        return out


class Reordered(Steps, type_name="steps"):  # the same arguments, keys built in another order
    input_of = staticmethod(lambda i: {"mid": {"b": 1}, "alpha": [i, "é"], "zeta": i})


class OneFieldChanged(Steps, type_name="steps"):
    input_of = staticmethod(lambda i: {"zeta": i, "alpha": [i, "é"], "mid": {"b": 2}})


class OneTypeChanged(Steps, type_name="steps"):  # 1 -> 1.0: equal in Python, not in JSON
    input_of = staticmethod(lambda i: {"zeta": i, "alpha": [i, "é"], "mid": {"b": 1.0}})


class OtherActivity(Steps, type_name="steps"):
    activity = "echo2"


class OtherKind(Steps, type_name="steps"):
    @handler
    async def go(self, ctx: ActorContext, payload: Any) -> Any:
        await ctx.send("steps/other", "go", {"zeta": 0, "alpha": [0, "é"], "mid": {"b": 1}})
        return None


def stubs() -> StubActivities:
    acts = StubActivities()
    acts.add("echo", lambda inp, key: {"echo": inp})
    acts.add("echo2", lambda inp, key: {"echo": inp})
    return acts


async def recorded(payload: Any = None) -> tuple[MemoryJournal, list[Commit]]:
    journal = MemoryJournal()
    rt = ActorRuntime(journal, activities=stubs(), lint=False)
    rt.register(Steps)
    await rt.start()
    await rt.send(KEY, "go", payload, msg_id="m1")
    for _ in range(500):
        commits = await journal.read(KEY)
        if any(e["op"] == ("wait.start" if payload else "activity.done")
               for c in commits for e in c.get("events", [])) and (payload or any(
                   "kind" in c for c in commits)):
            break
        await asyncio.sleep(0.01)
    await rt.stop()
    return journal, await journal.read(KEY)


def as_old_format(commits: list[Commit]) -> list[Commit]:
    """Commits as older releases wrote them: `digest` is the canonical one (before quick
    digests), and every commit lists its `outbox` and `consumed`, empty or not."""
    for c in commits:
        c.setdefault("outbox", [])
        c.setdefault("consumed", [])
        for e in c.get("events", []):
            if e.get("canon"):
                e["digest"] = e.pop("canon")
    return commits


@pytest.mark.parametrize("old", [False, True], ids=["today", "old-events"])
def test_replay_accepts_the_same_arguments_and_refuses_a_changed_step(old: bool) -> None:
    async def main() -> None:
        _, commits = await recorded()
        assert any(e.get("canon") for c in commits for e in c.get("events", []))
        if old:
            commits = as_old_format(commits)
        for cls, status in ((Steps, "ok"), (Reordered, "ok"), (OneFieldChanged, "diverged"),
                            (OneTypeChanged, "diverged"), (OtherActivity, "diverged"),
                            (OtherKind, "diverged")):
            report = await replay_commits(cls, KEY, commits)
            assert [r.status for r in report.runs] == [status], (cls, report.runs)
            if status == "diverged":
                assert "step 0" in report.runs[0].detail

    asyncio.run(main())


@pytest.mark.parametrize("old", [False, True], ids=["today", "old-events"])
@pytest.mark.parametrize("cls", [Steps, Reordered, OneFieldChanged, OtherActivity])
def test_a_resumed_run_replays_or_stops_on_a_changed_step(cls: type[Steps], old: bool) -> None:
    """The activation's replay (not only `loom actor replay`): a new runtime resumes the
    unfinished run with `cls` as the actor's code."""
    async def main() -> None:
        journal, commits = await recorded({"wait": True})
        if old:  # rewrite the journal as an older release wrote it
            journal = MemoryJournal()
            await journal.enqueue(commits[0]["message"])
            for c in as_old_format(commits):
                c.pop("epoch")  # older commits carried no lease epoch
                await journal.append(c)
        acts = stubs()
        rt = ActorRuntime(journal, activities=acts, lint=False)
        rt.register(cls)
        async with rt:
            if cls in (Steps, Reordered):
                await rt.signal(KEY, "go", None, msg_id="g")
                out = await rt.ask(KEY, "go", {"wait": True}, msg_id="m1")
                assert out == [{"echo": Steps.input_of(i)} for i in range(3)]
                assert acts.calls == []  # every step came from the journal
            else:
                rt.notify(KEY)
                for _ in range(300):
                    act = rt.activations.get(KEY)
                    if act is not None and act.broken is not None:
                        break
                    await asyncio.sleep(0.01)
                assert act is not None and isinstance(act.broken, errors.NonDeterminismError)
                assert "step 0" in act.broken.message
                assert acts.calls == []

    asyncio.run(main())


def test_the_canonical_digest_is_computed_only_when_the_bytes_differ(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Replay compares the digest of the arguments' bytes first; the canonical digest (a
    sorted re-encoding) only when those differ, which a changed argument always reaches."""
    import runtime.actors.context as context

    calls: list[Any] = []

    def counting(value: Any) -> str:
        calls.append(value)
        return digest(value)

    async def main() -> None:
        _, commits = await recorded()
        monkeypatch.setattr(context, "digest", counting)
        assert (await replay_commits(Steps, KEY, commits)).ok
        assert calls == []
        assert (await replay_commits(Reordered, KEY, commits)).ok
        assert len(calls) == 3
        assert not (await replay_commits(OneFieldChanged, KEY, commits)).ok

    asyncio.run(main())


@contextlib.asynccontextmanager
async def recovering(journal: Any) -> AsyncIterator[ActorRuntime]:
    """A new runtime recovers KEY and replays until its run waits."""
    async with ActorRuntime(journal, activities=stubs(), lint=False) as rt:
        rt.register(Steps)
        rt.notify(KEY)
        for _ in range(300):
            act = rt.activations.get(KEY)
            if act is not None and act.run is not None and act.run.waits:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0)
        yield rt


@pytest.mark.parametrize("was_on", [True, False])
def test_a_load_switches_the_gc_back_to_how_it_was(was_on: bool) -> None:
    async def main() -> None:
        journal, _ = await recorded({"wait": True})
        (gc.enable if was_on else gc.disable)()
        try:
            async with recovering(journal):
                assert gc.isenabled() is was_on
        finally:
            gc.enable()

    asyncio.run(main())


def test_a_long_tail_goes_to_the_oldest_generation_and_nothing_stays_frozen(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A long tail's objects skip the young generations (gc.freeze then unfreeze): nothing
    may stay in the permanent generation, where no collection would ever see it."""
    from runtime.actors import activation

    monkeypatch.setattr(activation, "PROMOTE_TAIL", 1)
    promoted: list[bool] = []
    real = activation._pause_gc

    def spy() -> Any:
        resume = real()

        def wrapped(promote: bool) -> None:
            promoted.append(promote)
            resume(promote)
        return wrapped

    monkeypatch.setattr(activation, "_pause_gc", spy)

    async def main() -> None:
        journal, _ = await recorded({"wait": True})
        gc.enable()
        async with recovering(journal):
            assert promoted[-1] is True  # the recovery (the recording loaded an empty tail)
            assert gc.isenabled() and gc.get_freeze_count() == 0

    asyncio.run(main())


class Mixed(Actor, type_name="mixed"):
    """A compensation, a branch step and a retried step: the inline replay path takes only
    main-line steps recorded once as done; these go the long way and must still match."""

    compensate_with = "undo"
    branch_input = 1

    @handler
    async def go(self, ctx: ActorContext, payload: Any) -> Any:
        a = await ctx.call_activity("echo", {"n": 1})
        b = await ctx.branch("left").call_activity("echo", {"n": self.branch_input})
        c = await ctx.call_activity("flaky", {"n": 3},
                                    retry={"max_attempts": 3, "initial_interval_ms": 1})
        d = await ctx.call_activity(self.compensate_with, {"n": 4}, compensation=True)
        return [a, b, c, d]


class MixedAsActivity(Mixed, type_name="mixed"):  # a compensation replayed as an activity
    @handler
    async def go(self, ctx: ActorContext, payload: Any) -> Any:
        await ctx.call_activity("echo", {"n": 1})
        await ctx.branch("left").call_activity("echo", {"n": 1})
        await ctx.call_activity("flaky", {"n": 3},
                                retry={"max_attempts": 3, "initial_interval_ms": 1})
        return await ctx.call_activity("undo", {"n": 4})


class MixedOtherBranchInput(Mixed, type_name="mixed"):
    branch_input = 2


class MixedOtherCompensation(Mixed, type_name="mixed"):
    compensate_with = "undo2"


def test_compensations_branches_and_retried_steps_replay_and_diverge() -> None:
    async def main() -> None:
        acts = stubs()
        tries: list[int] = []

        def flaky(inp: Any, key: str) -> Any:
            tries.append(1)
            if len(tries) < 2:
                raise errors.GuestError("once", retryable=True)
            return {"ok": inp}

        acts.add("flaky", flaky)
        acts.add("undo", lambda inp, key: {"undone": inp})
        journal = MemoryJournal()
        async with ActorRuntime(journal, activities=acts, lint=False) as rt:
            rt.register(Mixed)
            out = await rt.ask("mixed/m", "go", None, msg_id="m1")
        assert len(tries) == 2
        commits = await journal.read("mixed/m")
        ops = [e["op"] for c in commits for e in c.get("events", [])]
        assert "compensation.done" in ops and ops.count("activity.done") == 3
        report = await replay_commits(Mixed, "mixed/m", commits)
        assert report.ok and [r.status for r in report.runs] == ["ok"], report.runs
        assert out[3] == {"undone": {"n": 4}}
        for cls, step in ((MixedAsActivity, "2"), (MixedOtherBranchInput, "left/0"),
                          (MixedOtherCompensation, "2")):
            report = await replay_commits(cls, "mixed/m", commits)
            assert [r.status for r in report.runs] == ["diverged"], (cls, report.runs)
            assert f"step {step}" in report.runs[0].detail, report.runs[0].detail

    asyncio.run(main())


class Opaque:
    """Not JSON: no form the journal could record."""


class NotJson(Steps, type_name="steps"):
    input_of = staticmethod(lambda i: {"zeta": i, "alpha": [i, "é"], "mid": Opaque()})


def test_arguments_that_are_not_json_are_refused_by_name_live_and_on_replay() -> None:
    """An argument JSON has no form for is a TypeError naming the rule, live (where the
    bytes' digest meets it first) and on replay (where the inline check meets it first)."""
    async def main() -> None:
        acts = stubs()
        async with ActorRuntime(MemoryJournal(), activities=acts, lint=False) as rt:
            rt.register(NotJson)
            with pytest.raises(errors.HandlerFailed) as live:
                await rt.ask(KEY, "go", None, msg_id="m1")
        assert "step arguments must be JSON" in live.value.message, live.value.message
        assert "Opaque" in live.value.message and acts.calls == []
        _, commits = await recorded()
        report = await replay_commits(NotJson, KEY, commits)
        assert [r.status for r in report.runs] == ["diverged"], report.runs
        assert "step arguments must be JSON" in report.runs[0].detail, report.runs[0].detail

    asyncio.run(main())


def test_objects_the_application_froze_stay_frozen(monkeypatch: pytest.MonkeyPatch) -> None:
    """An embedding application that froze its objects (to share pages across forked
    workers) keeps them frozen: the promotion after a long replay is skipped."""
    from runtime.actors import activation

    monkeypatch.setattr(activation, "PROMOTE_TAIL", 1)

    async def main() -> None:
        journal, _ = await recorded({"wait": True})
        gc.freeze()
        try:
            frozen = gc.get_freeze_count()
            assert frozen > 0
            async with recovering(journal):
                assert gc.get_freeze_count() > frozen * 0.9  # (some were freed since)
        finally:
            gc.unfreeze()

    asyncio.run(main())
