"""One live activation of an actor: loads and replays its journal, runs one message at a
time, commits every step, and delivers timers and events to the run that waits for them.

It talks to its host only through `runtime.actors.host.Host`. Every journal failure ends
the activation (`ActivationLost`): a storage error is never a handler outcome, no wait is
ever left half-delivered, and the host reloads the actor by replay after a backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import from_json, to_json

from runtime import errors
from runtime.actors import delta
from runtime.actors.actor import Actor, ActorRef
from runtime.actors.context import _TIMED_OUT, ActorContext, error_record
from runtime.actors.host import MAX_PAYLOAD_DEPTH, ActivationLost, Host, RunPinned
from runtime.journal.store import Commit, Envelope
from schemas.fast_check import nests_deeper

log = logging.getLogger("loom.actors")


@dataclass
class Wait:
    step: Any
    op: str
    event: str | None
    timer: str | None
    future: asyncio.Future[Any]
    key: str | None = None
    cancellable: bool = True  # not a compensation's retry backoff: a cancel must not stop it


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
    outbox: list[Envelope] = field(default_factory=list)  # leaves with the next commit
    held: list[Envelope] = field(default_factory=list)  # leaves only if the run completes
    waits: list[Wait] = field(default_factory=list)
    visited: set[Any] = field(default_factory=set)  # branch steps taken (main: < step)
    counters: dict[str, int] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None
    before: Any = None
    inflight: int = 0
    committing: int = 0
    cancelled: str | None = None  # the reason, once a cancel was recorded for this run
    cancel_at: dict[str, int] = field(default_factory=dict)  # first cancelled step per branch
    resumed: bool = False  # rebuilt from the journal: a step may have been cut off in flight
    version: str | None = None  # the code version the run started under
    finished: bool = False  # its completing commit has landed
    unwritten: Envelope | None = None  # its call, not yet in the inbox (take_unwritten)
    flushed_at: float | None = None  # when its last commit landed (None: none yet)

    @property
    def pin(self) -> str | None:
        """The version the schedule should pin the actor to while this run is in flight."""
        return None if self.finished else self.version
    _base: str | None = None

    @property
    def parked(self) -> bool:
        """Only waiting (timer, event, reply) with nothing running or being written: safe to
        drop from memory; the journal has everything and the next delivery replays it."""
        return (bool(self.waits) and self.inflight == 0 and self.committing == 0
                and not self.pending and not self.outbox)

    @property
    def msg_id(self) -> str:
        return str(self.msg["id"])

    @property
    def msg_n(self) -> int:
        return int(self.msg.get("n", 0))

    @property
    def base(self) -> str:
        if self._base is None:
            self._base = key_base(self.msg_id)
        return self._base

    def add_event(self, record: dict[str, Any]) -> None:
        self.pending.append(record)
        self.events.append(record)


class _GiveUp(BaseException):
    def __init__(self, error: errors.DeadLettered) -> None:
        super().__init__(error.message)
        self.error = error


def split_step(step: Any) -> tuple[str, int]:
    """(branch prefix, index) of a step: 7 -> ("", 7); "a/b/3" -> ("a/b/", 3)."""
    if isinstance(step, int):
        return "", step
    prefix, _, index = str(step).rpartition("/")
    return f"{prefix}/", int(index)


def cancel_point(run: Run) -> dict[str, int]:
    """Per branch prefix, the first step a cancel stops ("*": any other branch).

    Steps allocated before the cancel still run: one may be an activity in flight, whose
    effect must be recorded (and compensated), not orphaned. A run rebuilt from the journal
    cannot tell which step was in flight when its last process died, so in each branch the
    step after the recorded ones may still run once."""
    at: dict[str, int] = {"": run.step, **run.counters, "*": 1 if run.resumed else 0}
    if run.resumed:
        for step in run.recorded:
            prefix, index = split_step(step)
            at[prefix] = max(at.get(prefix, 0), index + 2)
        at[""] = max(at[""], 1)
    return at


def key_base(msg_id: str) -> str:
    """A message's identity inside idempotency keys and derived message ids: the id itself,
    or a hash of an id that is long or holds ':' (so keys stay short and unambiguous)."""
    if len(msg_id) <= 40 and ":" not in msg_id:
        return msg_id
    return hashlib.blake2b(msg_id.encode(), digest_size=10).hexdigest()


def _consumes_with_append(host: Host) -> bool:
    """Whether the journal's append consumes an outbox-free commit's entries (a journal
    wrapper that does not say so is assumed not to)."""
    return bool(getattr(host.journal, "consumes_with_append", False))


PROMOTE_TAIL = 1000  # events read at activation from which their objects skip the young GC
# Outcomes of contained activities (no effect outside the process) wait for the next commit
# (`Activation.flush_due`) up to this many steps, or this long since the run last committed.
CONTAINED_STEPS = 64
CONTAINED_S = 1.0


def _pause_gc() -> Callable[[bool], None]:
    """Switch the cyclic GC off; returns what switches it back on (if it was on): with
    True, after moving every object allocated meanwhile to the oldest generation."""
    if not gc.isenabled():
        return lambda promote: None
    frozen = gc.get_freeze_count() > 0  # the application froze objects: leave them be

    def resume(promote: bool) -> None:
        if promote and not frozen:  # O(1): the permanent generation merges into the oldest
            gc.freeze()
            gc.unfreeze()
        gc.enable()

    gc.disable()
    return resume


_HANDED_BACK: set[asyncio.Task[None]] = set()  # hand_back's writes, held until done


def _json_copy(value: Any) -> Any:
    return from_json(to_json(value))


class Activation:
    def __init__(self, host: Host, ref: ActorRef, cls: type[Actor], *,
                 monotonic: Callable[[], float] | None = None) -> None:
        self.host = host
        self.ref = ref
        self.key = str(ref)
        self.actor = cls()
        self.seq = -1
        self.committed_state: Any = None
        self.deltas = delta.enabled()  # completing commits carry deltas (runtime/actors/delta.py)
        self.snapshots = delta.SnapshotPolicy()
        self.run: Run | None = None
        self.pump_lock = asyncio.Lock()
        self.commit_lock = asyncio.Lock()
        self._monotonic = monotonic or asyncio.get_running_loop().time
        self.last_used = self._monotonic()
        self.broken: errors.LoomError | None = None
        self.stale = False
        self._reported = False
        self.seen_n = 0
        # every entry up to this number was read, calls included (seen_n runs ahead of it
        # when a read left calls out: a busy run's, a drain's, or one call more than taken)
        self.complete_n = 0
        self.read_at = 0.0  # when the inbox was last read (entries due later are unseen)
        self.more_calls = False  # that read found a call besides the one it started
        self.heard = True  # notified while a run was in progress: the inbox may have more
        self.epoch = 0
        self.stray: list[str] = []  # timers nobody waits for: consumed by the next commit
        self.counted = False  # its first live activity call counts a delivery of its message
        self.taken_over = False  # from a holder cut off: its first run counts at once

    # -- loading and replay ----------------------------------------------------------------
    async def load(self) -> None:
        """Rebuild state from the journal and resume an unfinished run. Raises ActivationLost
        when the journal cannot be read or written."""
        try:
            await self._load()
        except (ActivationLost, RunPinned):
            raise
        except Exception as exc:
            raise self._fail(exc) from exc

    async def _load(self) -> None:
        # Decoding a long tail and replaying it allocate many long-lived objects at once;
        # cyclic GC passes in the middle would double the activation time and find nothing
        # to collect. The GC is off from the read until the replay first waits (below).
        resume_gc = _pause_gc()
        tail: list[Commit] = []
        try:
            tail = await self.host.journal.read_tail(self.key)
            # the snapshot with the deltas after it applied, and the unfinished run's commits
            state, self.snapshots, unfinished = delta.load_tail(tail)
            if state is not None:
                self.actor.load_state(state)
                self.committed_state = _json_copy(state)
            else:
                self.actor.state = self.actor.initial_state()
                self.committed_state = _json_copy(self.actor.dump_state())
            if tail:
                self.seq = tail[-1]["seq"]
                last = tail[-1]
                # Only the newest commit can have been cut off before its dispatch, and then
                # what it consumes is still pending (it is consumed after the dispatch). Sent
                # again after that, a message whose tombstone compaction has since removed
                # would run a second time at its target.
                outbox, consumed = last.get("outbox", []), last.get("consumed", [])
                if outbox and (not consumed or await self._pending(consumed)):
                    await self.host.dispatch(outbox)
                await self.host.journal.consume(self.key, consumed, self.host.clock())
            for done in tail[:len(tail) - len(unfinished)]:  # runs completed: if an ask
                if "kind" in done:  # still waits here, its answer is in the journal
                    self.host.answer_from(self.key, done)
            in_flight = [c for c in unfinished if c.get("run")]
            if in_flight:
                self._resume(in_flight)
        finally:
            # The replay runs in the run task's first step: it ends before this callback.
            # What a long tail's replay allocated lives as long as the run: the young
            # generations would scan it all once more (~1 µs a step) to find nothing, so it
            # goes straight to the oldest. Rare (long tails only): a cycle that became
            # garbage meanwhile waits for the next full collection.
            long = sum(len(c.get("events") or ()) for c in tail) >= PROMOTE_TAIL
            asyncio.get_running_loop().call_soon(resume_gc, long)

    async def _pending(self, ids: list[str]) -> bool:
        """Whether any of these inbox entries is still unconsumed."""
        pending = await self.host.journal.inbox(self.key, float("inf"))
        wanted = set(ids)
        return any(env.get("id") in wanted for env in pending)

    def _resume(self, commits: list[Commit]) -> None:
        first = commits[0]
        message = first.get("message")
        if message is None:
            raise errors.LoomError(f"journal of {self.key} at seq {first['seq']}: an "
                                   "unfinished run lacks its starting message")
        version = first["run"].get("ver")
        versions = self.host.versions
        if version is not None and versions is not None and version not in versions:
            raise RunPinned(self.key, version)
        run = Run(msg=message, start_seq=first["seq"], ts=first["run"]["ts"], announced=True,
                  resumed=True, version=version)
        recorded, until = run.recorded, 0
        for c in commits:
            events = c.get("events")
            if not events:
                continue
            run.events.extend(events)
            for event in events:
                if event["op"] == "run.cancelled":
                    run.cancelled = str(event.get("reason") or "cancelled")
                    run.cancel_at = dict(event.get("at") or {})
                    continue
                step = event["step"]
                have = recorded.get(step)
                if have is None:
                    recorded[step] = [event]
                    if type(step) is int and step >= until:
                        until = step + 1
                else:
                    have.append(event)
        run.replay_until = until
        self._start(run)

    # -- running ---------------------------------------------------------------------------
    def _start(self, run: Run) -> None:
        self.run = run
        run.task = asyncio.get_running_loop().create_task(self._execute(run))

    async def _execute(self, run: Run) -> None:
        try:
            try:
                if self.taken_over and not run.resumed:
                    # The last holder was cut off in this run before it recorded anything,
                    # maybe by the handler's own code: count now, not at an activity call
                    # it may never reach. (A resumed run may just have been parked.)
                    run.before = _json_copy(self.committed_state)
                    await self.before_live_effect(run)
                self.taken_over = False
                await self._execute_run(run)
            except _GiveUp as give_up:  # no saga runs: the message is set aside as it is
                self.actor.load_state(_json_copy(run.before))
                await self._complete(run, run.before, None, give_up.error)
                self.run = None
                self._next()
        except ActivationLost as exc:
            self._lose(exc.cause)
        except asyncio.CancelledError:
            return

    async def before_live_effect(self, run: Run) -> None:
        """The first live activity call of this activation counts one delivery of its
        message at this journal position (or its first run starts with it, when the lease
        was taken over from a holder cut off before that run recorded anything: the holder
        may have been killed by the handler before any activity call). A run that keeps
        dying without progress (its count at the same seq passes the host's limit) is given
        up: dead-lettered."""
        if self.counted or not self.host.counts_delivery(self.key):
            self.counted = True
            return
        if run.unwritten is not None:  # the count names the message: written first
            await self.written(run)
        self.counted = True
        try:
            count = await self.host.journal.bump_delivery(self.key, run.msg_id, self.seq)
        except Exception as exc:
            raise self._fail(exc) from exc
        if count <= self.host.max_deliveries:
            return
        why = self.host.last_failure(self.key) or "the process running it stopped"
        err = errors.DeadLettered(
            f"{self.key}: message {run.msg_id} was taken up {count} times without progress "
            f"(last: {why}); moved to the dead-letter list")
        entry = {"actor": self.key, "msg": run.msg_id, "envelope": run.msg,
                 "deliveries": count, "error": {**error_record(err), "last": why},
                 "at": self.host.clock()}
        try:
            await self.host.journal.put_dead_letter(entry)
        except Exception as exc:
            raise self._fail(exc) from exc
        raise _GiveUp(err)

    async def _execute_run(self, run: Run) -> None:
        before = run.before = _json_copy(self.committed_state)
        ctx = ActorContext(self, run)
        method_name = self.actor.handlers.get(str(run.msg["handler"]))
        result: Any = None
        failure: errors.LoomError | None = None
        try:
            if method_name is None:
                valid = ", ".join(sorted(self.actor.handlers)) or "none"
                raise errors.HandlerFailed(
                    f"{self.key} has no handler {run.msg['handler']!r} (handlers: {valid})",
                    error_type="UnknownHandler")
            result = await getattr(self.actor, method_name)(ctx, run.msg.get("payload"))
            missed = [s for s in run.recorded
                      if not (s < run.step if isinstance(s, int) else s in run.visited)]
            if missed:
                first = missed[0]
                raise errors.NonDeterminismError(
                    actor=self.key, seq=run.start_seq, step=first,
                    recorded=str(run.recorded[first][0]["op"]), requested="return")
            data = to_json(result)  # a handler must return JSON: fail here, not in the commit
            # its reply is {"result": ...}; d levels take 2d bytes at least, so most results
            # need no walk
            if len(data) > 2 * (MAX_PAYLOAD_DEPTH - 1) and \
                    nests_deeper(result, MAX_PAYLOAD_DEPTH - 1):
                raise errors.HandlerFailed(
                    f"{self.key}: its result nests deeper than {MAX_PAYLOAD_DEPTH - 1} levels "
                    "(a reply could not carry it)", error_type="ResultTooDeep")
        except errors.NonDeterminismError as exc:
            self._break(run, exc)
            return
        except Exception as exc:  # the handler failed: discard its state changes
            failure = exc if isinstance(exc, errors.LoomError) else errors.HandlerFailed(
                f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)
        await self._complete(run, before, result, failure)
        self.run = None
        self._next()

    def _next(self) -> None:
        """After a run: read the inbox again only if a call may be waiting (the last read
        saw one more, or a notification came during the run); otherwise nothing arrived
        since that read, and only the schedule needs settling (as of that read)."""
        if self.more_calls or self.heard:
            self.host.notify(self.key)
        else:
            self.host.settle_later(self.key, self.read_at, self.complete_n, False)

    async def _complete(self, run: Run, before: Any, result: Any,
                        failure: errors.LoomError | None) -> None:
        host = self.host
        try:
            after = None if failure else _json_copy(self.actor.dump_state())
        except (ValueError, RecursionError) as exc:  # a state the journal cannot hold
            failure, after = errors.HandlerFailed(
                f"{self.key}: its state cannot be stored ({type(exc).__name__}: {exc})",
                error_type=type(exc).__name__), None
        kind = "failed" if failure else "completed"
        if isinstance(failure, errors.InvariantViolated):
            kind = "rejected"
        elif isinstance(failure, errors.DeadLettered):
            kind = "dead_lettered"
        elif isinstance(failure, errors.RunCancelled) or (failure and run.cancelled):
            kind = "cancelled"
        if failure is None:
            violation = host.check_invariants(self.key, self.actor, before, after, run.events)
            if violation is not None:
                failure, kind, after = violation, "rejected", None
        if failure is not None:
            self.actor.load_state(_json_copy(before))
        state = after if after is not None else before
        extra: dict[str, Any] = {"kind": kind, "state": state}
        if failure is None:
            extra["result"] = result
            run.outbox.extend(run.held)  # a run's sends leave only if it completes
        else:
            kind_name = (failure.error_type if isinstance(failure, errors.HandlerFailed)
                         else type(failure).__name__)
            extra["error"] = {**error_record(failure), "type": kind_name}
            log.warning("%s: %s(%s) %s: %s", self.key, run.msg.get("handler"), run.msg_id,
                        kind, failure.message)
        run.held = []
        reply_to = run.msg.get("reply_to")
        if reply_to:
            payload = {"result": result} if failure is None else {"error": extra["error"]}
            run.outbox.append(host.envelope(ActorRef.parse(reply_to), None, payload,
                                            msg_id=f"reply:{run.msg_id}", kind="event",
                                            name=f"reply:{run.msg_id}", sender=self.key))
        # The asker is answered as soon as the outcome is durable; dispatch and consume
        # follow before this actor starts its next run.
        def durable() -> None:
            run.finished = True
            host.resolve(self.key, run.msg_id, result, failure)
            if run.msg.get("asker"):
                host.reply_ready(str(run.msg["asker"]), self.key, run.msg_id)

        await self.commit(run, consumed=[run.msg_id], extra=extra, durable=durable)
        self.committed_state = state

    def _break(self, run: Run, exc: errors.LoomError) -> None:
        log.error("%s", exc)
        self.broken = exc
        self.run = None
        self.host.resolve(self.key, run.msg_id, None, exc)

    def _fail(self, cause: BaseException) -> ActivationLost:
        """Mark this activation stale at once (so nothing else is written or run by it) and
        return the exception that unwinds the handler."""
        self.stale = True
        return ActivationLost(self.key, cause)

    def _lose(self, cause: BaseException) -> None:
        """Stop everything this activation does; the host reloads the actor later."""
        if self._reported:
            return
        self._reported = self.stale = True
        run, self.run = self.run, None
        if run is not None:
            self.hand_back(run)
            for wait in run.waits:
                if not wait.future.done():
                    wait.future.cancel()
            if run.task is not None and run.task is not asyncio.current_task():
                run.task.cancel()
        self.host.lost(self.key, self, cause)

    # -- commits ---------------------------------------------------------------------------
    async def commit(self, run: Run, *, consumed: list[str] | None = None,
                     extra: dict[str, Any] | None = None,
                     durable: Callable[[], None] | None = None) -> None:
        """Append one commit, then dispatch its outbox, then consume. Any failure raises
        ActivationLost: the outbox of a commit that did not land never leaves."""
        if self.stale:
            raise self._fail(errors.JournalConflict("this activation was dropped"))
        host = self.host
        run.committing += 1
        try:
            async with self.commit_lock:
                # Take what is outstanding now: concurrent branches may add more meanwhile.
                events, run.pending = run.pending, []
                outbox, run.outbox = run.outbox, []
                stray, self.stray = self.stray, []
                consumed = [*(consumed or []), *stray]
                doc: Commit = {"actor": self.key, "seq": self.seq + 1, "ts": host.clock(),
                               "run": {"msg": run.msg_id, "ts": run.ts, "start": run.start_seq},
                               "events": events, "epoch": self.epoch}
                if outbox:  # left out when empty: less to write and to decode on replay
                    doc["outbox"] = outbox
                if consumed:
                    doc["consumed"] = consumed
                if not run.announced:
                    doc["message"] = run.msg
                    if run.version is not None:
                        doc["run"]["ver"] = run.version
                if extra:
                    doc.update(extra)
                if self.deltas and "state" in doc:  # a snapshot, or what changed since
                    every = int(getattr(host.journal, "compact_every", 0) or 0)
                    doc.update(self.snapshots.fields(doc["seq"], self.committed_state,
                                                     doc.pop("state"), every))
                # The entry stays the run's until its write returns: cut off meanwhile
                # (`_lose`, `deactivate`), the run hands it back (`hand_back`), whether or
                # not this write lands (a second write of it is refused by its id).
                entry = run.unwritten
                try:
                    host.hooks.fire("before_commit", self.key)
                    if entry is None:
                        await host.journal.append(doc)
                    else:  # the call's entry goes with it (`take_unwritten`)
                        journal: Any = host.journal
                        number = await journal.append_entry(doc, entry, run.msg_n)
                except Exception as exc:
                    run.unwritten = None
                    self.stray[:0] = stray
                    if entry is not None and not isinstance(exc, errors.JournalConflict):
                        host.resolve(self.key, run.msg_id, None, exc)  # (a conflict: the
                    raise self._fail(exc) from exc  # entry was written, and runs anew)
                run.unwritten = None
                if entry is not None:
                    self._numbered(run, number)  # raises unless the commit went with it
                self.seq += 1
                run.announced = True
                run.flushed_at = host.clock()
                host.committed(self.key)
                if durable is not None:
                    durable()
                try:
                    host.hooks.fire("after_commit", self.key)
                    await host.dispatch(outbox)
                    # Consumed last: an unconsumed entry marks unfinished business (a
                    # dispatch cut off by a crash), so recovery re-dispatches. With nothing
                    # to dispatch, a journal that can consumes them with the append itself.
                    if consumed and (outbox or not _consumes_with_append(host)):
                        await host.journal.consume(self.key, consumed, host.clock())
                except Exception as exc:
                    raise self._fail(exc) from exc
        finally:
            run.committing -= 1

    async def flush(self, run: Run, *, contained: bool = False) -> None:
        """Commit outstanding events and outbox (before a new effect or a wait). Before a
        contained activity (`contained`: it reaches nothing outside the process), only once
        `flush_due`: a crash runs such a step again, and nothing outside saw it.

        Invariants gate this point too: a state the run reached must pass them before the
        run may call another activity; a violation writes nothing and raises in the handler.
        """
        if self.actor.invariants or self.host.invariants:
            current = _json_copy(self.actor.dump_state())
            violation = self.host.check_invariants(self.key, self.actor, run.before, current,
                                                   run.events)
            if violation is not None:
                raise violation
        if (run.pending or run.outbox) and (not contained or self.flush_due(run)):
            await self.commit(run)

    def flush_due(self, run: Run) -> bool:
        """Whether what waits for a commit goes before a contained activity: an outbox
        always; outcomes once CONTAINED_STEPS gathered or CONTAINED_S passed since the run
        last committed (what a crash would make the run compute again)."""
        if run.outbox:
            return True
        if not run.pending:
            return False
        since = run.ts if run.flushed_at is None else run.flushed_at
        return len(run.pending) >= CONTAINED_STEPS or \
            self.host.clock() - since >= CONTAINED_S

    async def start_timer(self, run: Run, timer: str, fire_at: float) -> None:
        run.outbox.append(self.host.envelope(self.ref, None, None, msg_id=timer, kind="timer",
                                             name=timer, deliver_at=fire_at))
        await self.flush(run)

    def check_cancelled(self, run: Run) -> None:
        if run.cancelled is not None:
            raise errors.RunCancelled(f"{self.key}: run {run.msg_id} cancelled: {run.cancelled}")

    async def wait_timer(self, run: Run, timer: str, step: Any, *,
                         cancellable: bool = True) -> None:
        if run.unwritten is not None:
            await self.written(run)
        if cancellable:
            self.check_cancelled(run)
        fut = asyncio.get_running_loop().create_future()
        run.waits.append(Wait(step=step, op="timer.fired", event=None, timer=timer, future=fut,
                              cancellable=cancellable))
        self.host.notify(self.key)
        await fut

    async def wait_event(self, run: Run, step: Any, event: str, timer: str | None,
                         op: str = "wait.event", key: str | None = None) -> Any:
        if run.unwritten is not None:
            await self.written(run)
        self.check_cancelled(run)
        fut = asyncio.get_running_loop().create_future()
        run.waits.append(Wait(step=step, op=op, event=event, timer=timer, future=fut, key=key))
        self.host.notify(self.key)
        return await fut

    # -- the inbox -------------------------------------------------------------------------
    async def pump(self) -> None:
        """Deliver due timers and awaited events to the run; start the next run if idle."""
        if self.broken is not None or self.stale:
            return
        try:
            async with self.pump_lock:
                await self._pump()
        except ActivationLost as exc:
            self._lose(exc.cause)
        except Exception as exc:
            self._lose(exc)

    async def _pump(self) -> None:
        host = self.host
        now = host.clock()
        calls = 1 if self.run is None and not host.draining else 0
        # one call more than it takes: whether another waits (see _next)
        entries = await host.journal.inbox(self.key, now, calls=calls + 1 if calls else 0)
        self.read_at = now
        self.heard, self.more_calls = not calls, False
        for env in entries:
            run = self.run
            kind = env.get("kind", "call")
            if kind == "call":
                if run is None:
                    self.seen_n = max(self.seen_n, int(env.get("n", 0)))
                    self.last_used = self._monotonic()
                    self._start(Run(msg=env, start_seq=self.seq + 1, ts=host.clock(),
                                    version=host.code_version))
                else:  # not taken, so not seen: the schedule must still count it
                    self.more_calls = True
                continue
            self.seen_n = max(self.seen_n, int(env.get("n", 0)))
            if run is None or run.task is None or run.task.done():
                if kind in ("timer", "cancel"):  # a timer of a finished run; nothing to cancel
                    self._stray(env["id"])
                continue
            if kind == "cancel":
                await self._cancel(run, env)
                if self.stale:
                    return
                continue
            await self._deliver(run, env)
            if self.stale:
                return
        if calls and not self.more_calls:  # every call due was read: seen_n is complete
            self.complete_n = self.seen_n
        if self.stray and self.run is None:
            await self._sweep()
        # A busy settle counts no call as seen; any other counts only what was truly read.
        busy = self.run is not None
        host.settle_later(self.key, now, self.seen_n if busy else self.complete_n, busy)

    def take_call(self, env: Envelope, n: int) -> bool:
        """Start the run of call `env`, just enqueued here as entry `n`, without reading the
        inbox, if that read could only have found it: idle, nothing being read, and every
        entry before `n` read already. Settled as of the last read (what was not yet due
        then still counts), seen up to `n`. False: the caller wakes the actor as usual."""
        host = self.host
        if self.run is not None or self.broken is not None or self.stale or \
                self.pump_lock.locked() or self.complete_n != n - 1 or \
                env.get("kind", "call") != "call" or \
                float(env.get("deliver_at", 0.0)) > host.clock():
            return False
        try:
            msg = _json_copy(env)  # as the read would give it: decoded from what was written
        except ValueError:  # what the journal took but JSON here refuses: the usual way
            return False
        msg["n"] = n
        self.seen_n = self.complete_n = n
        self.last_used = self._monotonic()
        self._start(Run(msg=msg, start_seq=self.seq + 1, ts=host.clock(),
                        version=host.code_version))
        host.settle_later(self.key, self.read_at, n, True)
        return True

    def take_unwritten(self, env: Envelope) -> bool:
        """Start the run of call `env` before its entry is written (an ask with an id made
        up here: `ActorRuntime._run_unwritten`), if idle as for `take_call` and not taken
        over. The entry is written with the run's first commit (`append_entry`), which goes
        in only if the entry became the next one after every entry read. Before that the run
        waits for nothing, counts no delivery and runs only activities that reach nothing
        outside the process; anything else writes the entry first (`written`). False: the
        caller writes the entry first."""
        host = self.host
        if self.run is not None or self.broken is not None or self.stale or \
                self.pump_lock.locked() or self.taken_over or \
                env.get("kind", "call") != "call" or \
                float(env.get("deliver_at", 0.0)) > host.clock():
            return False
        try:
            msg = _json_copy(env)
        except ValueError:
            return False
        msg["n"] = self.complete_n + 1  # what it must become
        self.last_used = self._monotonic()
        self._start(Run(msg=msg, start_seq=self.seq + 1, ts=host.clock(),
                        version=host.code_version, unwritten=env))
        host.settle_later(self.key, self.read_at, self.complete_n, True)
        return True

    async def written(self, run: Run) -> None:
        """Write the entry of a run started before it was (`take_unwritten`), on its own
        (the entry stays the run's until the write returns, as in `commit`)."""
        entry = run.unwritten
        assert entry is not None
        try:
            journal: Any = self.host.journal
            number = await journal.enqueue_numbered(entry)
        except Exception as exc:  # not written (or not known): the asker hears it
            run.unwritten = None
            self.host.resolve(self.key, run.msg_id, None, exc)
            raise self._fail(exc) from exc
        run.unwritten = None
        self._numbered(run, number)

    def _numbered(self, run: Run, number: int) -> None:
        """The entry of an early run became entry `number`. It must follow every entry read:
        one written before it elsewhere and not read yet runs first, so then the run is
        discarded (nothing of it was written) and the actor reloaded, to read its inbox in
        order."""
        if not number:
            exc = errors.JournalConflict(f"{self.key}: message id {run.msg_id} was taken")
            self.host.resolve(self.key, run.msg_id, None, exc)
            raise self._fail(exc)
        if number != run.msg_n:
            raise self._fail(errors.JournalConflict(
                f"{self.key}: message {run.msg_id} became entry {number}, but entry "
                f"{run.msg_n} came first and was not read: discarded, to run in order"))
        self.seen_n = max(self.seen_n, number)
        self.complete_n = number

    def hand_back(self, run: Run) -> None:
        """An early run cut off before its entry was written, or while that write was in
        flight: the entry is written now (refused by its id if that write landed), so that
        the call runs as one that came the usual way (its asker still waits)."""
        entry, run.unwritten = run.unwritten, None
        if entry is None:
            return
        host, key = self.host, self.key

        async def write() -> None:
            try:
                journal: Any = host.journal
                await journal.enqueue_numbered(entry)
            except Exception as exc:
                host.resolve(key, str(entry["id"]), None, exc)
                return
            host.notify(key)

        task = asyncio.get_running_loop().create_task(write())
        _HANDED_BACK.add(task)
        task.add_done_callback(_HANDED_BACK.discard)

    async def _sweep(self) -> None:
        """With no run to carry them, stray timers get a commit of their own (fenced)."""
        host = self.host
        async with self.commit_lock:
            stray, self.stray = self.stray, []
            doc: Commit = {"actor": self.key, "seq": self.seq + 1, "ts": host.clock(),
                           "events": [], "outbox": [], "consumed": stray, "epoch": self.epoch}
            try:
                await host.journal.append(doc)
                self.seq += 1
                host.committed(self.key)
                if not _consumes_with_append(host):
                    await host.journal.consume(self.key, stray, host.clock())
            except Exception as exc:
                raise self._fail(exc) from exc

    async def release_point(self) -> tuple[float, int, bool]:
        """Where the schedule should stand when this activation leaves memory: (the time
        the inbox was read, the highest number seen, whether the run still waits for
        nothing it could be given now). A parked run whose timer or event is already in
        the inbox, undelivered, is not truly parked: it must be due at once."""
        run = self.run
        if run is None:
            return self.read_at, self.complete_n, True
        if not run.parked:
            return self.host.clock(), -1, False
        now = self.host.clock()
        entries = await self.host.journal.inbox(self.key, now, calls=0)
        seen = max([self.seen_n, *(int(e.get("n", 0)) for e in entries)])
        for env in entries:
            for wait in run.waits:
                if (env.get("kind") == "timer" and wait.timer == env.get("name")) or \
                        self._matches(run, wait, env):
                    return now, -1, False
        return now, seen, True

    def _matches(self, run: Run, wait: Wait, env: Envelope) -> bool:
        if env.get("kind") != "event" or wait.event != env.get("name"):
            return False
        if wait.op == "timer.fired":
            return False
        if wait.key is not None:  # a correlated wait takes only its own events
            return bool(env.get("key") == wait.key)
        # Otherwise only events sent without a key (a keyed one is some correlated wait's,
        # maybe of a later run), and after this run's message: a later run never sees an
        # earlier run's leftovers.
        return env.get("key") is None and int(env.get("n", 0)) > run.msg_n

    async def _deliver(self, run: Run, env: Envelope) -> None:
        kind, name = env.get("kind"), env.get("name")
        self.last_used = self._monotonic()
        for wait in list(run.waits):
            if wait.future.done():
                run.waits.remove(wait)
                continue
            if kind == "timer" and wait.timer == name:
                if wait.op == "timer.fired":
                    record = {"step": wait.step, "op": "timer.fired", "name": "timer",
                              "digest": "", "timer": name}
                    outcome: Any = None
                else:
                    record = {"step": wait.step, "op": "wait.timeout", "name": wait.event or "",
                              "digest": ""}
                    outcome = _TIMED_OUT
                await self._settle_wait(run, wait, record, env, outcome)
                return
            if self._matches(run, wait, env):
                record = {"step": wait.step, "op": wait.op, "name": name or "", "digest": "",
                          "payload": env.get("payload"), "msg": env["id"]}
                await self._settle_wait(run, wait, record, env, env.get("payload"))
                return
        if kind == "timer" and not str(name).startswith(f"timer:{run.msg_id}:"):
            self._stray(env["id"])

    def _stray(self, timer_id: str) -> None:
        """A timer no run waits for. It is consumed by this activation's next commit, never
        on its own: a stale activation (its lease long gone) must not consume a timer that
        a later run, unknown to it, is waiting for."""
        if timer_id not in self.stray:
            self.stray.append(timer_id)

    async def _cancel(self, run: Run, env: Envelope) -> None:
        """Record the cancel (durably, with its reason), then fail the run's waits: the
        handler sees RunCancelled at its wait or its next step, and its saga compensates."""
        if run.cancelled is not None:
            self._stray(env["id"])
            return
        reason = str((env.get("payload") or {}).get("reason") or "cancelled")
        at = cancel_point(run)
        run.add_event({"step": "cancel", "op": "run.cancelled", "name": "cancel", "digest": "",
                       "reason": reason, "msg": env["id"], "at": at})
        await self.commit(run, consumed=[env["id"]])
        run.cancelled, run.cancel_at = reason, at
        for wait in list(run.waits):
            if not wait.cancellable:  # a compensation's retry backoff: undoing goes on
                continue
            if not wait.future.done():
                wait.future.set_exception(errors.RunCancelled(
                    f"{self.key}: run {run.msg_id} cancelled: {reason}"))
            run.waits.remove(wait)

    async def _settle_wait(self, run: Run, wait: Wait, record: dict[str, Any], env: Envelope,
                           outcome: Any) -> None:
        """Record the wait's outcome durably, then (only then) wake the run."""
        run.add_event(record)
        try:
            await self.commit(run, consumed=[env["id"]])
        except BaseException:
            if record in run.pending:
                run.pending.remove(record)
            if record in run.events:
                run.events.remove(record)
            raise
        run.waits.remove(wait)
        if not wait.future.done():
            wait.future.set_result(outcome)

    async def deactivate(self) -> None:
        run = self.run
        if run is not None:
            self.hand_back(run)
        if run is not None and run.task is not None and not run.task.done():
            run.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.task
        self.run = None
