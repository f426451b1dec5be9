"""Cancels and sagas, self-asks and correlated events in the durable core: a cancel does not
stop a compensation (nor its retry backoff), every compensation runs after one fails, an
actor asking itself fails at once, and an unkeyed wait leaves keyed events alone."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import durable_actors as da
import pytest

from runtime import errors
from runtime.actors import Actor, ActorContext, ActorRuntime, Hooks, handler
from runtime.journal import MemoryJournal
from runtime.testing import Receiver, StubActivities
from runtime.testing.effects import Flaky
from schemas.manifest import RetryPolicy

ONCE = {"max_attempts": 1}


class Booking(Actor, type_name="booking"):
    """Reserves `n` items as a saga; then waits for "go" or fails on "boom"."""

    @handler
    async def book(self, ctx: ActorContext, p: dict[str, Any]) -> str:
        async with ctx.saga() as saga:
            for o in range(1, p["n"] + 1):
                await ctx.call_activity("reserve", {"o": o})
                saga.add("release", {"o": o})
            if p.get("boom"):
                await ctx.call_activity("boom", {}, retry=ONCE)
            await ctx.wait_for_event("go", timeout=30)
        return "ok"


class Selfy(Actor, type_name="selfy"):
    @handler
    async def go(self, ctx: ActorContext, p: Any) -> Any:
        return await ctx.ask(str(ctx.actor), "pong", {})

    @handler
    async def pong(self, ctx: ActorContext, p: Any) -> int:
        return 1


def runtime(journal: MemoryJournal, acts: StubActivities, *classes: type,
            **kw: Any) -> ActorRuntime:
    kw.setdefault("poll_interval_s", 0.01)
    kw.setdefault("hooks", Hooks())
    kw.setdefault("lint", False)  # the actors share this module with the test harness
    rt = ActorRuntime(journal, activities=acts, **kw)
    for cls in classes:
        rt.register(cls)
    return rt


def run(coro: Awaitable[Any], timeout: float = 15.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0,
                     what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def ops(journal: MemoryJournal, actor: str) -> list[tuple[Any, str, Any]]:
    return [(e.get("step"), e["op"], e.get("name"))
            for c in await journal.read(actor) for e in c.get("events", [])]


async def outcome_of(journal: MemoryJournal, actor: str, msg_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    async def done() -> bool:
        found.update(await journal.outcome(actor, msg_id) or {})
        return bool(found)

    await eventually(done, what=f"the outcome of {msg_id}")
    return found


def booking_stubs(release: Callable[[Any, str], Any], interval_ms: int) -> StubActivities:
    acts = StubActivities(Receiver(), retry=RetryPolicy(
        max_attempts=5, initial_interval_ms=interval_ms, backoff_coefficient=1.0, jitter=False))
    acts.add("reserve")
    acts.add("release", release)

    def boom(_input: Any, _key: str) -> Any:
        raise errors.InputInvalid("boom")  # not retryable: the run fails

    acts.add("boom", boom)
    return acts


def fail_first_release_of(o: int) -> Callable[[Any, str], Any]:
    failed: list[int] = []

    def release(input: Any, key: str) -> Any:
        if input["o"] == o and not failed:
            failed.append(o)
            raise Flaky(f"release {o}: transient")
        return {"released": input["o"]}

    return release


def release_calls(acts: StubActivities) -> list[str]:
    return [key for name, key, _tenant in acts.calls if name == "release"]


# -- a cancel does not stop a saga's compensation ------------------------------------------------


def test_a_cancel_does_not_stop_a_compensation_retrying_on_a_durable_timer() -> None:
    """The run is parked in its saga when it is cancelled. Undoing the second reservation
    fails once and is retried after a durable backoff timer: the cancel that started the
    compensation does not cut that backoff, so both reservations are released (before the
    fix: none was, after one attempt) and the run ends cancelled."""
    acts = booking_stubs(fail_first_release_of(2), interval_ms=200)

    async def main() -> None:
        journal = MemoryJournal()
        async with runtime(journal, acts, Booking, durable_retry_threshold_s=0.05) as rt:
            mid = await rt.send("booking/b1", "book", {"n": 2})
            await eventually(lambda: _has(journal, "booking/b1", "wait.start"), what="the wait")
            await rt.cancel("booking/b1", "customer changed mind")
            out = await outcome_of(journal, "booking/b1", mid)
            with pytest.raises(errors.RunCancelled):
                await rt.ask("booking/b1", "book", {"n": 2}, msg_id=mid, timeout=5)
        assert out["kind"] == "cancelled"
        assert "customer changed mind" in out["error"]["message"]
        assert [e.input for e in acts.receiver.of("release")] == [{"o": 2}, {"o": 1}]
        assert len(release_calls(acts)) == 3  # release 2 twice (one retry), release 1 once
        seen = [(op, name) for _step, op, name in await ops(journal, "booking/b1")]
        assert seen[seen.index(("run.cancelled", "cancel")):] == [
            ("run.cancelled", "cancel"), ("compensation.retry", "release"),
            ("timer.fired", "timer"), ("compensation.done", "release"),
            ("compensation.done", "release")]

    run(main())


def test_a_cancel_during_a_compensations_retry_backoff_does_not_stop_it() -> None:
    """The run fails on its own and compensates; while the second reservation's undo waits
    out its 400 ms retry backoff, a cancel arrives. The backoff still ends in a retry, and
    the first reservation is released too."""
    acts = booking_stubs(fail_first_release_of(2), interval_ms=400)

    async def main() -> None:
        journal = MemoryJournal()
        async with runtime(journal, acts, Booking, durable_retry_threshold_s=0.05) as rt:
            mid = await rt.send("booking/b1", "book", {"n": 2, "boom": True})
            await eventually(lambda: _has(journal, "booking/b1", "compensation.retry"),
                             what="the compensation's backoff")
            await rt.cancel("booking/b1", "stop")
            out = await outcome_of(journal, "booking/b1", mid)
        assert out["kind"] == "cancelled"
        assert [e.input for e in acts.receiver.of("release")] == [{"o": 2}, {"o": 1}]
        seen = [op for _step, op, _name in await ops(journal, "booking/b1")]
        # the cancel really landed inside the backoff
        assert (seen.index("compensation.retry") < seen.index("run.cancelled")
                < seen.index("timer.fired"))
        assert seen.count("compensation.done") == 2

    run(main())


def test_every_compensation_runs_after_one_fails_for_good() -> None:
    """Four reservations; undoing the third and the second fails permanently (not
    retryable). The fourth and the first are still released (before the fix the undo
    stopped at the first failure), and the run fails with the first failure's error."""
    def release(input: Any, key: str) -> Any:
        if input["o"] in (2, 3):
            raise errors.InputInvalid(f"reservation {input['o']} cannot be released")
        return {"released": input["o"]}

    acts = booking_stubs(release, interval_ms=50)

    async def main() -> None:
        journal = MemoryJournal()
        async with runtime(journal, acts, Booking) as rt:
            # in process the asker gets the error raised; from the journal, HandlerFailed
            with pytest.raises((errors.ActivityFailed, errors.HandlerFailed)) as failed:
                await rt.ask("booking/b2", "book", {"n": 4, "boom": True}, msg_id="m1",
                             timeout=5)
            out = await outcome_of(journal, "booking/b2", "m1")
        assert out["kind"] == "failed"
        assert "release failed after 1 attempt(s)" in failed.value.message
        assert "reservation 3 cannot be released" in failed.value.message
        assert out["error"]["message"] == failed.value.message  # the first failure, raised
        assert [e.input for e in acts.receiver.of("release")] == [{"o": 4}, {"o": 1}]
        assert len(release_calls(acts)) == 4  # each compensation tried once
        comp = [(op, name) for _step, op, name in await ops(journal, "booking/b2")
                if op.startswith("compensation.")]
        assert comp == [("compensation.done", "release"), ("compensation.failed", "release"),
                        ("compensation.failed", "release"), ("compensation.done", "release")]

    run(main())


