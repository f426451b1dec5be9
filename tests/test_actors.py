"""The durable actor runtime: handlers and state, exactly-once bookkeeping, replay after a
restart, determinism, events, retries, circuit breakers, sagas, invariants and timeouts.

Every scenario runs in `asyncio.run` against a MemoryJournal and a SqliteJournal, with real
WAT guests behind a recording executor. A "restart" is a new ActorRuntime (and, for SQLite,
a new connection) on the same journal after `await rt.stop()`; a "crash" at a precise point
is a hook that ends the run's task without a commit.

The actors are defined here, so this module itself must pass the determinism lint
(`ActorRuntime.register` lints it): no ambient clock, randomness or I/O below — the
helpers that need them live in actor_guests.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import actor_guests as ag
import guests
import pytest
from actor_guests import Journals, RecordingExecutor, Stopwatch, events_of
from pydantic import BaseModel

from runtime import errors
from runtime.actors import (
    Actor,
    ActorContext,
    ActorRef,
    ActorRuntime,
    Breakers,
    Hooks,
    handler,
    invariant,
)
from runtime.actors.delta import current_state
from runtime.actors.replay import replay_commits
from runtime.journal.store import JournalStore

# -- actors ---------------------------------------------------------------------------------------


class Counter(Actor, type_name="counter"):
    """Dict state."""

    def initial_state(self) -> dict[str, Any]:
        return {"total": 0, "seen": 0}

    @handler
    async def add(self, ctx: ActorContext, payload: dict[str, Any]) -> int:
        self.state["total"] += payload["n"]
        self.state["seen"] += 1
        return int(self.state["total"])

    @handler
    async def get(self, ctx: ActorContext, payload: Any) -> dict[str, Any]:
        return dict(self.state)

    @handler
    async def explode(self, ctx: ActorContext, payload: Any) -> None:
        self.state["total"] = -999
        self.state["seen"] += 1
        raise ValueError("boom")


class WalletState(BaseModel):
    balance: int = 0
    history: list[int] = []


class Wallet(Actor, type_name="wallet"):
    """A Pydantic state model, a renamed handler and an actor invariant."""

    State = WalletState

    @handler
    async def deposit(self, ctx: ActorContext, payload: dict[str, Any]) -> int:
        self.state.balance += payload["amount"]
        self.state.history.append(payload["amount"])
        return int(self.state.balance)

    @handler
    async def withdraw(self, ctx: ActorContext, payload: dict[str, Any]) -> int:
        self.state.balance -= payload["amount"]
        self.state.history.append(-payload["amount"])
        return int(self.state.balance)

    @handler
    async def withdraw_and_pay(self, ctx: ActorContext, payload: dict[str, Any]) -> Any:
        self.state.balance -= payload["amount"]
        self.state.history.append(-payload["amount"])
        return await ctx.call_activity(payload["activity"], {"amount": payload["amount"]})

    @handler(name="balance")
    async def read_balance(self, ctx: ActorContext, payload: Any) -> dict[str, Any]:
        assert isinstance(self.state, WalletState)
        return {"balance": self.state.balance, "history": list(self.state.history)}

    @invariant
    def never_negative(self, before: Any, after: Any, events: list[dict[str, Any]]) -> Any:
        return after["balance"] >= 0 or f"balance would be {after['balance']}"


class Steps(Actor, type_name="steps"):
    """Activities, named by the payload so one class serves many guests."""

    @handler
    async def call(self, ctx: ActorContext, payload: dict[str, Any]) -> Any:
        return await ctx.call_activity(payload["activity"], payload.get("input", {}),
                                       retry=payload.get("retry"),
                                       timeout_ms=payload.get("timeout_ms"))

    @handler
    async def two(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        a = await ctx.call_activity(payload["a"], {"step": "a"})
        b = await ctx.call_activity(payload["b"], {"step": "b"})
        self.state["runs"] = self.state.get("runs", 0) + 1
        return {"a": a["value"], "b": b["value"]}

    @handler
    async def nap(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        a = await ctx.call_activity(payload["a"], {"step": "a"})
        await ctx.sleep(payload["seconds"])
        b = await ctx.call_activity(payload["b"], {"step": "b"})
        self.state["napped"] = True
        return {"a": a["value"], "b": b["value"]}

    @handler
    async def sleep_then_wait(self, ctx: ActorContext, payload: dict[str, Any]) -> Any:
        await ctx.sleep(payload["seconds"])
        return await ctx.wait_for_event("go")

    @handler
    async def retry_then_wait(self, ctx: ActorContext, payload: dict[str, Any]) -> Any:
        r = await ctx.call_activity(payload["activity"], {}, retry=payload["retry"])
        got = await ctx.wait_for_event("go")
        return {"r": r, "got": got}


class Sink(Actor, type_name="sink"):
    def initial_state(self) -> dict[str, Any]:
        return {"got": [], "started": None}

    @handler
    async def add(self, ctx: ActorContext, payload: Any) -> int:
        self.state["got"].append(payload)
        return len(self.state["got"])

    @handler
    async def get(self, ctx: ActorContext, payload: Any) -> dict[str, Any]:
        return dict(self.state)

    @handler
    async def double(self, ctx: ActorContext, payload: dict[str, Any]) -> int:
        return int(payload["n"]) * 2

    @handler
    async def start(self, ctx: ActorContext, payload: Any) -> str:
        self.state["started"] = payload
        return "started"


class Relay(Actor, type_name="relay"):
    """Talks to other actors through the context (outbox)."""

    @handler
    async def forward(self, ctx: ActorContext, payload: dict[str, Any]) -> str:
        msg_id = await ctx.send(payload["to"], "add", payload["item"])
        self.state["sent"] = msg_id
        return msg_id

    @handler
    async def ask_double(self, ctx: ActorContext, payload: dict[str, Any]) -> int:
        return int(await ctx.ask(payload["to"], "double", {"n": payload["n"]}))

    @handler
    async def ask_missing(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            await ctx.ask(payload["to"], "no_such_handler", {})
        except errors.HandlerFailed as exc:
            return {"error_type": exc.error_type, "message": exc.message}
        return {"error_type": None, "message": ""}

    @handler
    async def spawn(self, ctx: ActorContext, payload: dict[str, Any]) -> str:
        ref = await ctx.spawn("sink", payload["id"], {"parent": str(ctx.actor)})
        return str(ref)

    @handler
    async def ping(self, ctx: ActorContext, payload: Any) -> str:
        return "pong"


class Waiter(Actor, type_name="waiter"):
    @handler
    async def approve(self, ctx: ActorContext, payload: dict[str, Any]) -> Any:
        got = await ctx.wait_for_event("approval", timeout=payload.get("timeout"))
        self.state["approved"] = got
        return got


class Dice(Actor, type_name="dice"):
    """Draws from the deterministic substitutes before and after a pause."""

    @handler
    async def roll(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        before = {"now": ctx.now().isoformat(), "random": ctx.random().random(),
                  "uuid": str(ctx.uuid())}
        echoed = await ctx.call_activity(payload["echo"], before)
        await ctx.wait_for_event("go")
        after = {"now": ctx.now().isoformat(), "random": ctx.random().random(),
                 "uuid": str(ctx.uuid())}
        self.state = {"before": before, "echoed": echoed, "after": after,
                      "replaying": ctx.replaying}
        return dict(self.state)


class FlowV1(Actor, type_name="flow"):
    """The recorded version: activity `payload.activity` with {"n": 1}, then an event."""

    @handler
    async def go(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        a = await ctx.call_activity(payload["activity"], {"n": 1})
        got = await ctx.wait_for_event("resume")
        return {"a": a, "got": got}


class FlowRenamed(Actor, type_name="flow"):
    @handler
    async def go(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        a = await ctx.call_activity(payload["other"], {"n": 1})
        got = await ctx.wait_for_event("resume")
        return {"a": a, "got": got}


class FlowNewInput(Actor, type_name="flow"):
    @handler
    async def go(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        a = await ctx.call_activity(payload["activity"], {"n": 2})
        got = await ctx.wait_for_event("resume")
        return {"a": a, "got": got}


class FlowReordered(Actor, type_name="flow"):
    @handler
    async def go(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        got = await ctx.wait_for_event("resume")
        a = await ctx.call_activity(payload["activity"], {"n": 1})
        return {"a": a, "got": got}


class FlowShort(Actor, type_name="flow"):
    @handler
    async def go(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        a = await ctx.call_activity(payload["activity"], {"n": 1})
        return {"a": a, "got": None}


class FlowOtherResult(Actor, type_name="flow"):
    @handler
    async def go(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        a = await ctx.call_activity(payload["activity"], {"n": 1})
        got = await ctx.wait_for_event("resume")
        return {"a": a, "got": got, "extra": True}


class Trip(Actor, type_name="trip"):
    """A saga: book A, B, C; C fails; cancel B then A."""

    @handler
    async def book(self, ctx: ActorContext, payload: Any) -> str:
        self.state["booked"] = []
        async with ctx.saga() as saga:
            a = await ctx.call_activity("book-a", {"what": "a"})
            self.state["booked"].append(a["value"])
            saga.add("cancel-a", {"booking": a["value"]})
            b = await ctx.call_activity("book-b", {"what": "b"})
            self.state["booked"].append(b["value"])
            saga.add("cancel-b", {"booking": b["value"]})
            await ctx.call_activity("book-c", {"what": "c"})
        return "booked"


# -- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite"])
def journals(request: pytest.FixtureRequest, tmp_path: Path) -> Journals:
    return Journals(request.param, tmp_path / "journal.db")


@pytest.fixture
def memory(tmp_path: Path) -> Journals:
    return Journals("memory", tmp_path / "unused.db")


@pytest.fixture
def executor(tmp_path: Path) -> Iterator[RecordingExecutor]:
    ex = ag.recording_executor(tmp_path / "home")
    try:
        yield ex
    finally:
        ex.close()


class Sleeps:
    """The runtime's injected sleep (used for short retry backoffs): records, never waits."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


