"""The in-process actor runtime: leases, scheduling, activation, outbox dispatch, timers.

One live activation per actor across processes: a process activates an actor only while
it holds the actor's lease in the journal, and every commit is create-if-absent on
(actor, seq), so a stale holder (paused past its lease) is fenced out by its next write.
Which actors need attention comes from the journal's schedule (O(what is due)), so any
process can send, ask or signal any actor and the owner picks the message up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection
from functools import partial
from typing import Any, Protocol

from runtime import errors
from runtime.actors import delta, gc_tuning
from runtime.actors.activation import Activation
from runtime.actors.actor import Actor, ActorRef
from runtime.actors.hooks import Hooks
from runtime.actors.host import MAX_PAYLOAD_DEPTH, ActivationLost, RunPinned
from runtime.actors.lane import Lane
from runtime.actors.resilience import Breakers
from runtime.executor import Executor
from runtime.journal.store import Envelope, JournalStore, Scope
from runtime.limits.base import Grant, Limiter
from schemas.fast_check import nests_deeper
from schemas.manifest import RetryPolicy

__all__ = ["ActivityRunner", "ActorRuntime", "Hooks", "Ownership"]
log = logging.getLogger("loom.actors")
Invariant = Callable[[str, Any, Any, list[dict[str, Any]]], "bool | str | None"]
_LIVE_OWNERS: set[str] = set()  # owner ids of the runtimes alive in this process


def _host_id() -> str:
    """This host as far as process ids go: its name, and its PID namespace where there is
    one (containers may share a host name, never each other's processes)."""
    name = socket.gethostname()
    try:
        ns = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return name
    return f"{name}@{ns[5:-1]}" if ns.startswith("pid:[") else name


HOST_ID = _host_id()  # the first part of an owner id (host:pid:nonce)
_ID_BASE = [uuid.uuid4().int, 0]  # message ids: a random 128-bit base plus a counter


def _new_id_base() -> None:
    _ID_BASE[:] = [uuid.uuid4().int, 0]


os.register_at_fork(after_in_child=_new_id_base)  # a forked child must not repeat its parent's


def message_id() -> str:
    """A fresh message id in UUID form: unique like uuid4 (a random base per process), but
    without a trip to the kernel's random source for every message."""
    _ID_BASE[1] += 1
    return str(uuid.UUID(int=(_ID_BASE[0] + _ID_BASE[1]) & ((1 << 128) - 1)))


def _numbering(journal: JournalStore) -> Callable[[Envelope], Awaitable[int]] | None:
    """The journal's `enqueue_numbered` (memory, SQLite: it answers the entry's number), unless
    a subclass or the instance changed `enqueue` without it: then `enqueue` is what runs."""
    homes = [next((k for k in type(journal).__mro__ if name in vars(k)), None)
             for name in ("enqueue_numbered", "enqueue")]
    replaced = "enqueue" in getattr(journal, "__dict__", {})
    if homes[0] is None or homes[0] is not homes[1] or replaced:
        return None  # (a wrapper that forwards by __getattr__ has neither: not trusted)
    found: Callable[[Envelope], Awaitable[int]] = journal.enqueue_numbered  # type: ignore[attr-defined]
    return found


def _entering(journal: JournalStore) -> bool:
    """Whether the journal writes an entry with a commit (`append_entry`: memory, SQLite)
    in the same class that defines its `append` and `enqueue_numbered`, and nothing
    replaced them on the instance: a subclass's own `append` must not be bypassed."""
    names = ("append_entry", "append", "enqueue_numbered")
    homes = {next((k for k in type(journal).__mro__ if name in vars(k)), None)
             for name in names}
    replaced = any(name in getattr(journal, "__dict__", {}) for name in names)
    return _numbering(journal) is not None and len(homes) == 1 and None not in homes \
        and not replaced


def _reply_of(commit: dict[str, Any]) -> Any:
    """The handler's result from its completing commit, or the error it ended with."""
    if "error" not in commit:
        return commit.get("result")
    err = commit["error"]
    if commit.get("kind") == "dead_lettered":
        raise errors.DeadLettered(err.get("message", "dead-lettered"))
    if commit.get("kind") == "cancelled" or err.get("code") == errors.ErrorCode.CANCELLED.value:
        raise errors.RunCancelled(err.get("message", "cancelled"))
    if err.get("code") == errors.ErrorCode.INVARIANT_VIOLATED.value:
        raise errors.InvariantViolated("(recorded)", err.get("message", ""),
                                       actor=str(commit.get("actor")))
    raise errors.HandlerFailed(err.get("message", "handler failed"),
                               error_type=err.get("type", "Error"), error_code=err.get("code"))


def _releaser(limiter: Limiter, grant: Grant, lease_s: float
              ) -> Callable[[], Awaitable[None]] | None:
    """What frees the grant's slot; meanwhile its lease is renewed every third of it, so
    a call longer than the lease keeps its slot (without, the limit was exceeded)."""
    if not grant.limited:
        return None

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease_s / 3)
            try:
                if not await asyncio.to_thread(limiter.refresh, grant):
                    return  # expired meanwhile: the slot may be another call's now
            except Exception as exc:  # the store is away: try again at the next beat
                log.warning("limits: renewing the lease of %s failed: %s", grant.activity, exc)

    renewing = asyncio.get_running_loop().create_task(renew()) if lease_s > 0 else None

    async def release() -> None:
        if renewing is not None:
            renewing.cancel()
        try:
            await asyncio.to_thread(limiter.release, grant)
        except Exception as exc:  # never the call's outcome: the lease runs out instead
            log.warning("limits: releasing %s failed (its lease runs out): %s",
                        grant.activity, exc)

    return release


