"""One live actor: its state, its current run, and the commits that make both durable.

A *run* is one handler invocation for one inbox message. Its steps are journaled as
events; the state is written (whole) by the commit that completes the run. Commits of
an unfinished run carry its events and the message that started it, so after a crash
the activation rebuilds the state from the last completing commit and re-runs the
handler against the recorded events (replay), continuing live where they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic_core import from_json, to_json

from runtime import errors
from runtime.actors.actor import Actor, ActorRef
from runtime.actors.context import _TIMED_OUT, ActorContext, error_record
from runtime.journal.store import Commit, Envelope

if TYPE_CHECKING:
    from runtime.actors.runtime import ActorRuntime

log = logging.getLogger("loom.actors")


@dataclass
class Wait:
    step: Any
    op: str
    event: str | None
    timer: str | None
    future: asyncio.Future[Any]


@dataclass
class Run:
    msg: Envelope
    start_seq: int
    ts: float
    recorded: dict[Any, list[dict[str, Any]]] = field(default_factory=dict)
    replay_until: int = 0
    announced: bool = False
    step: int = 0
    pending: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    outbox: list[Envelope] = field(default_factory=list)
    waits: list[Wait] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    before: Any = None
    inflight: int = 0

    @property
    def parked(self) -> bool:
        """Only waiting (timer, event, reply) with nothing running: safe to drop from memory;
        the journal has everything and the next delivery replays the run."""
        return bool(self.waits) and self.inflight == 0 and not self.pending and not self.outbox

    @property
    def msg_id(self) -> str:
        return str(self.msg["id"])

    def add_event(self, record: dict[str, Any]) -> None:
        self.pending.append(record)
        self.events.append(record)


def _json_copy(value: Any) -> Any:
    return from_json(to_json(value))


class Activation:
    def __init__(self, runtime: ActorRuntime, ref: ActorRef, cls: type[Actor]) -> None:
        self.runtime = runtime
        self.ref = ref
        self.key = str(ref)
        self.actor = cls()
        self.seq = -1
        self.committed_state: Any = None
        self.run: Run | None = None
        self.pump_lock = asyncio.Lock()
        self.commit_lock = asyncio.Lock()
        self.last_used = time.monotonic()
        self.broken: errors.LoomError | None = None
        self.stale = False

    # -- loading and replay ----------------------------------------------------------------
    async def load(self) -> None:
        # Decoding a long tail allocates many objects at once; a cyclic GC pass in the
        # middle would double the activation time and find nothing to collect.
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            tail = await self.runtime.journal.read_tail(self.key)
        finally:
            if gc_was_on:
                gc.enable()
        start = 0
        if tail and "state" in tail[0]:
            self.actor.load_state(tail[0]["state"])
            self.committed_state = _json_copy(tail[0]["state"])
            start = 1
        else:
            self.actor.state = self.actor.initial_state()
            self.committed_state = _json_copy(self.actor.dump_state())
        if tail:
            self.seq = tail[-1]["seq"]
            last = tail[-1]
            # Only the newest commit can have been cut off before its dispatch.
            await self.runtime.dispatch(last.get("outbox", []))
            await self.runtime.journal.consume(self.key, last.get("consumed", []),
                                               self.runtime.clock())
        in_flight = [c for c in tail[start:] if c.get("run")]
        if in_flight:
            self._resume(in_flight)

    def _resume(self, commits: list[Commit]) -> None:
        first = commits[0]
        message = first.get("message")
        if message is None:
            raise errors.LoomError(f"journal of {self.key} at seq {first['seq']}: an "
                                   "unfinished run lacks its starting message")
        run = Run(msg=message, start_seq=first["seq"], ts=first["run"]["ts"], announced=True)
        for c in commits:
            for event in c.get("events", []):
                run.recorded.setdefault(event["step"], []).append(event)
                run.events.append(event)
        run.replay_until = max((k for k in run.recorded if isinstance(k, int)), default=-1) + 1
        self._start(run)

    # -- running ---------------------------------------------------------------------------
    def _start(self, run: Run) -> None:
        self.run = run
        run.task = asyncio.get_running_loop().create_task(self._execute(run))

    async def _execute(self, run: Run) -> None:
        rt = self.runtime
        before = run.before = _json_copy(self.committed_state)
        ctx = ActorContext(self, run)
        method_name = self.actor.handlers.get(str(run.msg["handler"]))
        result: Any = None
        failure: errors.LoomError | None = None
        try:
            if method_name is None:
                raise errors.HandlerFailed(
                    f"{self.key} has no handler {run.msg['handler']!r}",
                    error_type="UnknownHandler")
            result = await getattr(self.actor, method_name)(ctx, run.msg.get("payload"))
            if run.step < run.replay_until:
                raise errors.NonDeterminismError(
                    actor=self.key, seq=run.start_seq, step=run.step,
                    recorded=str(run.recorded[run.step][0]["op"]), requested="return")
            to_json(result)  # a handler must return JSON: fail here, not in the commit
        except asyncio.CancelledError:
            return
        except errors.NonDeterminismError as exc:
            self._break(run, exc)
            return
        except errors.JournalConflict as exc:
            self._fence(exc)
            return
        except Exception as exc:  # the handler failed: discard its state changes
            failure = exc if isinstance(exc, errors.LoomError) else errors.HandlerFailed(
                f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)
        try:
            await self._complete(run, before, result, failure)
        except errors.JournalConflict as exc:
            self._fence(exc)
            return
        except Exception as exc:  # pragma: no cover - storage failure: retry by reloading
            log.exception("commit of %s failed", self.key)
            self._fence(exc)
            return
        self.run = None
        rt.notify(self.key)

    async def _complete(self, run: Run, before: Any, result: Any,
                        failure: errors.LoomError | None) -> None:
        rt = self.runtime
        after = None if failure else _json_copy(self.actor.dump_state())
        kind = "failed" if failure else "completed"
        if isinstance(failure, errors.InvariantViolated):
            kind = "rejected"
        if failure is None:
            violation = rt.check_invariants(self, before, after, run.events)
            if violation is not None:
                failure, kind, after = violation, "rejected", None
        if failure is not None:
            self.actor.load_state(_json_copy(before))
        state = after if after is not None else before
        extra: dict[str, Any] = {"kind": kind, "state": state}
        if failure is None:
            extra["result"] = result
        else:
            kind_name = (failure.error_type if isinstance(failure, errors.HandlerFailed)
                         else type(failure).__name__)
            extra["error"] = {**error_record(failure), "type": kind_name}
        reply_to = run.msg.get("reply_to")
        if reply_to:
            payload = {"result": result} if failure is None else {"error": extra["error"]}
            run.outbox.append(rt.envelope(ActorRef.parse(reply_to), None, payload,
                                          msg_id=f"reply:{run.msg_id}", kind="event",
                                          name=f"reply:{run.msg_id}", sender=self.key))
        # The asker is answered as soon as the outcome is durable; dispatch and consume
        # follow before this actor starts its next run.
        await self.commit(run, consumed=[run.msg_id], extra=extra,
                          durable=lambda: rt.resolve(run.msg_id, result, failure))
        self.committed_state = state

    def _break(self, run: Run, exc: errors.LoomError) -> None:
        log.error("%s", exc)
        self.broken = exc
        self.run = None
        self.runtime.resolve(run.msg_id, None, exc)

    def _fence(self, exc: Exception) -> None:
        log.warning("%s: %s; dropping this activation", self.key, exc)
        self.stale = True
        self.run = None
        self.runtime.forget(self)

    # -- commits ---------------------------------------------------------------------------
    async def commit(self, run: Run, *, consumed: list[str] | None = None,
                     extra: dict[str, Any] | None = None,
                     durable: Callable[[], None] | None = None) -> None:
        rt = self.runtime
        async with self.commit_lock:
            # Take what is outstanding now: concurrent branches may add more while we wait.
            events, run.pending = run.pending, []
            outbox, run.outbox = run.outbox, []
            doc: Commit = {"actor": self.key, "seq": self.seq + 1, "ts": rt.clock(),
                           "run": {"msg": run.msg_id, "ts": run.ts, "start": run.start_seq},
                           "events": events, "outbox": outbox, "consumed": consumed or []}
            if not run.announced:
                doc["message"] = run.msg
            if extra:
                doc.update(extra)
            rt.hooks.fire("before_commit", self.key)
            try:
                await rt.journal.append(doc)
            except BaseException:
                run.pending[:0], run.outbox[:0] = events, outbox
                raise
            self.seq += 1
            run.announced = True
            if durable is not None:
                durable()
            rt.hooks.fire("after_commit", self.key)
            await rt.dispatch(outbox)
            # Consumed last: an unconsumed entry marks unfinished business (a dispatch cut
            # off by a crash), so recovery finds this actor and re-dispatches.
            if consumed:
                await rt.journal.consume(self.key, consumed, rt.clock())

    async def flush(self, run: Run) -> None:
        """Commit outstanding events and outbox (before a new effect or a wait).

        Invariants gate this point too: a state the run reached must pass them before the
        run may cause another effect; a violation writes nothing and raises in the handler.
        """
        if self.actor.invariants or self.runtime.invariants:
            current = _json_copy(self.actor.dump_state())
            violation = self.runtime.check_invariants(self, run.before, current, run.events)
            if violation is not None:
                raise violation
        if run.pending or run.outbox:
            await self.commit(run)

    async def start_timer(self, run: Run, timer: str, fire_at: float) -> None:
        run.outbox.append(self.runtime.envelope(self.ref, None, None, msg_id=timer, kind="timer",
                                                name=timer, deliver_at=fire_at))
        await self.flush(run)

    async def wait_timer(self, run: Run, timer: str, step: Any) -> None:
        fut = asyncio.get_running_loop().create_future()
        run.waits.append(Wait(step=step, op="timer.fired", event=None, timer=timer, future=fut))
        self.runtime.notify(self.key)
        await fut

    async def wait_event(self, run: Run, step: Any, event: str, timer: str | None,
                         op: str = "wait.event") -> Any:
        fut = asyncio.get_running_loop().create_future()
        run.waits.append(Wait(step=step, op=op, event=event, timer=timer, future=fut))
        self.runtime.notify(self.key)
        return await fut

    # -- the inbox -------------------------------------------------------------------------
    async def pump(self) -> None:
        """Deliver due timers and awaited events to the run; start the next run if idle."""
        if self.broken is not None or self.stale:
            return
        async with self.pump_lock:
            rt = self.runtime
            calls = 1 if self.run is None else 0
            for env in await rt.journal.inbox(self.key, rt.clock(), calls=calls):
                run = self.run
                kind = env.get("kind", "call")
                if kind == "call":
                    if run is None:
                        self.last_used = time.monotonic()
                        self._start(Run(msg=env, start_seq=self.seq + 1, ts=rt.clock()))
                    continue
                if run is None or run.task is None or run.task.done():
                    if kind == "timer":  # a timer of a finished run
                        await rt.journal.consume(self.key, [env["id"]], rt.clock())
                    continue
                await self._deliver(run, env)

    async def _deliver(self, run: Run, env: Envelope) -> None:
        kind, name = env.get("kind"), env.get("name")
        self.last_used = time.monotonic()
        for wait in list(run.waits):
            if wait.future.done():
                run.waits.remove(wait)
                continue
            if kind == "timer" and wait.timer == name:
                run.waits.remove(wait)
                if wait.op == "timer.fired":
                    run.add_event({"step": wait.step, "op": "timer.fired",
                                   "name": "timer", "digest": "", "timer": name})
                    await self.commit(run, consumed=[env["id"]])
                    wait.future.set_result(None)
                else:
                    run.add_event({"step": wait.step, "op": "wait.timeout",
                                   "name": wait.event or "", "digest": ""})
                    await self.commit(run, consumed=[env["id"]])
                    wait.future.set_result(_TIMED_OUT)
                return
            if kind == "event" and wait.event == name and wait.op != "timer.fired":
                run.waits.remove(wait)
                run.add_event({"step": wait.step, "op": wait.op, "name": name or "",
                               "digest": "", "payload": env.get("payload"), "msg": env["id"]})
                await self.commit(run, consumed=[env["id"]])
                wait.future.set_result(env.get("payload"))
                return
        if kind == "timer" and not str(name).startswith(f"timer:{run.msg_id}:"):
            await self.runtime.journal.consume(self.key, [env["id"]], self.runtime.clock())

    async def deactivate(self) -> None:
        run = self.run
        if run is not None and run.task is not None and not run.task.done():
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.task
        self.run = None