def make_runtime(journal: JournalStore, executor: RecordingExecutor | None,
                 *actors: type[Actor], **kw: Any) -> ActorRuntime:
    kw.setdefault("poll_interval_s", 0.01)
    kw.setdefault("hooks", Hooks())
    kw.setdefault("sleep", Sleeps())
    rt = ActorRuntime(journal, executor, **kw)
    for cls in actors:
        rt.register(cls)
    return rt


def drive(journals: Journals, scenario: Callable[[], Awaitable[None]],
          timeout: float = 20.0) -> None:
    async def main() -> None:
        try:
            await asyncio.wait_for(scenario(), timeout)
        finally:
            await journals.close_all()

    asyncio.run(main())


async def completed(rt: ActorRuntime, actor: str, msg_id: str,
                    timeout: float = 5.0) -> dict[str, Any]:
    async def done() -> dict[str, Any] | None:
        return await rt.outcome(actor, msg_id)

    commit: dict[str, Any] = await ag.wait_until(done, timeout=timeout,
                                                 what=f"outcome of {msg_id} at {actor}")
    return commit


async def ops(journal: JournalStore, actor: str) -> list[str]:
    return [e["op"] for e in events_of(await journal.read(actor))]


def crash_at(hooks: Hooks, point: str, actor: str, nth: int = 1) -> list[int]:
    """End the actor's run (no commit, as if the process died) the n-th time `point` is
    reached. Returns a one-element counter of how often the point was reached."""
    seen = [0]

    def hook(key: str) -> None:
        if key != actor:
            return
        seen[0] += 1
        if seen[0] == nth:
            raise asyncio.CancelledError

    hooks.on(point, hook)
    return seen


KEY_REPORTERS = ("ka", "kb")


def add_key_reporters(executor: RecordingExecutor, *names: str) -> None:
    for name in names or KEY_REPORTERS:
        executor.add(name, ag.key_reporter())


# -- basics ---------------------------------------------------------------------------------------


def test_ask_returns_the_handler_result_and_state_accumulates(journals: Journals) -> None:
    async def scenario() -> None:
        journal = journals.open()
        async with make_runtime(journal, None, Counter) as rt:
            assert await rt.state_of("counter/c1") is None
            assert await rt.ask("counter/c1", "add", {"n": 2}) == 2
            assert await rt.ask(ActorRef("counter", "c1"), "add", {"n": 3}) == 5
            assert await rt.ask("counter/c1", "get") == {"total": 5, "seen": 2}
            assert await rt.state_of("counter/c1") == {"total": 5, "seen": 2}
            assert await rt.ask("counter/other", "add", {"n": 1}) == 1  # separate actors
            assert await rt.state_of("counter/c1") == {"total": 5, "seen": 2}
            kinds = [c.get("kind") for c in await journal.read("counter/c1")]
            assert kinds == ["completed", "completed", "completed"]

    drive(journals, scenario)


def test_state_survives_a_runtime_restart(journals: Journals) -> None:
    async def scenario() -> None:
        async with make_runtime(journals.open(), None, Counter) as rt:
            await rt.ask("counter/c1", "add", {"n": 5})
            await rt.ask("counter/c1", "add", {"n": 2})
        async with make_runtime(journals.open(), None, Counter) as rt2:
            assert await rt2.state_of("counter/c1") == {"total": 7, "seen": 2}
            assert await rt2.ask("counter/c1", "add", {"n": 1}) == 8
            assert await rt2.ask("counter/c1", "get") == {"total": 8, "seen": 3}

    drive(journals, scenario)


def test_pydantic_state_model_persists_and_renamed_handler(journals: Journals) -> None:
    async def scenario() -> None:
        async with make_runtime(journals.open(), None, Wallet) as rt:
            assert await rt.ask("wallet/w1", "deposit", {"amount": 10}) == 10
            assert await rt.ask("wallet/w1", "deposit", {"amount": 5}) == 15
            assert await rt.state_of("wallet/w1") == {"balance": 15, "history": [10, 5]}
            with pytest.raises(errors.HandlerFailed) as info:  # the method name is not a handler
                await rt.ask("wallet/w1", "read_balance")
            assert info.value.error_type == "UnknownHandler"
        async with make_runtime(journals.open(), None, Wallet) as rt2:
            assert await rt2.ask("wallet/w1", "balance") == {"balance": 15, "history": [10, 5]}
            assert await rt2.ask("wallet/w1", "withdraw", {"amount": 4}) == 11

    drive(journals, scenario)


