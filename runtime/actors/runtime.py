"""The in-process actor runtime: activation, scheduling, outbox dispatch, timers, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from runtime import errors
from runtime.actors.activation import Activation
from runtime.actors.actor import Actor, ActorRef
from runtime.actors.lane import Lane
from runtime.actors.resilience import Breakers
from runtime.executor import Executor
from runtime.journal.store import Envelope, JournalStore
from schemas.manifest import RetryPolicy

log = logging.getLogger("loom.actors")
Invariant = Callable[[str, Any, Any, list[dict[str, Any]]], "bool | str | None"]


def _reply_of(commit: dict[str, Any]) -> Any:
    """The handler's result from its completing commit, or the error it ended with."""
    if "error" not in commit:
        return commit.get("result")
    err = commit["error"]
    if err.get("code") == errors.ErrorCode.INVARIANT_VIOLATED.value:
        raise errors.InvariantViolated("(recorded)", err.get("message", ""),
                                       actor=str(commit.get("actor")))
    raise errors.HandlerFailed(err.get("message", "handler failed"),
                               error_type=err.get("type", "Error"), error_code=err.get("code"))


class Hooks:
    """Named points in the commit path where tests inject faults.

    `LOOM_CRASH_AT=<point>` (and optionally `LOOM_CRASH_AFTER=<n>`, default 1) makes the
    process SIGKILL itself the n-th time the point is reached. Points: before_activity,
    after_activity (ran, not yet committed), before_commit, after_commit (committed, not
    yet dispatched).
    """

    POINTS = ("before_activity", "after_activity", "before_commit", "after_commit")

    def __init__(self) -> None:
        self._handlers: dict[str, list[Callable[[str], None]]] = {}

    def on(self, point: str, fn: Callable[[str], None]) -> None:
        if point not in self.POINTS:
            raise ValueError(f"unknown hook point {point!r}; one of {', '.join(self.POINTS)}")
        self._handlers.setdefault(point, []).append(fn)

    def fire(self, point: str, actor: str) -> None:
        for fn in self._handlers.get(point, ()):
            fn(actor)

    @classmethod
    def from_env(cls) -> Hooks:
        hooks = cls()
        point = os.environ.get("LOOM_CRASH_AT")
        if point:
            remaining = [int(os.environ.get("LOOM_CRASH_AFTER", "1"))]

            def crash(_: str) -> None:
                remaining[0] -= 1
                if remaining[0] == 0:
                    os.kill(os.getpid(), signal.SIGKILL)

            hooks.on(point, crash)
        return hooks


