"""The durable core's promises under the faults of issue "durable core": one activation per
actor across processes, storage errors that are never business outcomes, no message from a
failed run, keys that do not depend on arrival order, fair scheduling, events that reach
only their own wait, replay checks inside branches, no eviction during a commit, and
"commit, then dispatch".

Runtimes run on real time against the memory and SQLite journals; activities are stubs
whose effects land at a `Receiver` that deduplicates by idempotency key.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import durable_actors as da
import pytest

from runtime import errors
from runtime.actors import ActorRuntime, Hooks
from runtime.actors.replay import replay_commits
from runtime.journal import MemoryJournal, SqliteJournal
from runtime.journal.store import JournalStore
from runtime.testing import Receiver, StubActivities

KINDS = ["memory", "sqlite"]


class Tripwire:
    """A journal that fails (or slows) the calls a test chooses, and passes the rest on."""

    def __init__(self, inner: JournalStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.rules: list[Callable[[str, tuple[Any, ...]], Awaitable[None] | None]] = []

    def __getattr__(self, op: str) -> Any:
        fn = getattr(self.inner, op)
        if not asyncio.iscoroutinefunction(fn) or op == "close":
            return fn

        async def call(*args: Any, **kw: Any) -> Any:
            for rule in list(self.rules):
                pending = rule(op, args)
                if pending is not None:
                    await pending
            return await fn(*args, **kw)

        return call


def open_journal(kind: str, tmp_path: Path) -> JournalStore:
    return MemoryJournal() if kind == "memory" else SqliteJournal(tmp_path / "j.db")


def stubs(*names: str, receiver: Receiver | None = None) -> StubActivities:
    acts = StubActivities(receiver or Receiver())
    for name in names:
        acts.add(name)
    return acts


def runtime(journal: Any, acts: StubActivities, *classes: type, **kw: Any) -> ActorRuntime:
    kw.setdefault("poll_interval_s", 0.01)
    kw.setdefault("hooks", Hooks())
    rt = ActorRuntime(journal, activities=acts, **kw)
    for cls in classes:
        rt.register(cls)
    return rt


def run(coro: Awaitable[Any], timeout: float = 60.0) -> Any:
    async def main() -> Any:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(main())


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0,
                     what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def completions(journal: JournalStore, actor: str) -> list[dict[str, Any]]:
    return [c for c in await journal.read(actor) if "kind" in c and c.get("run")]


# -- 1. one live activation per actor across processes ------------------------------------------


def test_two_processes_never_run_one_actor_at_once(tmp_path: Path) -> None:
    """Two runtimes (each with its own SQLite connection, as two processes have) over one
    journal, 40 messages over 10 actors sent through both: every effect happens once, every
    ask is answered wherever the actor ran, and nothing is left unfinished."""
    receiver = Receiver()

    async def main() -> None:
        j1, j2 = SqliteJournal(tmp_path / "j.db"), SqliteJournal(tmp_path / "j.db")
        rt1 = runtime(j1, stubs("effect", receiver=receiver), da.Shipper)
        rt2 = runtime(j2, stubs("effect", receiver=receiver), da.Shipper)
        async with rt1, rt2:
            asks = [rt.ask(f"shipper/s{n % 10}", "ship", {"order": f"o{n}"}, msg_id=f"m{n}")
                    for n in range(40) for rt in (rt1, rt2)]  # each asked in both
            results = await asyncio.gather(*asks)
        assert len(results) == 80 and results[0::2] == results[1::2]
        for n in range(10):
            done = await completions(j1, f"shipper/s{n}")
            assert sorted(c["run"]["msg"] for c in done) == sorted(
                f"m{k}" for k in range(40) if k % 10 == n)
        await j1.close()
        await j2.close()

    run(main())
    assert len(receiver.applied) == 80
    assert receiver.duplicates == 0  # no effect was sent by both processes
    assert receiver.conflicts == []


def test_a_crashed_owner_is_taken_over_and_an_ask_is_answered_from_the_journal(
        tmp_path: Path) -> None:
    """Process A runs the actor and dies mid-run (its lease stays); B, the asker, takes the
    run over once A is known dead, and B's ask is answered from the durable outcome."""
    receiver = Receiver()

    async def main() -> None:
        j1, j2 = SqliteJournal(tmp_path / "j.db"), SqliteJournal(tmp_path / "j.db")
        rt_a = runtime(j1, stubs("effect", receiver=receiver), da.Shipper)
        rt_b = runtime(j2, stubs("effect", receiver=receiver), da.Shipper)
        await rt_a.start()
        await rt_a.send("shipper/s1", "ship", {"order": "o1", "nap": 0.3}, msg_id="m1")
        await eventually(lambda: _has_op(j1, "shipper/s1", "timer.start"), what="the nap")
        rt_a.abandon()  # a crash: no lease released
        async with rt_b:
            result = await rt_b.ask("shipper/s1", "ship", {"order": "o1", "nap": 0.3},
                                    msg_id="m1")
        assert result["a"].startswith("effect:shipper/s1:m1:")
        await j1.close()
        await j2.close()

    run(main())
    assert len(receiver.applied) == 2 and receiver.duplicates == 0