def test_unknown_handler_is_an_error_to_the_asker(journals: Journals) -> None:
    async def scenario() -> None:
        journal = journals.open()
        async with make_runtime(journal, None, Counter) as rt:
            await rt.ask("counter/c1", "add", {"n": 1})
            with pytest.raises(errors.HandlerFailed) as info:
                await rt.ask("counter/c1", "subtract", {"n": 1})
            assert info.value.error_type == "UnknownHandler"
            assert "subtract" in info.value.message and "counter/c1" in info.value.message
            assert (await journal.read("counter/c1"))[-1]["kind"] == "failed"
            assert await rt.ask("counter/c1", "add", {"n": 1}) == 2

    drive(journals, scenario)


def test_handler_exception_rolls_back_state_and_the_next_message_works(
        journals: Journals) -> None:
    async def scenario() -> None:
        journal = journals.open()
        async with make_runtime(journal, None, Counter) as rt:
            await rt.ask("counter/c1", "add", {"n": 5})
            with pytest.raises(errors.HandlerFailed) as info:
                await rt.ask("counter/c1", "explode")
            assert info.value.error_type == "ValueError"
            assert "boom" in info.value.message
            assert await rt.state_of("counter/c1") == {"total": 5, "seen": 1}
            commits = await journal.read("counter/c1")
            last = commits[-1]
            assert last["kind"] == "failed"
            assert current_state(commits) == {"total": 5, "seen": 1}
            assert last["error"]["type"] == "ValueError"  # the original type is journaled
            assert "boom" in last["error"]["message"]
            # the live activation was rolled back too, not only the journal
            assert await rt.ask("counter/c1", "add", {"n": 1}) == 6
            assert await rt.ask("counter/c1", "get") == {"total": 6, "seen": 2}

    drive(journals, scenario)


# -- exactly-once bookkeeping ---------------------------------------------------------------------


def test_activity_idempotency_keys_are_actor_seq_step(journals: Journals,
                                                      executor: RecordingExecutor) -> None:
    add_key_reporters(executor)

    async def scenario() -> None:
        journal = journals.open()
        async with make_runtime(journal, executor, Steps) as rt:
            first = await rt.ask("steps/k1", "two", {"a": "ka", "b": "kb"}, msg_id="m1")
            assert first == {"a": "steps/k1:m1:0", "b": "steps/k1:m1:1"}
            second = await rt.ask("steps/k1", "two", {"a": "ka", "b": "kb"}, msg_id="m2")
            assert second == {"a": "steps/k1:m2:0", "b": "steps/k1:m2:1"}
            assert executor.keys("ka") == ["steps/k1:m1:0", "steps/k1:m2:0"]
            assert executor.keys("kb") == ["steps/k1:m1:1", "steps/k1:m2:1"]
            # a long or ':'-bearing message id enters keys as a hash of itself
            third = await rt.ask("steps/k1", "two", {"a": "ka", "b": "kb"}, msg_id="a:b")
            assert third["a"].startswith("steps/k1:") and "a:b" not in third["a"]
            done = [e for e in events_of(await journal.read("steps/k1"))
                    if e["op"] == "activity.done"]
            assert [(e["name"], e["step"], e["attempts"]) for e in done] == [
                ("ka", 0, 1), ("kb", 1, 1), ("ka", 0, 1), ("kb", 1, 1), ("ka", 0, 1), ("kb", 1, 1)]

    drive(journals, scenario)


def test_activity_reexecuted_after_a_crash_keeps_its_idempotency_key(
        journals: Journals, executor: RecordingExecutor) -> None:
    """Crash after activity B ran but before its outcome was committed: on restart A is
    replayed from the journal, B runs again with the very same key. (B may log, so it
    reaches outside the process: A's outcome was committed before it ran.)"""
    add_key_reporters(executor, "ka")
    executor.add("kb", ag.key_reporter(), capabilities={"log": True})

    async def scenario() -> None:
        hooks = Hooks()
        seen = crash_at(hooks, "after_activity", "steps/k1", nth=2)
        rt = make_runtime(journals.open(), executor, Steps, hooks=hooks)
        await rt.start()
        msg = await rt.send("steps/k1", "two", {"a": "ka", "b": "kb"}, msg_id="m0")
        await ag.wait_until(lambda: _true(seen[0] == 2), what="the crash")
        await rt.stop()
        assert await rt.outcome("steps/k1", msg) is None
        assert executor.keys("kb") == ["steps/k1:m0:1"]

        async with make_runtime(journals.open(), executor, Steps) as rt2:
            commit = await completed(rt2, "steps/k1", msg)
        assert commit["result"] == {"a": "steps/k1:m0:0", "b": "steps/k1:m0:1"}
        assert commit["state"] == {"runs": 1}
        assert executor.keys("ka") == ["steps/k1:m0:0"]  # replayed, not re-run
        assert executor.keys("kb") == ["steps/k1:m0:1", "steps/k1:m0:1"]

    drive(journals, scenario)


def test_contained_steps_share_a_commit_and_a_crash_runs_them_again_under_their_keys(
        journals: Journals, executor: RecordingExecutor) -> None:
    """A and B reach nothing outside the process (no HTTP, no log): A's outcome waits to be
    committed with B's. A crash after B ran loses both outcomes; the restarted run computes
    both again under the same keys, and the journal records each once."""
    add_key_reporters(executor)

    async def scenario() -> None:
        journal = journals.open()
        async with make_runtime(journal, executor, Steps) as rt:  # manifests cached:
            await rt.ask("steps/k0", "two", {"a": "ka", "b": "kb"})  # contained from now on
            seen = crash_at(rt.hooks, "after_activity", "steps/k1", nth=2)
            msg = await rt.send("steps/k1", "two", {"a": "ka", "b": "kb"}, msg_id="m0")
            await ag.wait_until(lambda: _true(seen[0] == 2), what="the crash")
        assert [c for c in await journal.read("steps/k1")] == []  # nothing committed
        async with make_runtime(journals.open(), executor, Steps) as rt2:
            commit = await completed(rt2, "steps/k1", msg)
        assert commit["result"] == {"a": "steps/k1:m0:0", "b": "steps/k1:m0:1"}
        assert executor.keys("ka")[1:] == ["steps/k1:m0:0"] * 2  # computed again
        assert executor.keys("kb")[1:] == ["steps/k1:m0:1"] * 2
        commits = await journal.read("steps/k1")
        assert len(commits) == 1  # both steps and the outcome in one commit
        assert [e["op"] for e in events_of(commits)] == ["activity.done", "activity.done"]

    drive(journals, scenario)