def _owner_dead(owner: str) -> bool:
    """True only when `owner` (host:pid:nonce) is certainly gone: a runtime of this host
    (and PID namespace: another container of the same name is another host here) whose
    process has exited, or of this process that has stopped or been abandoned."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != HOST_ID or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return owner not in _LIVE_OWNERS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Ownership(Protocol):
    """Which actors this process may run (a fleet: those of the partitions it holds)."""

    def partition(self, key: str) -> int: ...

    def owns(self, key: str) -> bool: ...

    def scope(self) -> Scope | None:
        """The partitions held now, for the journal to poll only their due actors (None:
        poll all and filter with `owns`)."""
        ...

    def report(self, in_flight: int) -> None: ...

    def accepts(self, key: str, version: str) -> bool:
        """Whether the worker holding the actor's partition can resume runs of `version`
        (if not, a worker that can may run that actor as a guest)."""
        ...


class ActivityRunner(Protocol):
    """Runs activities for actors: the executor by default; stubs in tests/simulations."""

    async def run(self, name: str, input: Any, *, version: str | None, idempotency_key: str,
                  timeout_ms: int | None, tenant: str) -> Any: ...

    async def retry_policy(self, name: str, version: str | None,
                           tenant: str = "") -> RetryPolicy:
        """The retry policy of the activity this tenant's `name` means."""
        ...


def _due(now: float, at: float, every: float) -> bool:
    """Whether a periodic task scheduled for `at` (every `every` s) is due at `now`; also
    when `at` lies further ahead than one period, i.e. the clock stepped back: waiting for
    it to catch up would stop lease renewals for the length of the step."""
    return now >= at or at - now > every