class ActorRuntime:
    """Runs registered actors against a journal, calling activities through an executor.

    Use as `async with ActorRuntime(journal, executor) as rt:`; `start()` recovers every
    actor with pending work (replaying unfinished runs) and starts the timer loop.
    """

    def __init__(self, journal: JournalStore, executor: Executor | None = None, *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 breakers: Breakers | None = None, hooks: Hooks | None = None,
                 max_activations: int = 10_000, idle_timeout_s: float = 300.0,
                 durable_retry_threshold_s: float = 5.0, poll_interval_s: float = 0.05,
                 lint: bool = True, activity_threads: int = 8) -> None:
        self.journal = journal
        self.executor = executor
        self.clock = clock
        self.sleep = sleep
        self.breakers = breakers or Breakers()
        self.hooks = hooks or Hooks.from_env()
        self.max_activations = max_activations
        self.idle_timeout_s = idle_timeout_s
        self.durable_retry_threshold_s = durable_retry_threshold_s
        self.poll_interval_s = poll_interval_s
        self.lint = lint
        self.types: dict[str, type[Actor]] = {}
        self.invariants: dict[str, Invariant] = {}
        self.activations: OrderedDict[str, Activation] = OrderedDict()
        self._pumping: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._parked: set[str] = set()
        self._waiters: dict[str, asyncio.Future[Any]] = {}
        self._wake = asyncio.Event()
        self._timer_task: asyncio.Task[None] | None = None
        self._lane = Lane(activity_threads, name="loom-activity")
        self._closing = False

    # -- registration ----------------------------------------------------------------------
    def register(self, cls: type[Actor]) -> type[Actor]:
        """Register an actor class (usable as a decorator). Lints its module when enabled."""
        if self.lint:
            from runtime.actors.lint import check_class
            check_class(cls)
        self.types[cls.type_name] = cls
        return cls

    def add_invariant(self, name: str, check: Invariant) -> None:
        """A platform invariant `check(actor_key, before, after, events)` for every commit."""
        self.invariants[name] = check

    # -- messages --------------------------------------------------------------------------
    def envelope(self, target: ActorRef, handler: str | None, payload: Any, *,
                 msg_id: str | None = None, kind: str = "call", name: str | None = None,
                 reply_to: str | None = None, sender: str | None = None,
                 deliver_at: float = 0.0) -> Envelope:
        env: Envelope = {"id": msg_id or str(uuid.uuid4()), "target": str(target), "kind": kind,
                         "payload": payload, "deliver_at": deliver_at}
        if handler is not None:
            env["handler"] = handler
        if name is not None:
            env["name"] = name
        if reply_to is not None:
            env["reply_to"] = reply_to
        if sender is not None:
            env["sender"] = sender
        return env

    async def send(self, target: ActorRef | str, handler: str, payload: Any = None, *,
                   msg_id: str | None = None) -> str:
        """Deliver `handler(payload)` to an actor, at least once; a repeated msg_id is ignored."""
        ref = target if isinstance(target, ActorRef) else ActorRef.parse(target)
        env = self.envelope(ref, handler, payload, msg_id=msg_id)
        await self.dispatch([env])
        return str(env["id"])

    async def ask(self, target: ActorRef | str, handler: str, payload: Any = None, *,
                  msg_id: str | None = None, timeout: float | None = None) -> Any:
        """Send and wait for the handler's result (raises what the handler raised)."""
        msg_id = msg_id or str(uuid.uuid4())
        fut = asyncio.get_running_loop().create_future()
        self._waiters[msg_id] = fut
        ref = target if isinstance(target, ActorRef) else ActorRef.parse(target)
        try:
            env = self.envelope(ref, handler, payload, msg_id=msg_id)
            if not await self.journal.enqueue(env):  # seen before: it may be done already
                done = await self.outcome(ref, msg_id)
                if done is not None:
                    return _reply_of(done)
            self.notify(str(ref))
            return await asyncio.wait_for(fut, timeout)
        finally:
            self._waiters.pop(msg_id, None)

    async def signal(self, target: ActorRef | str, event: str, payload: Any = None, *,
                     msg_id: str | None = None) -> str:
        """Raise event `event` at an actor (for `ctx.wait_for_event`)."""
        ref = target if isinstance(target, ActorRef) else ActorRef.parse(target)
        env = self.envelope(ref, None, payload, msg_id=msg_id, kind="event", name=event)
        await self.dispatch([env])
        return str(env["id"])

    async def dispatch(self, envelopes: list[Envelope]) -> None:
        """Put messages into their targets' inboxes (idempotent by id) and wake them."""
        now = self.clock()
        for env in envelopes:
            await self.journal.enqueue(env)
            if env.get("deliver_at", 0.0) <= now:
                self.notify(env["target"])
            else:
                self._wake.set()

    def resolve(self, msg_id: str, result: Any, failure: BaseException | None) -> None:
        fut = self._waiters.get(msg_id)
        if fut is None or fut.done():
            return
        if failure is None:
            fut.set_result(result)
        else:
            fut.set_exception(failure)

    # -- scheduling ------------------------------------------------------------------------
    def notify(self, key: str) -> None:
        if self._closing:
            return
        if key in self._pumping:
            self._dirty.add(key)
            return
        self._pumping[key] = asyncio.get_running_loop().create_task(self._pump(key))

    async def _pump(self, key: str) -> None:
        try:
            while True:
                self._dirty.discard(key)
                activation = await self._activation(key)
                if activation is not None:
                    await activation.pump()
                if key not in self._dirty:
                    break
        except Exception:
            log.exception("pumping %s failed", key)
        finally:
            self._pumping.pop(key, None)

    async def _activation(self, key: str) -> Activation | None:
        found = self.activations.get(key)
        if found is not None:
            self.activations.move_to_end(key)
            return found
        ref = ActorRef.parse(key)
        cls = self.types.get(ref.type)
        if cls is None:
            log.warning("no actor type %r registered; %s keeps its messages", ref.type, key)
            return None
        activation = Activation(self, ref, cls)
        self.activations[key] = activation
        self._parked.discard(key)
        await activation.load()
        await self._evict()
        return activation

    def forget(self, activation: Activation) -> None:
        if self.activations.get(activation.key) is activation:
            del self.activations[activation.key]

    def _evictable(self, key: str, act: Activation) -> bool:
        """Idle, or parked on a durable wait (a run waiting for days costs no memory)."""
        return key not in self._pumping and (act.run is None or act.run.parked)

    async def _drop(self, key: str, act: Activation) -> None:
        if self.activations.get(key) is act:
            del self.activations[key]
        if act.run is not None:
            self._parked.add(key)  # woken by its timer or event, not by its own call
        await act.deactivate()

    async def _evict(self) -> None:
        while len(self.activations) > self.max_activations:
            victim = next(((k, a) for k, a in self.activations.items()
                           if self._evictable(k, a)), None)
            if victim is None:
                return
            await self._drop(*victim)

    async def _sweep_idle(self) -> None:
        cutoff = time.monotonic() - self.idle_timeout_s
        for key, act in list(self.activations.items()):
            if act.last_used < cutoff and self._evictable(key, act):
                await self._drop(key, act)

    async def _timer_loop(self) -> None:
        while not self._closing:
            try:
                now = self.clock()
                for key in await self.journal.due_actors(now, calls=False):
                    self.notify(key)  # a timer fired or an event arrived
                for key in await self.journal.due_actors(now):
                    # new calls (e.g. sent by another process); an unfinished run keeps its
                    # own call unconsumed, so skip actors that are busy or parked
                    act = self.activations.get(key)
                    if key not in self._parked and (act is None or act.run is None):
                        self.notify(key)
                await self._sweep_idle()
                due = await self.journal.next_due(self.clock())
                delay = self.poll_interval_s
                if due is not None:
                    delay = max(0.0, min(delay, due - self.clock()))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("timer loop")
                await asyncio.sleep(self.poll_interval_s)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Recover actors with pending work and start delivering timers."""
        # An unfinished run keeps its message in the inbox until it completes, so every
        # actor with work to resume (or to start) shows up here.
        for key in await self.journal.due_actors(self.clock(), limit=1_000_000):
            self.notify(key)
        self._timer_task = asyncio.get_running_loop().create_task(self._timer_loop())

    async def stop(self) -> None:
        self._closing = True
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
        for task in list(self._pumping.values()):
            task.cancel()
        for act in list(self.activations.values()):
            await act.deactivate()
        self.activations.clear()
        self._lane.close()

    async def __aenter__(self) -> ActorRuntime:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # -- activities ------------------------------------------------------------------------
    async def run_activity(self, name: str, input: Any, *, version: str | None,
                           idempotency_key: str, timeout_ms: int | None) -> Any:
        if self.executor is None:
            raise errors.NotFound(f"no executor configured to run activity {name!r}")
        call = partial(self.executor.invoke_sync, name, input, version=version,
                       idempotency_key=idempotency_key, timeout_ms=timeout_ms)
        return await self._lane.submit(partial(self.breakers.call, name, call))

    async def retry_policy_for(self, name: str, version: str | None) -> RetryPolicy:
        if self.executor is None:
            return RetryPolicy(max_attempts=1)
        try:
            return self.executor.registry.get(name, version).retry
        except errors.NotFound:
            return RetryPolicy(max_attempts=1)

    # -- invariants ------------------------------------------------------------------------
    def check_invariants(self, activation: Activation, before: Any, after: Any,
                         events: list[dict[str, Any]]) -> errors.InvariantViolated | None:
        checks: list[tuple[str, Callable[[], Any]]] = [
            (name, partial(getattr(activation.actor, attr), before, after, events))
            for name, attr in activation.actor.invariants.items()]
        checks += [(name, partial(fn, activation.key, before, after, events))
                   for name, fn in self.invariants.items()]
        for name, check in checks:
            try:
                verdict = check()
            except Exception as exc:
                verdict = f"the check raised {type(exc).__name__}: {exc}"
            if verdict is False or isinstance(verdict, str):
                message = verdict if isinstance(verdict, str) else "returned False"
                return errors.InvariantViolated(name, message, actor=activation.key)
        return None

    # -- reading ---------------------------------------------------------------------------
    async def state_of(self, target: ActorRef | str) -> Any:
        """The last committed state of an actor (None if it never committed)."""
        tail = await self.journal.read_tail(str(target))
        return tail[0]["state"] if tail and "state" in tail[0] else None

    async def outcome(self, target: ActorRef | str, msg_id: str) -> dict[str, Any] | None:
        """The completing commit of message `msg_id`, if it has completed."""
        for commit in reversed(await self.journal.read(str(target))):
            if commit.get("run", {}).get("msg") == msg_id and "state" in commit:
                return commit
        return None