def test_contained_steps_are_committed_every_so_many(journals: Journals,
                                                     executor: RecordingExecutor) -> None:
    """A long run of contained steps still commits as it goes (CONTAINED_STEPS a commit),
    so a crash makes it compute at most that many again; an activity that reaches outside
    the process commits everything before it."""
    from runtime.actors import activation

    executor.add("echo", guests.echo())
    executor.add("logged", guests.echo(), capabilities={"log": True})

    class Many(Actor, type_name="many"):
        @handler
        async def run(self, ctx: ActorContext, payload: dict[str, Any]) -> int:
            for i in range(payload["n"]):
                await ctx.call_activity("echo", {"i": i})
            await ctx.call_activity("logged", {"i": -1})
            return int(payload["n"])

    async def scenario() -> None:
        journal = journals.open()
        async with make_runtime(journal, executor, Many) as rt:
            await rt.ask("many/warm", "run", {"n": 1})  # manifests cached
            n = 2 * activation.CONTAINED_STEPS + 5
            assert await rt.ask("many/m", "run", {"n": n}) == n
        sizes = [len(c.get("events", [])) for c in await journal.read("many/m")]
        # 64, 64 (each before the contained step past them), 5 before the logged one, its own
        assert sizes == [activation.CONTAINED_STEPS, activation.CONTAINED_STEPS, 5, 1], sizes

        now = [1000.0]  # a clock that moves CONTAINED_S / 2 at every reading

        def clock() -> float:
            now[0] += activation.CONTAINED_S / 2
            return now[0]

        async with make_runtime(journal, executor, Many, clock=clock) as rt:
            assert await rt.ask("many/slow", "run", {"n": 6}) == 6
        sizes = [len(c.get("events", [])) for c in await journal.read("many/slow")]
        assert max(sizes) < 6 and sum(sizes) == 7, sizes  # committed as time passed

    drive(journals, scenario)


async def _true(value: bool) -> bool:
    return value


def test_a_message_sent_twice_with_one_msg_id_is_processed_once(journals: Journals) -> None:
    async def scenario() -> None:
        async with make_runtime(journals.open(), None, Counter) as rt:
            assert await rt.send("counter/c1", "add", {"n": 1}, msg_id="m-1") == "m-1"
            await rt.send("counter/c1", "add", {"n": 1}, msg_id="m-1")  # still queued
            assert await rt.ask("counter/c1", "get") == {"total": 1, "seen": 1}
            await rt.send("counter/c1", "add", {"n": 1}, msg_id="m-1")  # long consumed
            await rt.send("counter/c1", "add", {"n": 10}, msg_id="m-2")
            assert await rt.ask("counter/c1", "get") == {"total": 11, "seen": 2}
        async with make_runtime(journals.open(), None, Counter) as rt2:  # and after a restart
            await rt2.send("counter/c1", "add", {"n": 1}, msg_id="m-1")
            assert await rt2.ask("counter/c1", "get") == {"total": 11, "seen": 2}

    drive(journals, scenario)


def test_ctx_send_delivers_exactly_once_even_when_dispatch_is_cut_off(
        journals: Journals) -> None:
    """The sender's commit is durable but the process 'dies' before dispatching its
    outbox: the outbox is re-dispatched on recovery, and re-dispatched again on every later
    activation, and the receiver still gets the message once."""

    async def scenario() -> None:
        journal = journals.open()
        hooks = Hooks()
        fired: list[str] = []

        def cut(key: str) -> None:
            if key == "relay/r1" and not fired:
                fired.append(key)
                raise RuntimeError("simulated crash between commit and dispatch")

        hooks.on("after_commit", cut)
        async with make_runtime(journal, None, Relay, Sink, hooks=hooks) as rt:
            await rt.send("relay/r1", "forward", {"to": "sink/s1", "item": "parcel"},
                          msg_id="fwd-1")

            async def delivered() -> Any:
                state = await rt.state_of("sink/s1")
                return state and state["got"]

            assert await ag.wait_until(delivered, what="the forwarded message") == ["parcel"]
            assert fired == ["relay/r1"]
            assert await rt.ask("relay/r1", "ping") == "pong"
            assert await rt.ask("sink/s1", "get") == {"got": ["parcel"], "started": None}
        async with make_runtime(journals.open(), None, Relay, Sink) as rt2:
            assert await rt2.ask("relay/r1", "ping") == "pong"
            assert await rt2.ask("sink/s1", "get") == {"got": ["parcel"], "started": None}
            sent = [e for e in events_of(await rt2.journal.read("relay/r1"))
                    if e["op"] == "send.sent"]
            assert [e["msg"] for e in sent] == ["relay/r1:fwd-1:0"]
            commits = await rt2.journal.read("relay/r1")
            # sends leave with the commit that completes the run
            assert commits[0]["kind"] == "completed"
            assert commits[0]["outbox"][0]["id"] == "relay/r1:fwd-1:0"
            assert commits[0]["outbox"][0]["target"] == "sink/s1"

    drive(journals, scenario)


def test_ctx_ask_request_response_between_actors(journals: Journals) -> None:
    async def scenario() -> None:
        journal = journals.open()
        async with make_runtime(journal, None, Relay, Sink) as rt:
            assert await rt.ask("relay/r1", "ask_double", {"to": "sink/s1", "n": 21}) == 42
            assert "ask.reply" in await ops(journal, "relay/r1")
            failed = await rt.ask("relay/r1", "ask_missing", {"to": "sink/s1"})
            assert failed["error_type"] is not None  # the caller got HandlerFailed
            assert "sink/s1.no_such_handler failed" in failed["message"]
            assert "no handler 'no_such_handler'" in failed["message"]
            assert await rt.ask("sink/s1", "double", {"n": 2}) == 4

    drive(journals, scenario)


def test_ctx_ask_reports_the_same_error_type_as_rt_ask(memory: Journals) -> None:
    async def scenario() -> None:
        async with make_runtime(memory.open(), None, Relay, Sink) as rt:
            with pytest.raises(errors.HandlerFailed) as direct:
                await rt.ask("sink/s1", "no_such_handler", {})
            assert direct.value.error_type == "UnknownHandler"
            failed = await rt.ask("relay/r1", "ask_missing", {"to": "sink/s1"})
            assert failed["error_type"] == direct.value.error_type

    drive(memory, scenario)


def test_ctx_spawn_starts_a_child(journals: Journals) -> None:
    async def scenario() -> None:
        async with make_runtime(journals.open(), None, Relay, Sink) as rt:
            assert await rt.ask("relay/r1", "spawn", {"id": "child-1"}) == "sink/child-1"

            async def started() -> Any:
                state = await rt.state_of("sink/child-1")
                return state and state["started"]

            assert await ag.wait_until(started, what="the child") == {"parent": "relay/r1"}

    drive(journals, scenario)


# -- replay and recovery --------------------------------------------------------------------------