class ActorRuntime:
    """Runs registered actors against a journal, calling activities through an executor.

    Use as `async with ActorRuntime(journal, executor) as rt:`. `start()` begins the
    scheduling loop, which takes every due actor this process may own (unfinished runs of
    a crashed process included, once their lease has run out or their process is known to
    be dead); `stop()` releases every lease so another process can take over at once.
    """

    def __init__(self, journal: JournalStore, executor: Executor | None = None, *,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
                 breakers: Breakers | None = None, hooks: Hooks | None = None,
                 max_activations: int = 10_000, idle_timeout_s: float = 300.0,
                 durable_retry_threshold_s: float = 5.0, poll_interval_s: float = 0.05,
                 lint: bool = True, activity_threads: int = 8,
                 activities: ActivityRunner | None = None, lease_ttl_s: float = 10.0,
                 owner: str | None = None, tenant_of: Callable[[str], str] | None = None,
                 due_batch: int = 256, ownership: Ownership | None = None,
                 limiter: Limiter | None = None, max_deliveries: int = 5,
                 code_version: str | None = None, compatible: Collection[str] = (),
                 gc_young_threshold: int | None = gc_tuning.YOUNG_THRESHOLD) -> None:
        self.journal = journal
        self.executor = executor
        self.clock = clock
        if clock is not time.time and hasattr(journal, "clock"):
            journal.clock = clock  # compaction judges ages by the clock times are written with
        self._sleep = sleep
        self.breakers = breakers or Breakers()
        self.hooks = hooks or Hooks.from_env()
        self.max_activations = max_activations
        self.idle_timeout_s = idle_timeout_s
        self.durable_retry_threshold_s = durable_retry_threshold_s
        self.poll_interval_s = poll_interval_s
        self.lint = lint
        self.activities = activities
        self.lease_ttl_s = lease_ttl_s
        delta.enabled()  # a bad LOOM_STATE_DELTAS fails here, not in the first activation
        self.owner = owner or f"{HOST_ID}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._tenant_of = tenant_of
        self.due_batch = due_batch
        self.ownership = ownership
        self.limiter = limiter
        self.max_deliveries = max_deliveries
        self.code_version = code_version
        self.versions: frozenset[str] | None = (
            None if code_version is None else frozenset({code_version, *compatible}))
        self._guests: set[str] = set()  # pinned runs of other partitions this process resumes
        self._resources: dict[str, list[dict[str, Any]]] = {}  # idempotency key -> attempts
        self.replies: Any = None
        """A `runtime.cluster.replies.Replies` (fleet): answers to asks across processes."""
        self.delivery: Any = None
        """A `runtime.cluster.delivery.StreamDelivery` (fleet): wakes the owner of an actor
        of another partition at once, instead of at its next schedule poll."""
        self._infra_losses: dict[str, str] = {}  # actor -> why its last activation stopped
        self.types: dict[str, type[Actor]] = {}
        self.invariants: dict[str, Invariant] = {}
        self.activations: OrderedDict[str, Activation] = OrderedDict()
        self._pumping: dict[str, asyncio.Task[None]] = {}
        self._dirty: set[str] = set()
        self._unsettled: dict[str, tuple[float, int, bool]] = {}
        self._backoff: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}  # actor -> loop time before which a poll skips it
        self._settle_failures = 0  # consecutive passes in which a settle failed
        self._settle_at = 0.0  # loop time of the next settle pass after failures
        self._waiters: dict[tuple[str, str], list[asyncio.Future[Any]]] = {}
        self._remote_polls: dict[tuple[str, str], tuple[float, float]] = {}
        self._unknown: set[str] = set()
        self._wake = asyncio.Event()
        self._numbered = _numbering(journal)
        self._entering = _entering(journal)
        self._timer_task: asyncio.Task[None] | None = None
        self._lane: Lane | None = None if activities is not None else \
            Lane(activity_threads, name="loom-activity")
        self._activity_threads = activity_threads
        self._closing = False
        self.draining = False
        self._renew_at = 0.0
        self._reap_at = 0.0
        self._stranded_at = 0.0
        if gc_young_threshold is not None and (
                type(gc_young_threshold) is not int or gc_young_threshold < 1):
            raise errors.SettingsInvalid(
                f"invalid settings: gc_young_threshold: {gc_young_threshold!r} is not a "
                "positive whole number of allocations (or None, to leave the GC alone)")
        self.gc_young_threshold = gc_young_threshold

    async def sleep(self, seconds: float) -> None:
        await self._sleep(seconds)

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

    def tenant_of(self, key: str) -> str:
        """The tenant an actor's activity calls run as: its type unless configured, so warm
        instances are never shared across namespaces."""
        if self._tenant_of is not None:
            return self._tenant_of(key)
        return key.partition("/")[0]

    # -- messages --------------------------------------------------------------------------
    def envelope(self, target: ActorRef, handler: str | None, payload: Any, *,
                 msg_id: str | None = None, kind: str = "call", name: str | None = None,
                 reply_to: str | None = None, sender: str | None = None,
                 deliver_at: float = 0.0, key: str | None = None) -> Envelope:
        if nests_deeper(payload, MAX_PAYLOAD_DEPTH):
            # the journal's reader stops at ~200 levels: deeper, the message would be
            # written and then never read (its actor failing to load for ever)
            raise errors.InputInvalid(f"the payload of a message to {target} nests deeper "
                                      f"than {MAX_PAYLOAD_DEPTH} levels")
        env: Envelope = {"id": msg_id or message_id(), "target": str(target), "kind": kind,
                         "payload": payload, "deliver_at": deliver_at}
        if handler is not None:
            env["handler"] = handler
        if name is not None:
            env["name"] = name
        if reply_to is not None:
            env["reply_to"] = reply_to
        if sender is not None:
            env["sender"] = sender
        if key is not None:
            env["key"] = key
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
        """Send and wait for the handler's durable result (raises what the handler raised),
        whichever process runs the actor."""
        fresh = msg_id is None  # no one else can have written it
        msg_id = msg_id or message_id()
        ref = target if isinstance(target, ActorRef) else ActorRef.parse(target)
        fut = asyncio.get_running_loop().create_future()
        waiting = (str(ref), msg_id)
        self._waiters.setdefault(waiting, []).append(fut)
        try:
            env = self.envelope(ref, handler, payload, msg_id=msg_id)
            if self.replies is not None:
                env["asker"] = self.owner  # tell us at once when the outcome is durable
            if fresh and self._run_unwritten(str(ref), env):
                return await (fut if timeout is None else asyncio.wait_for(fut, timeout))
            number = await self._enqueue(env)
            if not number:  # seen before: it may be done already
                done = await self.journal.outcome(str(ref), msg_id)
                if done is not None:
                    return _reply_of(done)
            self._arrived(str(ref), env, number)
            return await (fut if timeout is None else asyncio.wait_for(fut, timeout))
        finally:
            futures = self._waiters.get(waiting, [])
            if fut in futures:
                futures.remove(fut)
            if not futures:
                self._waiters.pop(waiting, None)
                self._remote_polls.pop(waiting, None)

    async def signal(self, target: ActorRef | str, event: str, payload: Any = None, *,
                     msg_id: str | None = None, key: str | None = None) -> str:
        """Raise event `event` at an actor (for `ctx.wait_for_event`). It reaches a wait of a
        run whose message arrived before it, or a wait that names the same `key`."""
        ref = target if isinstance(target, ActorRef) else ActorRef.parse(target)
        env = self.envelope(ref, None, payload, msg_id=msg_id, kind="event", name=event, key=key)
        await self.dispatch([env])
        return str(env["id"])

    async def cancel(self, target: ActorRef | str, reason: str = "cancelled", *,
                     msg_id: str | None = None) -> str:
        """Cancel the actor's current run, whichever process holds it: at its next step (or
        in the wait it is parked on) it raises RunCancelled, its saga compensates, and it is
        journaled `cancelled`. With no run in progress the cancel has nothing to do."""
        ref = target if isinstance(target, ActorRef) else ActorRef.parse(target)
        env = self.envelope(ref, None, {"reason": reason}, kind="cancel",
                            msg_id=msg_id or f"cancel:{uuid.uuid4()}")
        await self.dispatch([env])
        return str(env["id"])

    async def dispatch(self, envelopes: list[Envelope]) -> None:
        """Put messages into their targets' inboxes (idempotent by id) and wake them."""
        now = self.clock()
        for env in envelopes:
            number = await self._enqueue(env)
            if env.get("deliver_at", 0.0) <= now:
                self._arrived(env["target"], env, number)
            else:
                self._wake.set()

    async def _enqueue(self, env: Envelope) -> int:
        """Enqueue; the entry's number where the journal tells it (else 1), 0 if the id
        was taken."""
        if self._numbered is not None:
            return await self._numbered(env)
        return int(await self.journal.enqueue(env))

    def _arrived(self, key: str, env: Envelope, number: int) -> None:
        """A message this process just enqueued as entry `number`: an idle activation here
        that has read every entry before it takes a call at once, as its next inbox read
        would have (no read, no pump); anything else wakes the actor as usual."""
        act = self.activations.get(key)
        if (act is not None and number > 0 and self._numbered is not None
                and key not in self._pumping and key not in self._guests
                and not self._closing and not self.draining
                and (self.ownership is None or self.ownership.owns(key))
                and act.take_call(env, number)):
            return
        self.notify(key)

    def _run_unwritten(self, key: str, env: Envelope) -> bool:
        """An ask with an id made up here, to an idle activation here (as `_arrived` would
        take it), starts its run before its entry is written: the entry goes with the run's
        first commit, one durable write instead of two (`Activation.take_unwritten`)."""
        act = self.activations.get(key)
        if (act is None or not self._entering or key in self._pumping
                or key in self._guests or self._closing or self.draining
                or (self.ownership is not None and not self.ownership.owns(key))):
            return False
        return act.take_unwritten(env)

    def resolve(self, key: str, msg_id: str, result: Any,
                failure: BaseException | None) -> None:
        for fut in self._waiters.get((key, msg_id), []):
            if fut.done():
                continue
            if failure is None:
                fut.set_result(result)
            else:
                fut.set_exception(failure)

    def answer_from(self, key: str, commit: dict[str, Any]) -> None:
        run = commit.get("run")
        msg_id = run.get("msg") if isinstance(run, dict) else None
        if msg_id is None or (key, str(msg_id)) not in self._waiters:
            return
        try:
            self.resolve(key, str(msg_id), _reply_of(commit), None)
        except errors.LoomError as exc:
            self.resolve(key, str(msg_id), None, exc)

    def reply_ready(self, asker: str, key: str, msg_id: str) -> None:
        if asker != self.owner and self.replies is not None:
            asyncio.get_running_loop().run_in_executor(
                None, self.replies.publish, asker, key, msg_id)

    def _reply_noted(self, key: str, msg_id: str) -> None:
        """Another process says the outcome of our ask (key, msg_id) is durable: read it now."""
        if (key, msg_id) in self._waiters and not self._closing:
            asyncio.get_running_loop().create_task(self._answer_remote(key, msg_id))

    # -- scheduling ------------------------------------------------------------------------
    def notify(self, key: str) -> None:
        if self._closing or (self.draining and key not in self.activations):
            return
        if self.delivery is not None and self.ownership is not None and \
                not self.ownership.owns(key) and key not in self._guests:
            self.delivery.announce(key)  # its partition's owner runs it
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
                if key in self._guests and (activation is None or activation.run is None):
                    self._guests.discard(key)  # its pinned run is over: back to the owner
                    if activation is not None:
                        await self._drop(key, activation)
                if key not in self._dirty:
                    break
        except Exception:
            log.exception("pumping %s failed", key)
        finally:
            self._pumping.pop(key, None)
            if self.delivery is not None and key not in self.activations:
                self.delivery.settled(key)  # nothing here will settle it: its wake is spent

    async def _activation(self, key: str) -> Activation | None:
        found = self.activations.get(key)
        if found is not None and not found.stale:
            self.activations.move_to_end(key)
            return found
        ref = ActorRef.parse(key)
        cls = self.types.get(ref.type)
        if self.ownership is not None and not self.ownership.owns(key) and \
                key not in self._guests:
            return None  # another worker's partition: it takes the message
        if cls is None:
            if key not in self._unknown:
                self._unknown.add(key)
                log.warning("no actor type %r registered here (types: %s); %s keeps its "
                            "messages", ref.type, ", ".join(sorted(self.types)) or "none", key)
            return None
        try:
            lease = await self.journal.acquire(key, self.owner, self.clock(), self.lease_ttl_s)
        except Exception as exc:
            self._retry_later(key, exc)
            return None
        if lease is None:
            return None  # another live process owns it and will take the message
        if self.ownership is not None and not self.ownership.owns(key) and \
                key not in self._guests:  # its partition left while the lease was taken
            await self._hand_off(key)
            return None
        activation = Activation(self, ref, cls)
        activation.epoch = lease.epoch
        activation.taken_over = lease.taken_over
        self.activations[key] = activation
        try:
            await activation.load()
        except ActivationLost as exc:
            self.lost(key, activation, exc.cause)
            return None
        except RunPinned as pinned:
            await self._leave_pinned(key, activation, pinned)
            return None
        await self._evict()
        return activation

    async def _leave_pinned(self, key: str, activation: Activation, pinned: RunPinned) -> None:
        """Leave a run this code cannot resume to a worker that can: release the lease
        with the actor due now and pinned, so only such workers see it."""
        if self.activations.get(key) is activation:
            del self.activations[key]
        activation.stale = True
        self._guests.discard(key)
        log.info("%s; leaving it to a worker of that version (this one runs %s)", pinned,
                 self.code_version)
        try:
            await self.journal.settle(key, self.owner, now=self.clock(), seen_n=-1, busy=False,
                                      release=True, version=pinned.version)
        except Exception as exc:
            self._retry_later(key, exc)

    def settle_later(self, key: str, now: float, seen_n: int, busy: bool) -> None:
        self._unsettled[key] = (now, seen_n, busy)

    def committed(self, key: str) -> None:
        self._backoff.pop(key, None)
        self._retry_at.pop(key, None)
        self._infra_losses.pop(key, None)

    def counts_delivery(self, key: str) -> bool:
        """A new activation counts as a delivery of its first message, unless this process
        knows the last one stopped for the journal's sake (storage error, fenced): that is
        not the message's fault."""
        return key not in self._infra_losses

    def last_failure(self, key: str) -> str | None:
        return self._infra_losses.get(key)

    def lost(self, key: str, activation: object, cause: BaseException) -> None:
        """An activation stopped on a storage error or a fence: drop it, retry later."""
        if self.activations.get(key) is activation:
            del self.activations[key]
        self._unsettled.pop(key, None)
        self._infra_losses[key] = f"{type(cause).__name__}: {cause}"
        self._retry_later(key, cause)

    def _retry_later(self, key: str, cause: BaseException) -> None:
        attempt = self._backoff.get(key, 0) + 1
        self._backoff[key] = attempt
        delay = min(5.0, 0.02 * 2 ** min(attempt, 10))
        level = logging.INFO if isinstance(cause, errors.JournalConflict) else logging.WARNING
        log.log(level, "%s: activation dropped (%s: %s); retrying in %.2f s", key,
                type(cause).__name__, cause, delay)
        if not self._closing:
            loop = asyncio.get_running_loop()
            self._retry_at[key] = loop.time() + delay  # the schedule poll waits too
            loop.call_later(delay, self.notify, key)

    def _evictable(self, key: str, act: Activation) -> bool:
        """Idle, or parked on a durable wait (a run waiting for days costs no memory)."""
        return key not in self._pumping and (act.run is None or act.run.parked)

    async def _release(self, key: str, act: Activation) -> None:
        if act.stale:
            await act.deactivate()
            return
        try:
            now, seen_n, quiet = await act.release_point()
            if quiet and await self.journal.read(key, after_seq=act.seq):
                quiet, seen_n = False, -1  # someone committed past this activation's view
        except Exception:
            now, seen_n, quiet = self.clock(), -1, False  # unsure: due at once
        busy = act.run is not None
        version = act.run.pin if act.run is not None else None
        await act.deactivate()
        if act.stale:
            return
        # Parked (or idle): due again when something it has not seen arrives or a timer
        # falls due. Cut off in the middle, or with its wake-up already waiting: due now.
        await self.journal.settle(key, self.owner, now=now, seen_n=seen_n,
                                  busy=busy and quiet, release=True, version=version)

    async def _drop(self, key: str, act: Activation) -> None:
        if self.activations.get(key) is act:
            del self.activations[key]
        self._unsettled.pop(key, None)
        try:
            await self._release(key, act)
        except Exception as exc:
            log.warning("releasing %s failed: %s", key, exc)

    async def _evict(self) -> None:
        while len(self.activations) > self.max_activations:
            victim = next(((k, a) for k, a in self.activations.items()
                           if self._evictable(k, a)), None)
            if victim is None:
                return
            await self._drop(*victim)

    async def _sweep_idle(self) -> None:
        cutoff = asyncio.get_running_loop().time() - self.idle_timeout_s
        for key, act in list(self.activations.items()):
            if act.last_used < cutoff and self._evictable(key, act):
                await self._drop(key, act)

    async def _settle_all(self) -> None:
        """Settle what runs left to settle. After a pass in which a settle failed (the
        journal is down), the next waits 50 ms doubling to 5 s, with one log line each."""
        if not self._unsettled or asyncio.get_running_loop().time() < self._settle_at:
            return
        pending, self._unsettled = self._unsettled, {}
        keys, jobs = [], []
        for key, (now, seen_n, busy) in pending.items():
            act = self.activations.get(key)
            if act is None or act.stale:
                continue
            run = act.run
            keys.append(key)
            jobs.append(self.journal.settle(key, self.owner, now=now, seen_n=seen_n,
                                            busy=busy or run is not None,
                                            version=run.pin if run is not None else None))
        failed: dict[str, BaseException] = {}
        for key, outcome in zip(keys, await asyncio.gather(*jobs, return_exceptions=True),
                                strict=True):
            if isinstance(outcome, BaseException):  # kept for the next pass; a newer wins
                failed[key] = outcome
                self._unsettled.setdefault(key, pending[key])
        if failed:
            self._settle_failures += 1
            delay = min(5.0, 0.05 * 2 ** min(self._settle_failures - 1, 7))
            self._settle_at = asyncio.get_running_loop().time() + delay
            key, cause = next(iter(failed.items()))
            log.warning("settling %d actor(s) failed (%s: %s, ...): retried in %.2f s",
                        len(failed), key, cause, delay)
        else:
            self._settle_failures = 0
        if self.delivery is not None:
            for key in pending:
                if key not in failed:
                    self.delivery.settled(key)  # after the settle: acknowledge its wake-ups

    async def _renew(self, now: float) -> None:
        held = await self.journal.renew(self.owner, now, self.lease_ttl_s)
        for key, act in list(self.activations.items()):
            if key not in held and not act.stale:
                act._lose(errors.JournalConflict(f"the lease on {key} was lost"))
        if self.ownership is not None:  # actors in partitions gone elsewhere
            for key, act in list(self.activations.items()):
                # taken while its partition was being handed over (between the ownership
                # check and the lease): the hand-over did not see it
                if not act.stale and key not in self._guests and not self.ownership.owns(key):
                    await self._give_back(key, act, "its partition is held elsewhere")
            for key in sorted(held - set(self.activations)):
                if not self.ownership.owns(key):
                    await self._hand_off(key)
            self.ownership.report(len(self._busy()))

    async def release_partition(self, partition: int, why: str) -> None:
        """A partition left this worker (handed over or lost): drop its activations and
        release their journal leases, due at once for the next owner. Runs cut off resume
        there by replay."""
        if self.ownership is None:
            return
        if self.delivery is not None:
            self.delivery.forget(partition)
        for key, act in list(self.activations.items()):
            if self.ownership.partition(key) == partition:
                await self._give_back(key, act, f"partition {partition} {why}")

    async def _give_back(self, key: str, act: Activation, why: str) -> None:
        """Drop an activation of a partition this worker does not hold, and release its
        journal lease, due at once for the partition's owner (runs cut off resume there)."""
        if self.activations.get(key) is act:
            del self.activations[key]
        self._unsettled.pop(key, None)
        await act.deactivate()
        act.stale = True
        try:
            await self._hand_off(key)
        except Exception as exc:
            log.warning("releasing %s (%s) failed: %s", key, why, exc)

    async def _hand_off(self, key: str) -> None:
        """Give up the actor's journal lease, due at once for whoever owns it next."""
        await self.journal.settle(key, self.owner, now=self.clock(), seen_n=-1, busy=False,
                                  release=True)

    async def _reap(self) -> None:
        for owner in await self.journal.owners():
            if owner != self.owner and _owner_dead(owner):
                n = await self.journal.expire_owner(owner)
                log.info("took back %d lease(s) of %s, which is gone", n, owner)

    async def _answer_remote_asks(self) -> None:
        """Asks whose actor runs elsewhere are answered from the journal's outcome, looked
        up with a backoff (50 ms doubling to 1 s) so a long wait costs little."""
        now = asyncio.get_running_loop().time()
        for waiting, futures in list(self._waiters.items()):
            key, msg_id = waiting
            act = self.activations.get(key)
            if all(f.done() for f in futures) or (act is not None and not act.stale):
                continue
            due, interval = self._remote_polls.get(waiting, (0.0, 0.05))
            if now < due:
                continue
            self._remote_polls[waiting] = (now + interval, min(1.0, interval * 2))
            await self._answer_remote(key, msg_id)

    async def _answer_remote(self, key: str, msg_id: str) -> None:
        done = await self.journal.outcome(key, msg_id)
        if done is not None:
            self.answer_from(key, done)

    async def tick(self) -> None:
        """One round of the scheduling loop (the loop calls it; tests may too)."""
        await self._settle_all()
        now = self.clock()
        if _due(now, self._renew_at, self.lease_ttl_s / 3):
            self._renew_at = now + self.lease_ttl_s / 3
            await self._renew(now)
        if _due(now, self._reap_at, max(1.0, self.lease_ttl_s / 2)):
            self._reap_at = now + max(1.0, self.lease_ttl_s / 2)
            await self._reap()
        scope = None if self.ownership is None else \
            getattr(self.ownership, "scope", lambda: None)()  # (an older Ownership: poll all)
        if scope is not None and self._guests:  # and the partitions of the runs it hosts
            assert self.ownership is not None
            scope = Scope(scope.partitions, {*scope.held, *map(self.ownership.partition,
                                                               self._guests)})
        backing_off = self._retry_at
        if backing_off:  # actors whose activation failed wait for their retry
            mono = asyncio.get_running_loop().time()
            for key in [k for k, at in backing_off.items() if at <= mono]:
                del backing_off[key]
        for key in await self.journal.due_actors(now, self.due_batch, owner=self.owner,
                                                 versions=self.versions, scope=scope):
            if key in backing_off:
                continue
            if key.partition("/")[0] in self.types and (
                    self.ownership is None or self.ownership.owns(key) or key in self._guests):
                self.notify(key)  # while draining, only actors already active here
        if self.ownership is not None and self.versions is not None and not self.draining \
                and _due(now, self._stranded_at, max(1.0, self.lease_ttl_s / 4)):
            # rare (a rolling deploy) and a query of its own (cross-partition on Cosmos):
            # looked for about once a second, not every tick
            self._stranded_at = now + max(1.0, self.lease_ttl_s / 4)
            await self._take_stranded(now)
        await self._answer_remote_asks()
        await self._sweep_idle()

    async def _take_stranded(self, now: float) -> None:
        """Runs pinned to a version this process can resume, in partitions whose owner
        cannot: run them here as guests (the journal lease still fences them)."""
        assert self.ownership is not None and self.versions is not None
        for key, version in await self.journal.due_pinned(now, self.due_batch, owner=self.owner,
                                                          versions=self.versions):
            if key.partition("/")[0] in self.types and not self.ownership.owns(key) and \
                    not self.ownership.accepts(key, version):
                self._guests.add(key)
                self.notify(key)

    async def _timer_loop(self) -> None:
        while not self._closing:
            try:
                await self.tick()
                due = await self.journal.next_due(self.clock(), versions=self.versions)
                delay = self.poll_interval_s
                if due is not None:
                    delay = max(0.001, min(delay, due - self.clock()))
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("scheduling loop")
                await asyncio.sleep(self.poll_interval_s)

    # -- lifecycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the scheduling loop: it recovers every due actor this process may own.
        Raises the process's young-GC threshold to `gc_young_threshold` (None: leaves the
        collector alone; runtime/actors/gc_tuning.py says why)."""
        if self.gc_young_threshold is not None:
            gc_tuning.raise_young_threshold(self.gc_young_threshold)
        _LIVE_OWNERS.add(self.owner)
        loop = asyncio.get_running_loop()
        self._timer_task = loop.create_task(self._timer_loop())
        if self.replies is not None:
            def noted(key: str, msg_id: str) -> None:  # on the replies thread
                loop.call_soon_threadsafe(self._reply_noted, key, msg_id)

            self.replies.start(noted)

    async def stop(self) -> None:
        """Stop running actors and release their leases (unfinished runs resume elsewhere)."""
        self._closing = True
        if self._timer_task is not None:
            self._timer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer_task
        for task in list(self._pumping.values()):
            task.cancel()
        for task in list(self._pumping.values()):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for key, act in list(self.activations.items()):
            try:
                await self._release(key, act)
            except Exception as exc:
                log.warning("releasing %s failed: %s", key, exc)
        self.activations.clear()
        _LIVE_OWNERS.discard(self.owner)
        if self._lane is not None:
            self._lane.close()
        if self.replies is not None:
            await asyncio.to_thread(self.replies.stop)

    async def drain(self, timeout_s: float, *, abort: asyncio.Event | None = None) -> bool:
        """Stop taking work, let runs in flight finish (or park) within `timeout_s` (or
        until `abort` is set), then stop and release every lease. True if nothing was cut
        off."""
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while loop.time() < deadline and self._busy() and not (abort and abort.is_set()):
            await asyncio.sleep(0.02)
        finished = not self._busy()
        await self.stop()
        return finished

    def _busy(self) -> list[str]:
        return [k for k, a in self.activations.items()
                if a.run is not None and not a.run.parked and not a.stale]

    def abandon(self) -> None:
        """Stop at once as a crash would: no lease released, nothing flushed (tests)."""
        self._closing = True
        _LIVE_OWNERS.discard(self.owner)
        tasks = [self._timer_task, *self._pumping.values()]
        tasks += [a.run.task for a in self.activations.values() if a.run and a.run.task]
        for task in tasks:
            if task is not None:
                task.cancel()
        self.activations.clear()
        if self._lane is not None:
            self._lane.close()

    async def __aenter__(self) -> ActorRuntime:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # -- activities ------------------------------------------------------------------------
    async def run_activity(self, name: str, input: Any, *, version: str | None,
                           idempotency_key: str, timeout_ms: int | None,
                           tenant: str = "") -> Any:
        if self.activities is not None:
            return await self.activities.run(name, input, version=version,
                                             idempotency_key=idempotency_key,
                                             timeout_ms=timeout_ms, tenant=tenant)
        if self.executor is None or self._lane is None:
            raise errors.NotFound(f"no executor configured to run activity {name!r}")
        executor = self.executor

        def call() -> Any:  # on the lane's thread
            started = time.perf_counter()
            try:
                result = executor.execute(name, input, version=version, tenant=tenant,
                                          idempotency_key=idempotency_key,
                                          timeout_ms=timeout_ms)
            except errors.LoomError as exc:
                self._used(idempotency_key, {
                    "duration_ms": round((time.perf_counter() - started) * 1000, 3),
                    "ok": False, "code": exc.code.value})
                raise
            self._used(idempotency_key, {
                "duration_ms": round(result.duration_ms, 3), "fuel": result.fuel_used,
                "memory_bytes": result.memory_bytes, "warm": result.reused_instance,
                "ok": True})
            return result.output

        return await self._lane.submit(partial(self.breakers.call, name, call))

    def contained_version(self, name: str, version: str | None) -> str | None:
        if self.activities is not None:  # run elsewhere: known only if the runner says
            judge = getattr(self.activities, "contained_version", None)
            return judge(name, version) if callable(judge) else None
        if self.executor is None:
            return None
        manifest = self.executor.registry.cached(name, version)
        if manifest is None or manifest.capabilities.http is not None or \
                manifest.capabilities.log:
            return None
        return manifest.version

    def _used(self, key: str, resources: dict[str, Any]) -> None:
        attempts = self._resources.setdefault(key, [])
        attempts.append(resources)
        if len(self._resources) > 10_000:  # a step never journaled (a crash): forget it
            self._resources.pop(next(iter(self._resources)))

    def take_resources(self, key: str) -> list[dict[str, Any]] | None:
        """What the attempts of the activity call under `key` used, once (for its journal
        event): duration, fuel, memory, warm instance, outcome."""
        return self._resources.pop(key, None)

    async def admit(self, name: str, tenant: str, key: str
                    ) -> Callable[[], Awaitable[None]] | None:
        """Wait (never fail) until the activity's concurrency and rate limits admit this
        call; returns what frees its slot. A crash while waiting loses nothing: the step is
        not recorded, so the run asks again on replay, under the same key (which the
        limiter recognises, so a re-run never takes a second slot)."""
        limiter = self.limiter
        if limiter is None:
            return None
        backoff = 0.05
        while True:
            try:
                verdict = await asyncio.to_thread(limiter.try_acquire, name, tenant, key)
            except (errors.StorageError, OSError) as exc:  # the limits' store is away: wait
                # as for a full limit (a programming error still fails the call)
                log.warning("limits: admitting %s failed (waiting %.2f s): %s", name, backoff,
                            exc)
                await asyncio.sleep(backoff)
                backoff = min(1.0, backoff * 2)
                continue
            if isinstance(verdict, Grant):
                return _releaser(limiter, verdict, limiter.lease_s(name))
            await asyncio.sleep(max(0.005, min(verdict.retry_after_s, 0.25)))

    async def retry_policy_for(self, name: str, version: str | None,
                               tenant: str = "") -> RetryPolicy:
        if self.activities is not None:
            return await self.activities.retry_policy(name, version, tenant)
        if self.executor is None:
            return RetryPolicy(max_attempts=1)
        try:
            return self.executor.registry.get(name, version).retry
        except errors.NotFound:
            return RetryPolicy(max_attempts=1)

    # -- invariants ------------------------------------------------------------------------
    def check_invariants(self, key: str, actor: Actor, before: Any, after: Any,
                         events: list[dict[str, Any]]) -> errors.InvariantViolated | None:
        checks: list[tuple[str, Callable[[], Any]]] = [
            (name, partial(getattr(actor, attr), before, after, events))
            for name, attr in actor.invariants.items()]
        checks += [(name, partial(fn, key, before, after, events))
                   for name, fn in self.invariants.items()]
        for name, check in checks:
            try:
                verdict = check()
            except Exception as exc:
                verdict = f"the check raised {type(exc).__name__}: {exc}"
            if verdict is False or isinstance(verdict, str):
                message = verdict if isinstance(verdict, str) else "returned False"
                return errors.InvariantViolated(name, message, actor=key)
        return None

    # -- reading ---------------------------------------------------------------------------
    async def state_of(self, target: ActorRef | str) -> Any:
        """The last committed state of an actor (None if it never committed)."""
        return delta.current_state(await self.journal.read_tail(str(target)))

    async def outcome(self, target: ActorRef | str, msg_id: str) -> dict[str, Any] | None:
        """The completing commit of message `msg_id`, if it has completed."""
        return await self.journal.outcome(str(target), msg_id)
