"""Deterministic simulation of the real actor runtime under faults.

Several `ActorRuntime`s (simulated processes) share one in-memory journal on a virtual
clock. A seeded random source decides everything else: which journal calls fail (before or
after they land), when a process crashes, freezes past its leases or has its clock stepped,
which activity calls fail, and how long they take. A client that never crashes sends,
asks and signals, retrying with the same message ids as a real client would; code inside a
worker process asks too, with no id (the early path), and dies with that process.

After the scenario the faults stop, the cluster settles, and `check()` verifies the
promises: every accepted message completed exactly once, every ask was answered, one
idempotency key never stood for two different effects, every recorded effect reached the
receiver, no compensation ran without a failure, no failed run's message left, and no
non-determinism was reported for unchanged code. A violation names the seed; running the
same seed again replays the same history.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from runtime import errors
from runtime.actors import runtime as runtime_module
from runtime.actors.activation import key_base
from runtime.actors.actor import Actor
from runtime.actors.hooks import Hooks
from runtime.actors.runtime import HOST_ID, ActorRuntime
from runtime.journal.memory import MemoryJournal
from runtime.testing.effects import Receiver, StubActivities
from runtime.testing.faults import Faults, FaultyJournal
from runtime.testing.loop import run_virtual

BUSINESS = (errors.HandlerFailed, errors.ActivityFailed, errors.EventTimeout,
            errors.InvariantViolated, errors.CircuitOpen, errors.RunCancelled,
            errors.DeadLettered)


def _effect_key(actor: str, msg: str, event: dict[str, Any]) -> str | None:
    """The idempotency key of an activity or compensation event (derived, as the runtime
    derives it: `actor:message:step`, compensations `actor:message:comp:step`)."""
    op = str(event.get("op", ""))
    if not op.startswith(("activity.", "compensation.")):
        return None
    comp = "comp:" if op.startswith("compensation.") else ""
    return f"{actor}:{key_base(msg)}:{comp}{event['step']}"


@dataclass
class AskHere:
    """An ask made by code inside a worker process, with no id (`Simulation.ask_here`)."""

    target: str
    payload: Any
    node: str = ""
    msg_id: str | None = None  # the id the runtime made up for it
    outcome: Any = None  # the result, the error it heard, or CUT_OFF
    answered: bool = False
    stalled: str | None = None  # why it waited STALL_S in a running process without progress


# Processes' clocks read like Unix time: near 0, a clock set back by its skew would find a
# call written elsewhere (due at 0: at once) not due yet, which no real clock does.
EPOCH = 1_700_000_000.0
CUT_OFF = "cut off: its process died"
STALL_TICK_S = 0.5
STALL_S = 4.0  # > the lease TTL and the remote-answer poll's backoff (both bound how late it hears)


class Node:
    """One simulated process: a runtime over its own faulty view of the shared journal."""

    def __init__(self, sim: Simulation, index: int, generation: int) -> None:
        self.sim = sim
        self.name = f"p{index}.{generation}"
        self.rng = random.Random(f"{sim.seed}:{self.name}")
        self.faults = sim.faults
        self.stats = sim.stats
        self.offset = self.rng.uniform(-sim.faults.skew_s, sim.faults.skew_s)
        self.dead = False
        self.can_crash = True
        self._running = asyncio.Event()
        self._running.set()
        hooks = Hooks()
        for point in Hooks.POINTS:
            hooks.on(point, self._hook)
        activities = StubActivities(sim.receiver, rng=self.rng, flaky=sim.faults.flaky,
                                    latency=0.3)
        activities.handlers = sim.activities.handlers  # shared by every node:
        activities.contained = sim.activities.contained
        activities.computations = sim.activities.computations
        activities.before = self.gate
        activities.after = self.gate
        self.rt = ActorRuntime(
            FaultyJournal.around(sim.journal, self),
            activities=activities, clock=self.clock, hooks=hooks, lint=sim.lint,
            poll_interval_s=sim.poll_interval_s, lease_ttl_s=sim.lease_ttl_s,
            owner=f"{HOST_ID}:{os.getpid()}:sim-{sim.seed}-{self.name}",
            max_activations=1 if sim.faults.evict else 10_000,
            idle_timeout_s=2.0 if sim.faults.evict else 300.0,
            durable_retry_threshold_s=0.5, max_deliveries=sim.max_deliveries)
        for cls in sim.actor_types:
            self.rt.register(cls)

    @property
    def faulty(self) -> bool:
        return self.sim.faulty

    def clock(self) -> float:
        return EPOCH + asyncio.get_running_loop().time() + self.offset

    async def gate(self) -> None:
        """Every journal or activity call passes here: a dead process goes no further, a
        frozen one waits until it thaws."""
        if self.dead:
            raise asyncio.CancelledError
        if not self._running.is_set():
            await self._running.wait()
            if self.dead:
                raise asyncio.CancelledError

    def _hook(self, actor: str) -> None:
        if self.faulty and self.can_crash and self.rng.random() < self.faults.crash:
            self.crash("at a commit point")

    def crash(self, where: str) -> None:
        self.kill(where)
        raise asyncio.CancelledError

    def kill(self, where: str) -> None:
        if self.dead:
            return
        self.dead = True
        self.stats["crashes"] += 1
        self.sim.trace.append(f"{self._now():.3f} {self.name} crashed {where}")
        self.rt.abandon()
        self._running.set()

    def freeze(self) -> None:
        self._running.clear()

    @property
    def running(self) -> bool:
        return not self.dead and self._running.is_set()

    def thaw(self) -> None:
        self._running.set()

    def _now(self) -> float:
        return asyncio.get_running_loop().time()


@dataclass
class Report:
    seed: int
    violations: list[str] = field(default_factory=list)
    stats: Counter[str] = field(default_factory=Counter)
    trace: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def raise_for_violations(self) -> None:
        if self.violations:
            lines = "\n  ".join(self.violations[:20])
            raise AssertionError(
                f"simulation seed {self.seed} broke {len(self.violations)} promise(s):\n  "
                f"{lines}\nreproduce: make simulate SEED={self.seed}\n"
                f"last events:\n  " + "\n  ".join(self.trace[-25:]))


Scenario = Callable[["Simulation"], Coroutine[Any, Any, None]]


class Simulation:
    """Run `scenario(sim)` against simulated processes under `faults`, then check.

        sim = Simulation(seed=7, faults=Faults(crash=0.02, storage=0.02, processes=2))
        sim.register(Order)
        sim.activity("charge")                    # or sim.activity("charge", fn)
        report = sim.run(my_scenario)             # my_scenario uses sim.ask/send/signal
        report.raise_for_violations()
    """

    def __init__(self, seed: int, faults: Faults | None = None, *, lease_ttl_s: float = 3.0,
                 lint: bool = True, horizon_s: float = 120.0, settle_s: float = 3600.0,
                 poll_interval_s: float = 0.5, max_deliveries: int = 1_000_000) -> None:
        self.seed = seed
        self.faults = faults if faults is not None else Faults()
        self.rng = random.Random(seed)
        self.lease_ttl_s = lease_ttl_s
        self.lint = lint
        self.horizon_s = horizon_s
        self.settle_s = settle_s
        self.poll_interval_s = poll_interval_s
        self.max_deliveries = max_deliveries
        self.journal = MemoryJournal(fence_epochs=not self.faults.seq_fence_only)
        self.receiver = Receiver()
        self.activities = StubActivities(self.receiver)
        self.actor_types: list[type[Actor]] = []
        self.stats: Counter[str] = Counter()
        self.trace: list[str] = []
        self.faulty = True
        self.nodes: list[Node] = []
        self.client: ActorRuntime | None = None
        self.asked: dict[str, tuple[str, Any]] = {}  # msg id -> (actor, outcome)
        self.asked_here: list[AskHere] = []
        self._generations: Counter[int] = Counter()

    # -- set-up ----------------------------------------------------------------------------
    def register(self, *classes: type[Actor]) -> None:
        self.actor_types.extend(classes)

    def activity(self, name: str, fn: Callable[[Any, str], Any] | None = None, *,
                 contained: bool = False) -> None:
        self.activities.add(name, fn, contained=contained)

    # -- what a scenario calls -----------------------------------------------------------------
    async def ask(self, target: str, handler: str, payload: Any = None, *,
                  msg_id: str) -> Any:
        """Ask as a client would: retry on storage errors with the same id, until answered.
        A business error is returned (not raised) and recorded as the outcome."""
        assert self.client is not None
        self.asked[msg_id] = (target, None)
        while True:
            try:
                result: Any = await self.client.ask(target, handler, payload, msg_id=msg_id,
                                                    timeout=5.0)
            except (errors.StorageError, TimeoutError):
                await asyncio.sleep(0.2)
                continue
            except BUSINESS as exc:
                result = exc
            except errors.NonDeterminismError as exc:
                self.trace.append(f"ask {msg_id}: {exc}")
                result = exc
            self.asked[msg_id] = (target, result)
            return result

    async def ask_here(self, target: str, handler: str, payload: Any) -> Any:
        """Ask as code inside a worker process would: no id (the runtime makes one up), so
        an idle activation there starts the run before its entry is written. The caller
        lives and dies with that process: an ask its death cut off is not asked again
        (nobody knows its id), and its message must have left no trace or completed once.
        While its process runs, the call must always be somewhere (its entry written, or
        its run in progress there) and, once its outcome is durable, answered soon."""
        ask = AskHere(target, payload)
        self.asked_here.append(ask)
        rng = random.Random(f"here:{self.seed}:{len(self.asked_here)}")
        while not any(not n.dead for n in self.nodes):
            await asyncio.sleep(0.2)
        live = [n for n in self.nodes if not n.dead]
        node = rng.choice([n for n in live if target in n.rt.activations] or live)
        ask.node = node.name
        self.stats["asks_here"] += 1
        before = set(node.rt._waiters)
        call = asyncio.ensure_future(node.rt.ask(target, handler, payload))
        await asyncio.sleep(0)  # it made up its id, and started its run or wrote its entry
        made = [mid for key, mid in node.rt._waiters if key == target and (key, mid) not in before]
        ask.msg_id = made[0] if len(made) == 1 else None
        act = node.rt.activations.get(target)
        if act is not None and act.run is not None and act.run.unwritten is not None and \
                act.run.msg_id == ask.msg_id:
            self.stats["early_runs"] += 1
        stalled = 0.0  # running time, in a row, with the call nowhere or its answer unheard
        while not call.done():
            await asyncio.wait({call}, timeout=STALL_TICK_S)
            if node.dead and not call.done():
                call.cancel()
            elif not call.done() and ask.msg_id is not None and node.running:
                why = self._stalled(node, ask)
                stalled = stalled + STALL_TICK_S if why else 0.0
                if stalled >= STALL_S and ask.stalled is None:
                    ask.stalled = why
        if call.cancelled():  # its process died (in the ask's own journal call, or later)
            self.stats["asks_here_cut_off"] += 1
            ask.outcome = CUT_OFF
            return CUT_OFF
        try:
            ask.outcome, ask.answered = call.result(), True
        except BUSINESS as exc:
            ask.outcome, ask.answered = exc, True
        except errors.LoomError as exc:  # heard an error: it may or may not have run
            ask.outcome = exc
        return ask.outcome

    def _stalled(self, node: Node, ask: AskHere) -> str | None:
        """Why an ask still waiting in a running process is not progressing: its outcome is
        durable but unheard, or its call is nowhere (no entry, no run there)."""
        mid = str(ask.msg_id)
        if (ask.target, mid) in self.journal._outcomes:
            return "its outcome is durable, but the asker has not heard it"
        act = node.rt.activations.get(ask.target)
        if mid not in self.journal._inbox.get(ask.target, {}) and not (
                act is not None and act.run is not None and act.run.msg_id == mid):
            return "its call is nowhere: no entry written, no run in progress"
        return None

    async def send(self, target: str, handler: str, payload: Any = None, *,
                   msg_id: str) -> None:
        await self._retrying(lambda: self._client().send(target, handler, payload,
                                                         msg_id=msg_id))

    async def signal(self, target: str, event: str, payload: Any = None, *, msg_id: str,
                     key: str | None = None) -> None:
        await self._retrying(lambda: self._client().signal(target, event, payload,
                                                           msg_id=msg_id, key=key))

    async def cancel(self, target: str, reason: str = "cancelled", *, msg_id: str) -> None:
        await self._retrying(lambda: self._client().cancel(target, reason, msg_id=msg_id))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    def _client(self) -> ActorRuntime:
        assert self.client is not None
        return self.client

    async def _retrying(self, call: Callable[[], Awaitable[Any]]) -> None:
        while True:
            try:
                await call()
                return
            except errors.StorageError:
                await asyncio.sleep(0.2)

    # -- running -------------------------------------------------------------------------------
    def run(self, scenario: Scenario) -> Report:
        """Run the scenario on virtual time, settle, stop, and check the promises."""
        quiet = logging.getLogger("loom")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)
        try:
            return run_virtual(self._run(scenario))
        finally:
            quiet.setLevel(level)

    async def _run(self, scenario: Scenario) -> Report:
        # ids the runtime makes up (asks with none) are the seed's too: the same history
        ids = list(runtime_module._ID_BASE)
        runtime_module._ID_BASE[:] = [random.Random(f"ids:{self.seed}").getrandbits(128), 0]
        try:
            return await self._run_seeded(scenario)
        finally:
            runtime_module._ID_BASE[:] = ids

    async def _run_seeded(self, scenario: Scenario) -> Report:
        client_node = Node(self, 99, 0)
        client_node.can_crash = False
        client_node.rt.types.clear()  # a client: sends and asks, runs no actors
        self.client = client_node.rt
        await self.client.start()
        for i in range(self.faults.processes):
            await self._boot(i)
        chaos = asyncio.get_running_loop().create_task(self._chaos())
        work: asyncio.Future[None] = asyncio.ensure_future(scenario(self))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(work), self.horizon_s)
        # Heal: no more faults; every process alive and running; let everything finish.
        self.faulty = False
        chaos.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await chaos
        for i, node in enumerate(list(self.nodes)):
            node.thaw()
            if node.dead:
                await self._boot(i)
        try:
            await asyncio.wait_for(work, self.settle_s)
        except TimeoutError:
            self.trace.append("the scenario did not finish after the faults stopped")
        await self._quiesce()
        report = Report(self.seed, stats=self.stats, trace=self.trace)
        report.violations = await self.check(finished=work.done() and not work.cancelled())
        for node in self.nodes:
            if not node.dead:
                await node.rt.stop()
        await self.client.stop()
        return report

    async def _boot(self, index: int) -> None:
        self._generations[index] += 1
        node = Node(self, index, self._generations[index])
        if index < len(self.nodes):
            self.nodes[index] = node
        else:
            self.nodes.append(node)
        self.trace.append(f"{asyncio.get_running_loop().time():.3f} {node.name} started "
                          f"(clock {node.offset:+.2f} s)")
        await node.rt.start()

    async def _chaos(self) -> None:
        f, rng = self.faults, self.rng
        while True:
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            for i, node in enumerate(list(self.nodes)):
                if node.dead:
                    if rng.random() < 0.5:
                        await self._boot(i)
                    continue
                roll = rng.random()
                if roll < f.kill:
                    node.kill("by the chaos monkey")
                elif roll < f.kill + f.pause:
                    self.stats["pauses"] += 1
                    self.trace.append(f"{asyncio.get_running_loop().time():.3f} {node.name} "
                                      "frozen")
                    node.freeze()
                    asyncio.get_running_loop().call_later(
                        rng.uniform(0.5, 3.0) * self.lease_ttl_s, node.thaw)
                elif roll < f.kill + f.pause + f.clock_step and f.skew_s:
                    node.offset += rng.uniform(-f.skew_s, f.skew_s)
                    self.stats["clock_steps"] += 1

    async def _quiesce(self) -> None:
        """Run until no message is left unconsumed and no run is in flight (bounded)."""
        for _ in range(int(self.settle_s)):
            if not self._unfinished():
                return
            await asyncio.sleep(1.0)

    def _unfinished(self) -> list[str]:
        left = []
        for actor, box in self.journal._inbox.items():
            for mid, entry in box.items():
                if entry.consumed_at is None and entry.kind == "call":
                    left.append(f"{actor}: {mid}")
        return left

    # -- the promises --------------------------------------------------------------------------
    async def check(self, *, finished: bool = True) -> list[str]:
        out: list[str] = []
        if not finished:
            out.append("the scenario never finished (an ask was never answered)")
        for mid, (actor, outcome) in self.asked.items():
            if outcome is None:
                out.append(f"ask {mid} to {actor} was never answered")
            if isinstance(outcome, errors.NonDeterminismError):
                out.append(f"ask {mid} to {actor}: {outcome}")
        out += [f"message never completed: {m}" for m in self._unfinished()]
        for key, first, second in self.receiver.conflicts:
            out.append(f"key {key} stood for two effects: {first} and {second}")
        for key, first, second in self.activities.computations.conflicts:
            out.append(f"contained step {key} computed again with another input: {first} "
                       f"and {second}")
        recorded: dict[str, str] = {}  # effect key -> kind of the run that recorded it
        compensated_in: dict[str, str] = {}
        given_up: list[str] = []  # key prefixes of dead-lettered runs
        # keys the journal knows, whatever the outcome it recorded: an attempt recorded as
        # failed may still have had its effect once in an activation that had lost its
        # lease (the key keeps it to once; docs/guarantees.md)
        attempted: set[str] = set()
        for actor in sorted(self.journal._commits):
            commits = await self.journal.read(actor)
            kinds: Counter[str] = Counter()
            run_kind: dict[str, str] = {}
            for c in commits:
                if "kind" in c and c.get("run"):
                    kinds[c["run"]["msg"]] += 1
                    run_kind[c["run"]["msg"]] = c["kind"]
                    err = c.get("error") or {}
                    if err.get("type") == "NonDeterminismError" or \
                            err.get("code") == errors.ErrorCode.NON_DETERMINISM.value:
                        out.append(f"{actor}: non-determinism reported: {err.get('message')}")
            for mid, n in kinds.items():
                if n != 1:
                    out.append(f"{actor}: message {mid} completed {n} times")
            given_up += [f"{actor}:{key_base(mid)}:" for mid, kind in run_kind.items()
                         if kind == "dead_lettered"]
            for c in commits:
                msg = (c.get("run") or {}).get("msg")
                for e in c.get("events", []):
                    effect = _effect_key(actor, str(msg), e)
                    if effect is None or e.get("name") in self.activities.contained:
                        continue  # (a contained step has no effect to check)
                    attempted.add(effect)
                    if e["op"] in ("activity.done", "compensation.done"):
                        recorded[effect] = run_kind.get(str(msg), "unfinished")
                    if e["op"] == "compensation.done":
                        compensated_in[effect] = run_kind.get(str(msg), "unfinished")
        for key in self.receiver.applied:
            # a dead-lettered run was given up: the step cut off when its last worker died
            # may have had its effect without a record (documented in docs/guarantees.md)
            if key not in attempted and not key.startswith(tuple(given_up)):
                out.append(f"effect {key} happened but no run recorded it")
        for key in recorded:
            if key not in self.receiver.applied:
                out.append(f"effect {key} was recorded but never reached the receiver")
        for key, kind in compensated_in.items():
            if kind not in ("failed", "rejected", "cancelled", "dead_lettered"):
                out.append(f"compensation {key} ran in a run that ended {kind}")
        out += self._check_sends(recorded)
        out += await self._check_asks_here()
        for node in self.nodes:
            for act in node.rt.activations.values():
                if act.broken is not None:
                    out.append(f"{act.key}: broken: {act.broken}")
        return out

    async def _check_asks_here(self) -> list[str]:
        """Every call entry completed once, and every run ran as the entry it was written
        as, in the inbox's order (an early run's entry is written with its first commit and
        must become the next entry); an ask answered in a worker process ran once, with the
        journal's answer; one cut off ran at most once; none stalled in a running process."""
        out = []
        ends: dict[str, dict[str, Any]] = {}  # msg id -> its completing commit
        for actor in sorted(self.journal._commits):
            box = self.journal._inbox.get(actor, {})
            last_n = 0
            completed: Counter[str] = Counter()
            for c in await self.journal.read(actor):
                message, run = c.get("message"), c.get("run")
                if message is not None and run is not None:
                    entry = box.get(run["msg"])
                    if entry is None:
                        out.append(f"{actor}: message {run['msg']} ran without its entry")
                    elif message.get("n") != entry.n or entry.n <= last_n:
                        out.append(f"{actor}: message {run['msg']} ran as entry "
                                   f"{message.get('n')}, written as {entry.n}, after entry "
                                   f"{last_n}")
                    else:
                        last_n = entry.n
                if "kind" in c and run is not None:
                    ends[run["msg"]] = c
                    completed[run["msg"]] += 1
            for mid, entry in box.items():
                if entry.kind == "call" and entry.consumed_at is not None and \
                        completed[mid] != 1:
                    out.append(f"{actor}: call {mid} was consumed, and completed "
                               f"{completed[mid]} times")
        for ask in self.asked_here:
            what = f"ask {ask.payload} to {ask.target} from {ask.node} ({ask.msg_id})"
            if ask.stalled is not None:
                out.append(f"{what} waited {STALL_S:.0f} s in a running process: {ask.stalled}")
            if not ask.answered or ask.msg_id is None:
                continue
            done = ends.get(ask.msg_id)
            if done is None:
                out.append(f"{what} was answered, but its run never completed")
            elif isinstance(ask.outcome, BaseException):
                if done["kind"] == "completed":
                    out.append(f"{what} heard {ask.outcome!r}, but its run completed")
            elif done["kind"] != "completed" or _canon(done.get("result")) != _canon(ask.outcome):
                out.append(f"{what} was answered {ask.outcome!r}, but its run ended "
                           f"{done['kind']} with {done.get('result')!r}")
        return out

    def _check_sends(self, recorded: dict[str, str]) -> list[str]:
        """Every message an actor sent left only with a completed run."""
        out = []
        sent_by_kind: dict[str, str] = {}
        for seqs in self.journal._commits.values():
            commits = [json.loads(seqs[s]) for s in sorted(seqs)]
            kinds = {c["run"]["msg"]: c["kind"] for c in commits if "kind" in c and c.get("run")}
            for c in commits:
                for e in c.get("events", []):
                    if e["op"] == "send.sent":
                        sent_by_kind[e["msg"]] = kinds.get(c["run"]["msg"], "unfinished")
        for box in self.journal._inbox.values():
            for mid, entry in box.items():
                if entry.kind == "call" and mid in sent_by_kind and \
                        sent_by_kind[mid] != "completed":
                    out.append(f"message {mid} left a run that ended {sent_by_kind[mid]}")
        return out


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True)