def test_durable_sleep_resumes_after_a_restart_without_rerunning_steps(
        journals: Journals, executor: RecordingExecutor) -> None:
    add_key_reporters(executor)

    async def scenario() -> None:
        rt = make_runtime(journals.open(), executor, Steps)
        await rt.start()
        msg = await rt.send("steps/n1", "nap", {"a": "ka", "b": "kb", "seconds": 0.3},
                            msg_id="m0")
        start = await ag.wait_for_event_op(rt.journal, "steps/n1", "timer.start")
        await rt.stop()
        assert executor.keys("ka") == ["steps/n1:m0:0"]
        assert executor.keys("kb") == []

        async with make_runtime(journals.open(), executor, Steps) as rt2:
            commit = await completed(rt2, "steps/n1", msg)
            ops_ = await ops(rt2.journal, "steps/n1")
        assert commit["kind"] == "completed"
        assert commit["result"] == {"a": "steps/n1:m0:0", "b": "steps/n1:m0:2"}
        assert commit["state"] == {"napped": True}
        assert commit["ts"] >= start["fire_at"]  # the timer did not fire early
        assert executor.keys("ka") == ["steps/n1:m0:0"]  # A is not executed again
        assert executor.keys("kb") == ["steps/n1:m0:2"]  # B once
        assert ops_ == ["activity.done", "timer.start", "timer.fired", "activity.done"]

    drive(journals, scenario)


NON_DETERMINISTIC = {
    "renamed": (FlowRenamed, "activity 'nd-b'"),
    "new-input": (FlowNewInput, "activity 'nd-a'"),
    "reordered": (FlowReordered, "wait 'resume'"),
}


@pytest.mark.parametrize("variant", list(NON_DETERMINISTIC))
def test_changed_code_replayed_mid_run_raises_nondeterminism(
        journals: Journals, executor: RecordingExecutor, variant: str) -> None:
    changed, requested = NON_DETERMINISTIC[variant]
    executor.add("nd-a", guests.echo())
    executor.add("nd-b", guests.echo())
    payload = {"activity": "nd-a", "other": "nd-b"}

    async def scenario() -> None:
        rt = make_runtime(journals.open(), executor, FlowV1)
        await rt.start()
        await rt.send("flow/f1", "go", payload, msg_id="flow-msg")
        await ag.wait_for_event_op(rt.journal, "flow/f1", "wait.start")
        await rt.stop()
        recorded = await rt.journal.read("flow/f1")

        rt2 = make_runtime(journals.open(), executor, changed)
        try:
            # asking again with the same msg_id re-attaches to the unfinished run
            with pytest.raises(errors.NonDeterminismError) as info:
                await rt2.ask("flow/f1", "go", payload, msg_id="flow-msg", timeout=5)
        finally:
            await rt2.stop()
        exc = info.value
        assert (exc.actor, exc.seq, exc.step) == ("flow/f1", 0, 0)
        assert exc.recorded.startswith("activity 'nd-a'")
        assert exc.requested.startswith(requested)
        assert exc.recorded != exc.requested
        assert "flow/f1" in exc.message and "seq 0" in exc.message
        assert exc.recorded in exc.message and exc.requested in exc.message
        assert await rt2.journal.read("flow/f1") == recorded  # nothing written
        assert executor.count("nd-a") == 1 and executor.count("nd-b") == 0

        # the original code still resumes the run where it stopped
        async with make_runtime(journals.open(), executor, FlowV1) as rt3:
            task = asyncio.create_task(
                rt3.ask("flow/f1", "go", payload, msg_id="flow-msg", timeout=5))
            await rt3.signal("flow/f1", "resume", {"ok": 1})
            assert await task == {"a": {"n": 1}, "got": {"ok": 1}}
        assert executor.count("nd-a") == 1

    drive(journals, scenario)


REPLAY_VARIANTS = {
    FlowV1: ("ok", ""),
    FlowRenamed: ("diverged", "nd-b"),
    FlowNewInput: ("diverged", "nd-a"),
    FlowReordered: ("diverged", "wait 'resume'"),
    FlowShort: ("diverged", "returned at step 1"),
    FlowOtherResult: ("diverged", "result differs"),
}


def test_replay_commits_reports_divergence_of_changed_code(
        memory: Journals, executor: RecordingExecutor) -> None:
    executor.add("nd-a", guests.echo())
    payload = {"activity": "nd-a", "other": "nd-b"}

    async def scenario() -> None:
        journal = memory.open()
        async with make_runtime(journal, executor, FlowV1) as rt:
            task = asyncio.create_task(rt.ask("flow/f1", "go", payload, msg_id="one"))
            await ag.wait_for_event_op(journal, "flow/f1", "wait.start")
            await rt.signal("flow/f1", "resume", "yes")
            assert await task == {"a": {"n": 1}, "got": "yes"}
        commits = await journal.read("flow/f1")
        for cls, (status, detail) in REPLAY_VARIANTS.items():
            report = await replay_commits(cls, "flow/f1", commits)
            assert report.actor == "flow/f1"
            assert [(r.msg_id, r.handler, r.start_seq) for r in report.runs] == [
                ("one", "go", 0)], cls.__name__
            assert report.runs[0].status == status, (cls.__name__, report.runs[0])
            assert detail in report.runs[0].detail, (cls.__name__, report.runs[0])
            assert report.ok is (status == "ok")
        assert executor.count("nd-a") == 1  # replay executes nothing

    drive(memory, scenario)


def test_replay_commits_of_an_unfinished_run_is_incomplete(
        memory: Journals, executor: RecordingExecutor) -> None:
    executor.add("nd-a", guests.echo())

    async def scenario() -> None:
        journal = memory.open()
        async with make_runtime(journal, executor, FlowV1) as rt:
            await rt.send("flow/f1", "go", {"activity": "nd-a"}, msg_id="one")
            await ag.wait_for_event_op(journal, "flow/f1", "wait.start")
        report = await replay_commits(FlowV1, "flow/f1", await journal.read("flow/f1"))
        assert [r.status for r in report.runs] == ["incomplete"]
        assert report.ok
        report = await replay_commits(FlowRenamed, "flow/f1", await journal.read("flow/f1"))
        assert [r.status for r in report.runs] == ["diverged"]

    drive(memory, scenario)


def test_now_random_and_uuid_are_identical_on_replay(journals: Journals,
                                                     executor: RecordingExecutor) -> None:
    executor.add("echo", guests.echo())

    async def scenario() -> None:
        rt = make_runtime(journals.open(), executor, Dice)
        await rt.start()
        msg = await rt.send("dice/d1", "roll", {"echo": "echo"})
        await ag.wait_for_event_op(rt.journal, "dice/d1", "wait.start")
        await rt.stop()
        first = (await rt.journal.read("dice/d1"))[0]

        async with make_runtime(journals.open(), executor, Dice) as rt2:
            await rt2.signal("dice/d1", "go")
            commit = await completed(rt2, "dice/d1", msg)
        state = commit["state"]
        assert executor.count("echo") == 1  # the pause really was crossed by a replay
        # before the restart, recomputed during replay == what the live run recorded
        assert state["before"] == state["echoed"]
        assert state["replaying"] is False
        when = datetime.fromtimestamp(first["run"]["ts"], UTC).isoformat()
        assert state["before"]["now"] == state["after"]["now"] == when
        (r1, u1), (r2, u2) = ag.context_values("dice/d1", msg, 2)
        assert (state["before"]["random"], state["before"]["uuid"]) == (r1, u1)
        assert (state["after"]["random"], state["after"]["uuid"]) == (r2, u2)

    drive(journals, scenario)