# -- an actor asking itself ----------------------------------------------------------------------


def test_an_actor_asking_itself_fails_at_once() -> None:
    """`ctx.ask` to the actor itself would wait for the run that makes it: it fails at once
    (before the fix the ask was never answered), sends nothing, and the actor still works."""

    async def main() -> None:
        journal = MemoryJournal()
        async with runtime(journal, StubActivities(Receiver()), Selfy) as rt:
            started = time.monotonic()
            with pytest.raises(errors.HandlerFailed) as failed:
                await rt.ask("selfy/1", "go", {}, msg_id="m1", timeout=3)
            assert time.monotonic() - started < 2
            assert failed.value.error_type == "SelfAsk"
            out = await outcome_of(journal, "selfy/1", "m1")
            assert out["kind"] == "failed" and out["error"]["type"] == "SelfAsk"
            assert await rt.ask("selfy/1", "pong", {}, timeout=3) == 1
            left = await journal.inbox("selfy/1", time.time() + 60, calls=0)
            assert left == []  # no "pong" message was left behind for the failed ask
        assert not any(op.startswith("ask") for _s, op, _n in await ops(journal, "selfy/1"))

    run(main())


# -- an unkeyed wait takes only unkeyed events ---------------------------------------------------


def test_a_keyed_event_is_left_for_the_correlated_wait_of_a_later_run() -> None:
    """A run waits for any "delivered" event (no key); a later run of the same actor waits
    for parcel p9's. The event signalled with key p9 while the first run waits is the second
    run's: the first times out (before the fix it took p9's event and the second timed out)."""

    async def main() -> None:
        journal = MemoryJournal()
        async with runtime(journal, StubActivities(Receiver()), da.Waiter) as rt:
            any_parcel = asyncio.ensure_future(
                rt.ask("waiter/x", "parcel", {"timeout": 0.5}, msg_id="any"))
            await eventually(lambda: _has(journal, "waiter/x", "wait.start"), what="the wait")
            tracked = asyncio.ensure_future(
                rt.ask("waiter/x", "parcel", {"timeout": 2, "key": "p9"}, msg_id="p9"))
            await rt.signal("waiter/x", "delivered", {"parcel": "p9"}, key="p9")
            assert await asyncio.wait_for(any_parcel, 5) == "late"
            assert await asyncio.wait_for(tracked, 5) == {"parcel": "p9"}

    run(main())