async def _has_op(journal: JournalStore, actor: str, op: str) -> bool:
    return any(e["op"] == op for c in await journal.read(actor) for e in c.get("events", []))


# -- 2. a storage failure is never a business failure --------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_append_neither_compensates_nor_consumes(kind: str, tmp_path: Path) -> None:
    receiver = Receiver()
    journal = Tripwire(open_journal(kind, tmp_path))
    failures = [0]

    def fail_second_append(op: str, args: tuple[Any, ...]) -> None:
        shipped = any(e["op"] == "activity.done" and e["name"] == "ship"
                      for e in args[0].get("events", [])) if op == "append" else False
        if shipped and args[0]["actor"] == "payment/p1" and failures[0] < 2:
            failures[0] += 1
            raise errors.StorageError("injected: 503 after the SDK's retries")
        return None

    journal.rules.append(fail_second_append)

    async def main() -> None:
        async with runtime(journal, stubs("pay", "ship", "refund", receiver=receiver),
                           da.Payment) as rt:
            result = await rt.ask("payment/p1", "pay", {"order": "o1"}, msg_id="m1")
        assert result == {"paid": "pay:payment/p1:m1:0", "shipped": "ship:payment/p1:m1:1"}
        done = await completions(journal, "payment/p1")
        assert [c["kind"] for c in done] == ["completed"]
        await journal.close()

    run(main())
    assert failures[0] == 2
    assert not receiver.of("refund")  # nothing compensated
    assert receiver.duplicates == 2  # ship re-ran under its key after each lost commit


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_commit_while_delivering_an_event_orphans_no_wait(kind: str,
                                                                     tmp_path: Path) -> None:
    journal = Tripwire(open_journal(kind, tmp_path))
    failures = [0]

    def fail_delivery(op: str, args: tuple[Any, ...]) -> None:
        if op == "append" and failures[0] < 1 and any(
                e["op"] == "wait.event" for e in args[0].get("events", [])):
            failures[0] += 1
            raise errors.StorageError("injected: database is locked")
        return None

    journal.rules.append(fail_delivery)

    async def main() -> None:
        async with runtime(journal, stubs(), da.Waiter) as rt:
            task = asyncio.ensure_future(rt.ask("waiter/w1", "two_events", None, msg_id="m1"))
            await eventually(lambda: _has_op(journal, "waiter/w1", "wait.start"))
            await rt.signal("waiter/w1", "go", 1, msg_id="e1")
            await eventually(lambda: _count_op(journal, "waiter/w1", "wait.start", 2),
                             what="the second wait")
            await rt.signal("waiter/w1", "go", 2, msg_id="e2")
            assert await task == [1, 2]
        await journal.close()

    run(main())
    assert failures[0] == 1


async def _count_op(journal: JournalStore, actor: str, op: str, n: int) -> bool:
    return sum(e["op"] == op for c in await journal.read(actor)
               for e in c.get("events", [])) >= n


# -- 3. a rejected or failed run sends nothing ----------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_rejected_or_failed_run_sends_no_message(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        journal = open_journal(kind, tmp_path)
        async with runtime(journal, stubs(), da.Bank, da.Payee) as rt:
            with pytest.raises(errors.InvariantViolated):
                await rt.ask("bank/b1", "payout", {"amount": 80, "to": "payee/x"})
            with pytest.raises(errors.HandlerFailed):
                await rt.ask("bank/b1", "payout_then_fail", {"amount": 10, "to": "payee/x"})
            assert await rt.ask("bank/b1", "payout", {"amount": 20, "to": "payee/x"}) == 30
            await eventually(lambda: _state_is(rt, "payee/x", {"paid_out": 20}),
                             what="the one good payout")
            await asyncio.sleep(0.2)
            assert await rt.state_of("payee/x") == {"paid_out": 20}
            assert await rt.state_of("bank/b1") == {"balance": 30}
        await journal.close()

    run(main())