# -- events ---------------------------------------------------------------------------------------


def test_wait_for_event_returns_the_signalled_payload(journals: Journals) -> None:
    async def scenario() -> None:
        journal = journals.open()
        async with make_runtime(journal, None, Waiter) as rt:
            task = asyncio.create_task(rt.ask("waiter/w1", "approve", {"timeout": 5}))
            await ag.wait_for_event_op(journal, "waiter/w1", "wait.start")
            assert not task.done()
            await rt.signal("waiter/w1", "unrelated", {"by": "nobody"})
            await rt.signal("waiter/w1", "approval", {"by": "ann"})
            assert await task == {"by": "ann"}
            assert await rt.state_of("waiter/w1") == {"approved": {"by": "ann"}}
            assert await ops(journal, "waiter/w1") == ["wait.start", "wait.event"]

    drive(journals, scenario)


def test_wait_for_event_times_out(journals: Journals) -> None:
    async def scenario() -> None:
        journal = journals.open()
        async with make_runtime(journal, None, Waiter) as rt:
            with Stopwatch() as watch, pytest.raises(errors.EventTimeout) as info:
                await rt.ask("waiter/w1", "approve", {"timeout": 0.15})
            assert watch.elapsed >= 0.14
            assert "approval" in info.value.message
            assert await ops(journal, "waiter/w1") == ["wait.start", "wait.timeout"]
            assert await rt.state_of("waiter/w1") == {}
            assert (await journal.read("waiter/w1"))[-1]["kind"] == "failed"

    drive(journals, scenario)


def test_event_signalled_before_the_run_is_not_handed_to_it(journals: Journals) -> None:
    """An event reaches only a run whose message arrived before it: a later run never takes
    an earlier run's leftovers (parcel A's late delivery is not parcel B's)."""
    async def scenario() -> None:
        async with make_runtime(journals.open(), None, Waiter) as rt:
            await rt.signal("waiter/w1", "approval", {"parcel": "A"})
            with pytest.raises(errors.EventTimeout):
                await rt.ask("waiter/w1", "approve", {"timeout": 0.1})
            left = await rt.journal.inbox("waiter/w1", rt.clock(), calls=0)
            assert [(e["kind"], e["payload"]) for e in left] == [("event", {"parcel": "A"})]

    drive(journals, scenario)


def test_event_sent_during_the_run_is_buffered_until_its_wait(journals: Journals) -> None:
    async def scenario() -> None:
        async with make_runtime(journals.open(), None, Waiter) as rt:
            task = asyncio.create_task(rt.ask("waiter/w1", "approve", {"timeout": 5},
                                              msg_id="m1"))
            await ag.wait_until(lambda: _has_inbox(rt, "waiter/w1"), what="the call queued")
            await rt.signal("waiter/w1", "approval", {"early": True})
            assert await task == {"early": True}
            with pytest.raises(errors.EventTimeout):  # consumed: not delivered a second time
                await rt.ask("waiter/w1", "approve", {"timeout": 0.1})

    drive(journals, scenario)


async def _has_inbox(rt: ActorRuntime, actor: str) -> bool:
    return bool(await rt.journal.read(actor)) or bool(
        await rt.journal.inbox(actor, rt.clock()))


# -- retries --------------------------------------------------------------------------------------


NO_JITTER = {"initial_interval_ms": 100, "backoff_coefficient": 2.0, "jitter": False}


def test_retryable_failures_are_retried_with_exponential_injected_sleeps(
        journals: Journals, executor: RecordingExecutor) -> None:
    executor.add("flaky", ag.flaky(2), reuse_instances=True)

    async def scenario() -> None:
        journal = journals.open()
        sleeps = Sleeps()
        async with make_runtime(journal, executor, Steps, sleep=sleeps) as rt:
            result = await rt.ask("steps/r1", "call", {
                "activity": "flaky", "retry": {"max_attempts": 3, **NO_JITTER}}, msg_id="m0")
            assert result == {"count": 3}
        assert sleeps.delays == pytest.approx([0.1, 0.2])
        assert executor.keys("flaky") == ["steps/r1:m0:0"] * 3
        events = events_of(await journal.read("steps/r1"))
        assert [(e["op"], e.get("attempts")) for e in events] == [("activity.done", 3)]

    drive(journals, scenario)


def test_jittered_backoff_stays_within_the_exponential_envelope(
        memory: Journals, executor: RecordingExecutor) -> None:
    executor.add("flaky", ag.flaky(4), reuse_instances=True)

    async def scenario() -> None:
        sleeps = Sleeps()
        async with make_runtime(memory.open(), executor, Steps, sleep=sleeps) as rt:
            retry = {"max_attempts": 5, "initial_interval_ms": 100, "jitter": True,
                     "max_interval_ms": 300}
            assert await rt.ask("steps/r1", "call", {"activity": "flaky", "retry": retry}) == {
                "count": 5}
        assert len(sleeps.delays) == 4
        for attempt, delay in enumerate(sleeps.delays, start=1):
            assert 0 <= delay <= min(0.3, 0.1 * 2 ** (attempt - 1)) + 1e-9

    drive(memory, scenario)


NON_RETRYABLE = {
    "input-invalid": ("input_invalid", {"bad": "x"}, {}),
    "guest-says-no": ("guest_error", {}, {}),
    "policy-non-retryable": ("guest_error", {}, {"non_retryable": ["guest_error"]}),
}


@pytest.mark.parametrize("case", list(NON_RETRYABLE))
def test_non_retryable_errors_are_not_retried(journals: Journals,
                                             executor: RecordingExecutor, case: str) -> None:
    cause, input_, policy = NON_RETRYABLE[case]
    schema = {"type": "object", "properties": {"n": {"type": "integer"}},
              "additionalProperties": False}
    if case == "input-invalid":
        executor.add("act", guests.echo(), input_schema=schema)
    elif case == "guest-says-no":
        executor.add("act", ag.failing(retryable=False))
    else:
        executor.add("act", ag.failing(retryable=True))

    async def scenario() -> None:
        journal = journals.open()
        sleeps = Sleeps()
        async with make_runtime(journal, executor, Steps, sleep=sleeps) as rt:
            with pytest.raises(errors.ActivityFailed) as info:
                await rt.ask("steps/r1", "call", {
                    "activity": "act", "input": input_,
                    "retry": {"max_attempts": 5, **NO_JITTER, **policy}}, msg_id="m0")
        exc = info.value
        assert (exc.attempts, exc.cause_code) == (1, cause)
        assert exc.activity == "act" and exc.idempotency_key == "steps/r1:m0:0"
        assert sleeps.delays == []
        assert executor.count("act") == 1
        events = events_of(await journal.read("steps/r1"))
        assert [(e["op"], e["attempts"], e["error"]["code"]) for e in events] == [
            ("activity.failed", 1, cause)]

    drive(journals, scenario)