def test_an_unkeyed_wait_takes_the_unkeyed_event_not_an_earlier_keyed_one() -> None:
    """An unkeyed wait still receives an event signalled without a key, also when a keyed
    event for the same name was signalled before it; the keyed one stays for its own wait."""

    async def main() -> None:
        journal = MemoryJournal()
        async with runtime(journal, StubActivities(Receiver()), da.Waiter) as rt:
            plain = asyncio.ensure_future(
                rt.ask("waiter/y", "parcel", {"timeout": 5}, msg_id="plain"))
            await eventually(lambda: _has(journal, "waiter/y", "wait.start"), what="the wait")
            await rt.signal("waiter/y", "delivered", {"parcel": "k"}, key="k", msg_id="ev-k")
            await rt.signal("waiter/y", "delivered", {"parcel": "u"}, msg_id="ev-u")
            assert await asyncio.wait_for(plain, 5) == {"parcel": "u"}
            assert await rt.ask("waiter/y", "parcel", {"timeout": 2, "key": "k"},
                                timeout=5) == {"parcel": "k"}
            left = await journal.inbox("waiter/y", time.time() + 60, calls=0)
            assert [e for e in left if e["kind"] == "event"] == []

    run(main())


async def _has(journal: MemoryJournal, actor: str, op: str) -> bool:
    return any(o == op for _s, o, _n in await ops(journal, actor))