async def _state_is(rt: ActorRuntime, actor: str, want: Any) -> bool:
    return bool(await rt.state_of(actor) == want)


# -- 4. keys and seeds do not depend on arrival order or clocks ---------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_keys_survive_a_crash_and_an_earlier_stamped_message(kind: str,
                                                              tmp_path: Path) -> None:
    """m1's first effect runs, then the process dies before any commit. m0 arrives
    afterwards with an earlier clock. Each message keeps its own keys: m1's charge is
    absorbed as the duplicate it is, m0's charge happens under its own key."""
    receiver = Receiver()
    journal = open_journal(kind, tmp_path)

    async def main() -> None:
        hooks = Hooks()
        crashed = [False]

        def crash(actor: str) -> None:
            if not crashed[0]:
                crashed[0] = True
                raise asyncio.CancelledError  # ran, not committed: the process died

        hooks.on("after_activity", crash)
        rt = runtime(journal, stubs("charge", "ship", receiver=receiver), da.Charger,
                     hooks=hooks, clock=lambda: time.time() + 100)
        await rt.start()
        await rt.send("charger/c1", "charge", {"order": "late"}, msg_id="m1")
        await eventually(lambda: _true(crashed[0]), what="the crash")
        rt.abandon()
        rt2 = runtime(journal, stubs("charge", "ship", receiver=receiver), da.Charger,
                      clock=lambda: time.time() - 100)  # a clock stepped back
        async with rt2:
            await rt2.send("charger/c1", "charge", {"order": "early"}, msg_id="m0")
            await eventually(lambda: _done(journal, "charger/c1", 2), what="both runs")
        await journal.close()

    run(main())
    charges = {e.key: e.input["order"] for e in receiver.of("charge")}
    assert charges == {"charger/c1:m1:0": "late", "charger/c1:m0:0": "early"}
    assert receiver.conflicts == [] and receiver.duplicates == 1


async def _true(value: bool) -> bool:
    return value


async def _done(journal: JournalStore, actor: str, n: int) -> bool:
    return len(await completions(journal, actor)) >= n


# -- 6. fair scheduling: O(what is due) -----------------------------------------------------------


def test_a_short_sleep_wakes_among_thousands_of_parked_runs_and_stray_events(
        tmp_path: Path) -> None:
    """10,000 runs parked on an event nobody sends, 10,000 events nobody waits for, and a
    `sleep(0.2)` that still wakes within a second."""
    n = 10_000

    async def main() -> None:
        journal = SqliteJournal(tmp_path / "j.db")
        rt = runtime(journal, stubs(), da.Parker, da.Sleeper, max_activations=200)
        async with rt:
            for i in range(n):
                await journal.enqueue({"id": f"p{i}", "target": f"parker/{i:05d}",
                                       "kind": "call", "handler": "park", "payload": None,
                                       "deliver_at": 0.0})
            await eventually(lambda: _parked(journal, n), timeout=120, what="all parked")
            for i in range(n):  # events under a name no run waits for
                await journal.enqueue({"id": f"e{i}", "target": f"parker/{i:05d}",
                                       "kind": "event", "name": "noise", "payload": i,
                                       "deliver_at": 0.0})
            started = time.monotonic()
            assert await rt.ask("sleeper/zzz", "nap", {"seconds": 0.2}) == "awake"
            took = time.monotonic() - started
        await journal.close()
        assert took < 1.5, f"the 0.2 s sleep took {took:.2f} s"

    run(main(), timeout=300)


async def _parked(journal: SqliteJournal, n: int) -> bool:
    rows = journal._query("SELECT COUNT(*) FROM commits WHERE actor LIKE 'parker/%'", ())
    return bool(rows[0][0] >= n)


# -- 7. events reach only the wait they were meant for ------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_late_event_is_not_handed_to_a_later_run_but_a_keyed_one_is(kind: str,
                                                                       tmp_path: Path) -> None:
    async def main() -> None:
        journal = open_journal(kind, tmp_path)
        async with runtime(journal, stubs(), da.Waiter) as rt:
            assert await rt.ask("waiter/p", "parcel", {"timeout": 0.1}, msg_id="A") == "late"
            await rt.signal("waiter/p", "delivered", {"parcel": "A"}, msg_id="late-A")
            await rt.signal("waiter/p", "delivered", {"parcel": "B"}, msg_id="early-B",
                            key="B")
            # B's run began after both events; only the one correlated to B reaches it
            assert await rt.ask("waiter/p", "parcel", {"timeout": 5, "key": "B"},
                                msg_id="B") == {"parcel": "B"}
            assert await rt.ask("waiter/p", "parcel", {"timeout": 0.1}, msg_id="C") == "late"
            left = await journal.inbox("waiter/p", time.time() + 60, calls=0)
            assert [e["id"] for e in left if e["kind"] == "event"] == ["late-A"]
        await journal.close()

    run(main())