def test_exhausted_retries_fail_the_activity(journals: Journals,
                                             executor: RecordingExecutor) -> None:
    executor.add("down", ag.failing("service down", retryable=True))

    async def scenario() -> None:
        journal = journals.open()
        sleeps = Sleeps()
        async with make_runtime(journal, executor, Steps, sleep=sleeps) as rt:
            with pytest.raises(errors.ActivityFailed) as info:
                await rt.ask("steps/r1", "call", {
                    "activity": "down", "retry": {"max_attempts": 3, **NO_JITTER}})
            assert await rt.state_of("steps/r1") == {}
        assert (info.value.attempts, info.value.cause_code) == (3, "guest_error")
        assert "service down" in info.value.message
        assert sleeps.delays == pytest.approx([0.1, 0.2])
        assert executor.count("down") == 3
        events = events_of(await journal.read("steps/r1"))
        assert [(e["op"], e["attempts"]) for e in events] == [("activity.failed", 3)]

    drive(journals, scenario)


def test_a_long_backoff_becomes_a_durable_timer(journals: Journals,
                                                executor: RecordingExecutor) -> None:
    executor.add("flaky", ag.flaky(1), reuse_instances=True)

    async def scenario() -> None:
        journal = journals.open()
        sleeps = Sleeps()
        async with make_runtime(journal, executor, Steps, sleep=sleeps,
                                durable_retry_threshold_s=0.05) as rt:
            with Stopwatch() as watch:
                result = await rt.ask("steps/r1", "call", {
                    "activity": "flaky",
                    "retry": {"max_attempts": 3, "initial_interval_ms": 150, "jitter": False}})
        assert result == {"count": 2}
        assert watch.elapsed >= 0.14
        assert sleeps.delays == []  # not slept in-process
        events = events_of(await journal.read("steps/r1"))
        assert [e["op"] for e in events] == ["activity.retry", "timer.fired", "activity.done"]
        retry, fired, done = events
        assert retry["attempt"] == 1 and retry["error"]["code"] == "guest_error"
        assert retry["timer"].startswith("timer:") and fired["timer"] == retry["timer"]
        assert done["attempts"] == 2
        # the timer went through the durable inbox
        commits = await journal.read("steps/r1")
        timers = [env for c in commits for env in c.get("outbox", []) if env["kind"] == "timer"]
        assert [env["id"] for env in timers] == [retry["timer"]]
        assert timers[0]["deliver_at"] == pytest.approx(retry["fire_at"])

    drive(journals, scenario)


def test_run_resumes_after_a_restart_following_a_durable_retry(
        journals: Journals, executor: RecordingExecutor) -> None:
    """Regression: the timer.fired event of a retry timer used to be filed under the attempt
    number instead of the step, and a replay then waited forever for the consumed timer."""
    executor.add("flaky", ag.flaky(1), reuse_instances=True)
    payload = {"activity": "flaky",
               "retry": {"max_attempts": 3, "initial_interval_ms": 100, "jitter": False}}

    async def scenario() -> None:
        rt = make_runtime(journals.open(), executor, Steps, durable_retry_threshold_s=0.01)
        await rt.start()
        await rt.send("steps/r1", "retry_then_wait", payload, msg_id="retry-msg")
        await ag.wait_for_event_op(rt.journal, "steps/r1", "wait.start")
        await rt.stop()

        async with make_runtime(journals.open(), executor, Steps,
                                durable_retry_threshold_s=0.01) as rt2:
            task = asyncio.create_task(rt2.ask("steps/r1", "retry_then_wait", payload,
                                               msg_id="retry-msg", timeout=3))
            await rt2.signal("steps/r1", "go", "now")
            assert await task == {"r": {"count": 2}, "got": "now"}
        assert executor.count("flaky") == 2

    drive(journals, scenario)


def test_replay_commits_accepts_a_run_with_a_durable_retry(
        memory: Journals, executor: RecordingExecutor) -> None:
    executor.add("flaky", ag.flaky(1), reuse_instances=True)

    async def scenario() -> None:
        journal = memory.open()
        async with make_runtime(journal, executor, Steps, durable_retry_threshold_s=0.01) as rt:
            result = await rt.ask("steps/r1", "call", {
                "activity": "flaky",
                "retry": {"max_attempts": 3, "initial_interval_ms": 50, "jitter": False}})
            assert result == {"count": 2}
        report = await replay_commits(Steps, "steps/r1", await journal.read("steps/r1"))
        assert [(r.status, r.detail) for r in report.runs] == [("ok", "")]
        fired = [e for e in events_of(await journal.read("steps/r1")) if e["op"] == "timer.fired"]
        assert [e["step"] for e in fired] == [0]  # the retried activity is step 0

    drive(memory, scenario)


@pytest.mark.parametrize("msg_id", [
    "plain-id",
    "batch:7:9",  # ids with colons: also every ctx.send/ctx.spawn message
    "relay/r1:0:3",
])
def test_sleep_resumes_after_a_restart_whatever_the_msg_id(
        memory: Journals, msg_id: str) -> None:
    """Regression: the step of a timer used to be parsed back out of its id by counting
    colons, which broke for message ids that contain colons."""
    async def scenario() -> None:
        rt = make_runtime(memory.open(), None, Steps)
        await rt.start()
        await rt.send("steps/s1", "sleep_then_wait", {"seconds": 0.05}, msg_id=msg_id)
        await ag.wait_for_event_op(rt.journal, "steps/s1", "wait.start")
        await rt.stop()
        async with make_runtime(memory.open(), None, Steps) as rt2:
            task = asyncio.create_task(rt2.ask("steps/s1", "sleep_then_wait", {"seconds": 0.05},
                                               msg_id=msg_id, timeout=3))
            await rt2.signal("steps/s1", "go", "done")
            assert await task == "done"

    drive(memory, scenario)


# -- circuit breaker ------------------------------------------------------------------------------


def test_circuit_breaker_fails_fast_then_half_opens_and_closes(
        journals: Journals, executor: RecordingExecutor) -> None:
    executor.add("shaky", ag.flaky(2), reuse_instances=True)
    once = {"activity": "shaky", "retry": {"max_attempts": 1}}

    async def scenario() -> None:
        journal = journals.open()
        breakers = Breakers(fail_max=2, reset_timeout=0.3)
        async with make_runtime(journal, executor, Steps, breakers=breakers) as rt:
            with pytest.raises(errors.ActivityFailed) as first:
                await rt.ask("steps/b1", "call", once)
            assert first.value.cause_code == "guest_error"
            with pytest.raises(errors.ActivityFailed):  # the failure that trips it
                await rt.ask("steps/b1", "call", once)
            assert executor.count("shaky") == 2
            assert breakers.get("shaky").current_state == "open"

            with Stopwatch() as watch, pytest.raises(errors.ActivityFailed) as fast:
                await rt.ask("steps/b1", "call", once)
            assert fast.value.cause_code == "circuit_open"
            assert executor.count("shaky") == 2  # the guest did not run
            assert watch.elapsed < 0.25
            last = (await journal.read("steps/b1"))[-1]
            assert last["kind"] == "failed"
            assert [(e["op"], e["error"]["code"]) for e in last["events"]] == [
                ("activity.failed", "circuit_open")]

            await ag.pause(0.35)  # reset_timeout: the next call is the half-open trial
            assert await rt.ask("steps/b1", "call", once) == {"count": 3}
            assert breakers.get("shaky").current_state == "closed"
            assert await rt.ask("steps/b1", "call", once) == {"count": 4}
            assert executor.count("shaky") == 4

    drive(journals, scenario)


