"""Edges of the runtime that reviews broke open: a result too deep for a reply, a completing
commit that lands although its append reports a failure, a wall clock that steps back.
Each wedged or stalled something for good before its fix."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from runtime import errors
from runtime.actors import Actor, ActorContext, ActorRuntime, handler
from runtime.journal import MemoryJournal


class Callee(Actor, type_name="edge_callee"):
    def initial_state(self) -> dict[str, Any]:
        return {"n": 0}

    @handler
    async def deep(self, ctx: ActorContext, payload: Any) -> Any:
        tree: Any = {}
        for _ in range(int(payload)):
            tree = {"a": tree}
        return tree

    @handler
    async def bump(self, ctx: ActorContext, payload: Any) -> Any:
        self.state["n"] += 1
        return self.state["n"]


class Caller(Actor, type_name="edge_caller"):
    @handler
    async def go(self, ctx: ActorContext, payload: Any) -> Any:
        try:
            return await ctx.ask("edge_callee/c1", "deep", payload, timeout=5)
        except errors.HandlerFailed as exc:
            return f"failed: {exc.error_type}"


def test_a_result_too_deep_for_a_reply_fails_the_run_and_the_actor_goes_on() -> None:
    async def main() -> None:
        async with ActorRuntime(MemoryJournal(), poll_interval_s=0.01, lint=False) as rt:
            rt.register(Callee)
            rt.register(Caller)
            assert await rt.ask("edge_caller/x", "go", 130, timeout=10) == \
                "failed: ResultTooDeep"
            # the callee is not wedged: its next messages run
            assert await rt.ask("edge_callee/c1", "bump", None, timeout=5) == 1
            shallow = await rt.ask("edge_caller/x", "go", 20, timeout=5)
            assert isinstance(shallow, dict)

    asyncio.run(main())


class LandsThenFails(MemoryJournal):
    """Armed, a completing commit lands, then its append reports a storage failure (a lost
    response)."""

    def __init__(self) -> None:
        super().__init__()
        self.armed = False
        self.tripped = 0

    async def append(self, commit: dict[str, Any]) -> None:
        await super().append(commit)
        if "kind" in commit and self.armed:
            self.tripped += 1
            raise errors.StorageError("the response was lost (the commit landed)")


def test_an_ask_is_answered_when_its_completing_commit_landed_but_reported_failure() -> None:
    """Before: answered only if a scheduling tick looked the outcome up in the moment
    before the reload, else when the reloaded actor had been idle for idle_timeout_s."""
    async def main() -> None:
        journal = LandsThenFails()
        async with ActorRuntime(journal, lint=False) as rt:
            rt.register(Callee)
            assert await rt.ask("edge_callee/c2", "bump", None, timeout=5) == 1  # warm
            for n in range(2, 7):
                journal.armed = True
                ask = asyncio.ensure_future(rt.ask("edge_callee/c2", "bump", None))
                while not journal.tripped:
                    await asyncio.sleep(0.001)
                journal.armed, journal.tripped = False, 0
                assert await asyncio.wait_for(ask, 3) == n  # each ran once
            assert await rt.ask("edge_callee/c2", "bump", None, timeout=5) == 7

    asyncio.run(main())


class CountsRenewals(MemoryJournal):
    def __init__(self) -> None:
        super().__init__()
        self.renewals: list[float] = []

    async def renew(self, owner: str, now: float, ttl: float) -> set[str]:
        self.renewals.append(time.monotonic())
        return await super().renew(owner, now, ttl)


def test_a_clock_stepped_back_does_not_stop_lease_renewals() -> None:
    """The renewal schedule ran on the wall clock: stepped back by 30 s, a worker renewed
    nothing for 30 s, its leases ran out and others ran its actors beside it."""
    async def main() -> None:
        journal = CountsRenewals()
        offset = [0.0]
        rt = ActorRuntime(journal, poll_interval_s=0.01, lease_ttl_s=1.0, lint=False,
                          clock=lambda: time.time() + offset[0])
        rt.register(Callee)
        async with rt:
            assert await rt.ask("edge_callee/c3", "bump", None, timeout=5) == 1
            offset[0] = -30.0
            stepped = time.monotonic()
            await asyncio.sleep(1.5)
            after = [t for t in journal.renewals if t > stepped]
            assert len(after) >= 2, f"renewals after the step: {len(after)}"
            held = await journal.renew(rt.owner, rt.clock(), 1.0)
            assert "edge_callee/c3" in held

    asyncio.run(main())


class DownForAWhile(MemoryJournal):
    """`acquire` and `settle` fail (storage down) while `down` is set; counts the tries."""

    def __init__(self) -> None:
        super().__init__()
        self.down = False
        self.acquires = 0
        self.settles = 0

    async def acquire(self, actor: str, owner: str, now: float, ttl: float) -> Any:
        self.acquires += 1
        if self.down:
            raise errors.StorageError("the journal is down")
        return await super().acquire(actor, owner, now, ttl)

    async def settle(self, *args: Any, **kw: Any) -> None:
        self.settles += 1
        if self.down:
            raise errors.StorageError("the journal is down")
        await super().settle(*args, **kw)


def test_an_outage_is_retried_with_backoff_not_at_every_poll() -> None:
    """Before: every schedule poll (here every 10 ms) tried each due actor's activation and
    every failed settle again, each with a warning: thousands of tries and log lines a
    minute per actor, which also refilled a full disk as soon as space was freed."""
    async def main() -> None:
        journal = DownForAWhile()
        async with ActorRuntime(journal, poll_interval_s=0.01, lint=False) as rt:
            rt.register(Callee)
            assert await rt.ask("edge_callee/c4", "bump", None, timeout=5) == 1
            journal.down = True
            await rt.send("edge_callee/c5", "bump", None)  # due, cannot be activated
            await asyncio.sleep(0.05)
            a0, s0 = journal.acquires, journal.settles
            await asyncio.sleep(1.0)
            assert journal.acquires - a0 <= 8, journal.acquires - a0
            assert journal.settles - s0 <= 8, journal.settles - s0
            journal.down = False
            assert await rt.ask("edge_callee/c5", "bump", None, timeout=10) == 2

    asyncio.run(main())