# -- 11. replay covers branches; branch randomness; canonical digests; exact failures --------


@pytest.mark.parametrize("kind", KINDS)
def test_a_step_removed_inside_a_branch_is_a_divergence(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        journal = open_journal(kind, tmp_path)
        acts = stubs("effect")
        rt = runtime(journal, acts, da.Brancher)
        await rt.start()
        await rt.send("brancher/b1", "run", {"wait": True}, msg_id="m1")
        await eventually(lambda: _count_op(journal, "brancher/b1", "wait.start", 2))
        await rt.stop()
        rt2 = runtime(journal, stubs("effect"), da.BrancherDroppedStep)
        async with rt2:
            await rt2.signal("brancher/b1", "go-left", 1, msg_id="g1")
            await rt2.signal("brancher/b1", "go-right", 1, msg_id="g2")
            with pytest.raises(errors.NonDeterminismError) as info:
                await rt2.ask("brancher/b1", "run", {"wait": True}, msg_id="m1", timeout=10)
            assert "right/1" in str(info.value)
        report = await replay_commits(da.BrancherDroppedStep, "brancher/b1",
                                      await journal.read("brancher/b1"))
        assert [r.status for r in report.runs] == ["diverged"]
        await journal.close()

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_branches_draw_their_own_random_numbers_and_repeat_them_on_replay(
        kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        journal = open_journal(kind, tmp_path)
        async with runtime(journal, stubs("effect"), da.Brancher) as rt:
            out = await rt.ask("brancher/b2", "run", {}, msg_id="m1")
        assert out["left"][0] != out["right"][0]
        report = await replay_commits(da.Brancher, "brancher/b2",
                                      await journal.read("brancher/b2"))
        assert [r.status for r in report.runs] == ["ok"], report.runs
        await journal.close()

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_the_same_branch_twice_continues_its_numbering(kind: str, tmp_path: Path) -> None:
    async def main() -> None:
        journal = open_journal(kind, tmp_path)
        async with runtime(journal, stubs("effect"), da.Brancher) as rt:
            one, two = await rt.ask("brancher/b3", "again", None, msg_id="m1")
        assert one != two
        assert (one, two) == ("effect:brancher/b3:m1:x/0", "effect:brancher/b3:m1:x/1")
        await journal.close()

    run(main())


def test_step_arguments_must_be_json_and_are_digested_canonically() -> None:
    from runtime.actors.context import digest

    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    with pytest.raises(TypeError, match="must be JSON"):
        digest({"tags": {"a", "b"}})

    async def main() -> None:
        journal = MemoryJournal()
        async with runtime(journal, stubs("effect"), da.Brancher, da.Ordered) as rt:
            with pytest.raises(errors.HandlerFailed, match="must be JSON"):
                await rt.ask("brancher/b4", "sets", None)
            await rt.ask("ordered/o1", "go", None)
        commits = await journal.read("ordered/o1")
        for cls, status in ((da.Reordered, "ok"), (da.Changed, "diverged")):
            report = await replay_commits(cls, "ordered/o1", commits)
            assert [r.status for r in report.runs] == [status], (cls, report.runs)

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_a_recorded_failure_replays_with_the_text_it_was_raised_with(kind: str,
                                                                     tmp_path: Path) -> None:
    acts = stubs("effect")

    def broken(_input: Any, key: str) -> Any:
        raise errors.GuestError("guest exited with code 3")

    acts.add("broken", broken)

    async def main() -> None:
        journal = open_journal(kind, tmp_path)
        rt = runtime(journal, acts, da.Brancher)
        await rt.start()
        await rt.send("brancher/b5", "keep_error", None, msg_id="m1")
        await eventually(lambda: _has_op(journal, "brancher/b5", "wait.start"))
        await rt.stop()
        async with runtime(journal, acts, da.Brancher) as rt2:  # the run resumes by replay
            await rt2.signal("brancher/b5", "go", None, msg_id="g")
            text = await rt2.ask("brancher/b5", "keep_error", None, msg_id="m1")
        assert text.startswith("[activity_failed")
        assert "broken failed after 1 attempt(s)" in text
        report = await replay_commits(da.Brancher, "brancher/b5",
                                      await journal.read("brancher/b5"))
        assert [r.status for r in report.runs] == ["ok"], report.runs
        await journal.close()

    run(main())


# -- 12. never evict during a commit -------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_is_not_evicted_while_its_commit_is_in_flight(kind: str, tmp_path: Path) -> None:
    """One branch waits for an event (the run looks parked) while the other's timer commit
    is slow; activating other actors meanwhile must not evict it mid-commit."""
    journal = Tripwire(open_journal(kind, tmp_path))

    def slow_timer_commit(op: str, args: tuple[Any, ...]) -> Awaitable[None] | None:
        events = args[0].get("events", []) if op == "append" else []
        if any(e["op"] == "timer.start" for e in events):
            return asyncio.sleep(0.3)
        return None

    journal.rules.append(slow_timer_commit)

    async def main() -> None:
        async with runtime(journal, stubs(), da.TwoWay, da.Parker, max_activations=1) as rt:
            task = asyncio.ensure_future(rt.ask("twoway/t1", "go", None, msg_id="m1"))
            await eventually(lambda: _has_op(journal, "twoway/t1", "wait.start"))
            await asyncio.sleep(0.05)  # the timer's commit is in flight now
            for i in range(3):
                await rt.send(f"parker/x{i}", "park", None)
            # the sleeping branch's timer fires on its own (nothing else re-activates it)
            await eventually(lambda: _has_op(journal, "twoway/t1", "timer.fired"), timeout=3,
                             what="the sleeping branch's timer to fire unprompted")
            await rt.signal("twoway/t1", "ping", "pong", msg_id="p1")
            assert await asyncio.wait_for(task, 10) == "both: pong"
        await journal.close()

    run(main())


# -- 14. commit, then dispatch --------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_commit_that_does_not_land_lets_no_message_out(kind: str, tmp_path: Path) -> None:
    """The completing commit of a run that sends is refused (a stale, fenced activation):
    its message must never reach the target."""
    journal = Tripwire(open_journal(kind, tmp_path))
    refused = [0]

    def fence(op: str, args: tuple[Any, ...]) -> None:
        if op == "append" and args[0]["actor"] == "bank/b1" and args[0].get("outbox"):
            refused[0] += 1
            raise errors.JournalConflict("another activation committed this seq")
        return None

    journal.rules.append(fence)

    async def main() -> None:
        async with runtime(journal, stubs(), da.Bank, da.Payee) as rt:
            await rt.send("bank/b1", "payout", {"amount": 10, "to": "payee/x"}, msg_id="m1")
            await eventually(lambda: _true(refused[0] >= 3), what="refused commits")
            assert await journal.inbox("payee/x", time.time() + 60) == []
            assert await rt.state_of("payee/x") is None
        await journal.close()

    run(main())


# -- asks are matched by (actor, message id) ------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_asks_with_one_message_id_at_two_actors_and_twice_at_one(kind: str,
                                                                  tmp_path: Path) -> None:
    async def main() -> None:
        journal = open_journal(kind, tmp_path)
        async with runtime(journal, stubs("effect"), da.Shipper) as rt:
            asks = [rt.ask("shipper/a", "ship", {"order": "a", "nap": 0.05}, msg_id="start"),
                    rt.ask("shipper/b", "ship", {"order": "b", "nap": 0.05}, msg_id="start"),
                    rt.ask("shipper/b", "ship", {"order": "b", "nap": 0.05}, msg_id="start")]
            a, b1, b2 = await asyncio.wait_for(asyncio.gather(*asks), 10)
        assert a["a"] == "effect:shipper/a:start:0" and b1 == b2
        assert b1["a"] == "effect:shipper/b:start:0"
        await journal.close()

    run(main())


# -- 13. an actor's activity calls run as its tenant -----------------------------------------------


def test_activity_calls_run_as_the_actors_namespace_or_a_configured_tenant() -> None:
    async def main() -> None:
        acts = stubs("charge", "ship")
        async with runtime(MemoryJournal(), acts, da.Charger) as rt:
            await rt.ask("charger/acme-1", "charge", {"order": "o1"}, msg_id="m1")
        assert {tenant for _, _, tenant in acts.calls} == {"charger"}
        acts = stubs("charge", "ship")
        async with runtime(MemoryJournal(), acts, da.Charger,
                           tenant_of=lambda key: key.split("/")[1].split("-")[0]) as rt:
            await rt.ask("charger/acme-1", "charge", {"order": "o1"}, msg_id="m1")
            await rt.ask("charger/globex-2", "charge", {"order": "o2"}, msg_id="m1")
        assert sorted({tenant for _, _, tenant in acts.calls}) == ["acme", "globex"]

    run(main())


# -- found by mutating the fixes: each fails if its fix is undone -------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_failed_append_inside_a_saga_does_not_compensate(kind: str, tmp_path: Path) -> None:
    receiver = Receiver()
    journal = Tripwire(open_journal(kind, tmp_path))
    failures = [0]

    def rule(op: str, args: tuple[Any, ...]) -> None:
        events = args[0].get("events", []) if op == "append" else []
        if failures[0] < 1 and any(e["op"] == "activity.done" and e["name"] == "ship"
                                   for e in events):
            failures[0] += 1
            raise errors.StorageError("injected")
        return None

    journal.rules.append(rule)

    async def main() -> None:
        acts = stubs("pay", "ship", "refund", "notify", receiver=receiver)
        async with runtime(journal, acts, da.Payment3) as rt:
            assert await rt.ask("payment3/p1", "pay", {"order": "o1"}, msg_id="m1") == "ok"
        await journal.close()

    run(main())
    assert failures[0] == 1
    assert not receiver.of("refund")


@pytest.mark.parametrize("kind", KINDS)
def test_a_trailing_step_removed_inside_a_branch_is_a_divergence(kind: str,
                                                                 tmp_path: Path) -> None:
    async def main() -> None:
        journal = open_journal(kind, tmp_path)
        rt = runtime(journal, stubs("effect"), da.Br)
        await rt.start()
        await rt.send("br/b1", "run", None, msg_id="m1")
        await eventually(lambda: _count_op(journal, "br/b1", "wait.start", 1))
        await rt.signal("br/b1", "a", 1, msg_id="ea")
        await eventually(lambda: _count_op(journal, "br/b1", "wait.start", 2))
        await eventually(lambda: _count_op(journal, "br/b1", "activity.done", 2))
        await rt.stop()
        async with runtime(journal, stubs("effect"), da.BrDropped) as rt2:
            await rt2.signal("br/b1", "b", 1, msg_id="eb")
            with pytest.raises(errors.NonDeterminismError) as info:
                await rt2.ask("br/b1", "run", None, msg_id="m1", timeout=10)
            assert "right/1" in str(info.value)
        await journal.close()

    run(main())


@pytest.mark.parametrize("kind", KINDS)
def test_a_run_released_with_its_event_already_waiting_is_due_at_once(kind: str,
                                                                      tmp_path: Path) -> None:
    """The event arrives while the run is inside an activity (seen, not deliverable yet);
    the pump that would deliver it stalls, and the runtime stops: the next runtime must
    find the run due at once, not wait for an event that already came."""
    journal = Tripwire(open_journal(kind, tmp_path))
    armed = [False]
    hold = asyncio.Event()
    started = [False]

    def rule(op: str, args: tuple[Any, ...]) -> Any:
        if op == "append" and any(e["op"] == "wait.start" for e in args[0].get("events", [])):
            armed[0] = True
        elif op == "inbox" and armed[0] and args[0] == "gate/g1":
            armed[0] = False
            return asyncio.Event().wait()  # the delivering pump never gets its read
        return None

    journal.rules.append(rule)

    async def main() -> None:
        acts = stubs("slow")

        async def before() -> None:
            started[0] = True
            await hold.wait()

        acts.before = before
        rt1 = runtime(journal, acts, da.Gate)
        await rt1.start()
        await rt1.send("gate/g1", "go", None, msg_id="m1")
        await eventually(lambda: _true(started[0]), what="the activity")
        await rt1.signal("gate/g1", "go", "yes", msg_id="e1")  # seen, no wait yet
        await asyncio.sleep(0.1)
        hold.set()
        await eventually(lambda: _has_op(journal, "gate/g1", "wait.start"))
        await asyncio.sleep(0.1)
        await rt1.stop()
        async with runtime(journal, stubs("slow"), da.Gate):
            async def done() -> bool:
                return await journal.outcome("gate/g1", "m1") is not None

            await eventually(done, timeout=3, what="the run to finish after release")
        await journal.close()

    run(main())