def test_the_call_that_trips_the_breaker_names_the_error_that_tripped_it() -> None:
    breakers = Breakers(fail_max=1, reset_timeout=30)

    def fail() -> None:
        raise errors.GuestError("upstream exploded", retryable=True)

    with pytest.raises(errors.CircuitOpen) as info:
        breakers.call("act", fail)
    assert "upstream exploded" in info.value.message


# -- saga -----------------------------------------------------------------------------------------


def test_saga_compensates_in_reverse_order_with_their_own_keys(
        journals: Journals, executor: RecordingExecutor) -> None:
    for name in ("book-a", "book-b", "cancel-a", "cancel-b"):
        executor.add(name, ag.key_reporter())
    executor.add("book-c", ag.failing("no seats", retryable=False))

    async def scenario() -> None:
        journal = journals.open()
        async with make_runtime(journal, executor, Trip) as rt:
            with pytest.raises(errors.ActivityFailed) as info:
                await rt.ask("trip/t1", "book", msg_id="m0")
            assert info.value.activity == "book-c" and "no seats" in info.value.message
            assert await rt.state_of("trip/t1") == {}
        assert [name for name, _, _ in executor.calls] == [
            "book-a", "book-b", "book-c", "cancel-b", "cancel-a"]
        keys = dict((name, key) for name, key, _ in executor.calls)
        assert keys == {"book-a": "trip/t1:m0:0", "book-b": "trip/t1:m0:1",
                        "book-c": "trip/t1:m0:2", "cancel-b": "trip/t1:m0:comp:3",
                        "cancel-a": "trip/t1:m0:comp:4"}
        events = events_of(await journal.read("trip/t1"))
        comps = [e for e in events if e["op"] == "compensation.done"]
        assert [(e["name"], e["result"]["value"]) for e in comps] == [
            ("cancel-b", "trip/t1:m0:comp:3"), ("cancel-a", "trip/t1:m0:comp:4")]
        booked = {e["result"]["value"] for e in events if e["op"] == "activity.done"}
        assert booked == {"trip/t1:m0:0", "trip/t1:m0:1"}
        assert all(":comp:" in e["result"]["value"] for e in comps)
        assert not booked & {e["result"]["value"] for e in comps}
        assert (await journal.read("trip/t1"))[-1]["kind"] == "failed"

    drive(journals, scenario)


# -- invariants -----------------------------------------------------------------------------------


def test_invariants_refuse_a_step_and_leave_state_unchanged(journals: Journals) -> None:
    def deposit_limit(actor: str, before: Any, after: Any, events: list[Any]) -> Any:
        return after["balance"] - before["balance"] <= 1000 or "deposits are capped at 1000"

    async def scenario() -> None:
        journal = journals.open()
        rt = make_runtime(journal, None, Wallet)
        rt.add_invariant("deposit_limit", deposit_limit)
        async with rt:
            assert await rt.ask("wallet/w1", "deposit", {"amount": 100}) == 100
            with pytest.raises(errors.InvariantViolated) as actor_inv:
                await rt.ask("wallet/w1", "withdraw", {"amount": 500})
            assert actor_inv.value.invariant == "never_negative"
            assert "balance would be -400" in actor_inv.value.message
            assert await rt.state_of("wallet/w1") == {"balance": 100, "history": [100]}
            commits = await journal.read("wallet/w1")
            last = commits[-1]
            assert last["kind"] == "rejected"
            assert current_state(commits) == {"balance": 100, "history": [100]}
            assert last["error"]["type"] == "InvariantViolated"

            with pytest.raises(errors.InvariantViolated) as platform_inv:
                await rt.ask("wallet/w1", "deposit", {"amount": 5000})
            assert platform_inv.value.invariant == "deposit_limit"
            assert platform_inv.value.actor == "wallet/w1"
            assert "capped at 1000" in platform_inv.value.message
            assert (await journal.read("wallet/w1"))[-1]["kind"] == "rejected"

            assert await rt.ask("wallet/w1", "deposit", {"amount": 50}) == 150
            assert await rt.ask("wallet/w1", "balance") == {"balance": 150,
                                                            "history": [100, 50]}
            kinds = [c["kind"] for c in await journal.read("wallet/w1")]
            assert kinds == ["completed", "rejected", "rejected", "completed", "completed"]

    drive(journals, scenario)


def test_an_invariant_violated_mid_run_stops_the_next_effect(
        journals: Journals, executor: RecordingExecutor) -> None:
    executor.add("pay", guests.echo())

    async def scenario() -> None:
        journal = journals.open()
        async with make_runtime(journal, executor, Wallet) as rt:
            await rt.ask("wallet/w1", "deposit", {"amount": 30})
            assert await rt.ask("wallet/w1", "withdraw_and_pay",
                                {"amount": 10, "activity": "pay"}, msg_id="m1") == {"amount": 10}
            with pytest.raises(errors.InvariantViolated) as info:
                await rt.ask("wallet/w1", "withdraw_and_pay", {"amount": 50, "activity": "pay"},
                             msg_id="m2")
            assert info.value.invariant == "never_negative"
            assert executor.calls == [("pay", "wallet/w1:m1:0", None)]  # not paid the 2nd time
            assert await rt.state_of("wallet/w1") == {"balance": 20, "history": [30, -10]}
            last = (await journal.read("wallet/w1"))[-1]
            assert (last["kind"], last["events"]) == ("rejected", [])
            assert await rt.ask("wallet/w1", "balance") == {"balance": 20, "history": [30, -10]}

    drive(journals, scenario)


# -- per-call timeout -----------------------------------------------------------------------------


def test_call_timeout_shortens_the_guest_deadline(journals: Journals,
                                                  executor: RecordingExecutor) -> None:
    executor.add("spin", guests.infinite_loop(), limits={"timeout_ms": 5000})

    async def scenario() -> None:
        journal = journals.open()
        async with make_runtime(journal, executor, Steps) as rt:
            with Stopwatch() as watch, pytest.raises(errors.ActivityFailed) as info:
                await rt.ask("steps/t1", "call", {"activity": "spin", "input": {"spin": 1},
                                                  "timeout_ms": 100,
                                                  "retry": {"max_attempts": 1}}, msg_id="m0")
        assert info.value.cause_code == "timeout"
        assert watch.elapsed < 2.0
        assert executor.calls == [("spin", "steps/t1:m0:0", 100)]
        events = events_of(await journal.read("steps/t1"))
        assert [(e["op"], e["error"]["code"]) for e in events] == [("activity.failed", "timeout")]

    drive(journals, scenario)


# -- this module is what the lint sees ------------------------------------------------------------


def test_this_module_is_replay_safe() -> None:
    from runtime.actors.lint import check_file

    assert check_file(__file__) == []
