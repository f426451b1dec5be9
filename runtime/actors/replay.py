"""Re-execute an actor's recorded runs against the current code and report divergence.

Every run is replayed from the state before it, with the journal's recorded step
outcomes; nothing is executed for real. A run diverges when the code asks for a
different step (non-determinism), ends in a different state or result, or needs a step
the journal does not have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from runtime import errors
from runtime.actors import delta
from runtime.actors.activation import Activation, Run, _json_copy
from runtime.actors.actor import Actor, ActorRef
from runtime.actors.context import ActorContext
from runtime.actors.hooks import Hooks
from runtime.journal.store import Commit


class _NeedsLiveStep(Exception):
    """The code asked for a step beyond what the journal recorded."""


@dataclass
class RunReport:
    msg_id: str
    handler: str
    start_seq: int
    status: str  # ok | diverged | incomplete
    detail: str = ""


@dataclass
class ReplayReport:
    actor: str
    runs: list[RunReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status != "diverged" for r in self.runs)


class _ReplayRuntime:
    """A host that refuses every effect: only recorded outcomes are allowed."""

    journal: Any = None

    def __init__(self) -> None:
        self.hooks = Hooks()
        self.durable_retry_threshold_s = 0.0
        self.invariants: dict[str, Any] = {}
        self.draining = False
        self.max_deliveries = 1 << 30
        self.now = 0.0
        self.code_version: str | None = None
        self.versions: frozenset[str] | None = None  # replay checks any version's runs

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        raise _NeedsLiveStep("a retry that the journal has no outcome for")

    async def dispatch(self, envelopes: list[dict[str, Any]]) -> None:
        pass

    def resolve(self, *_: Any) -> None:
        pass

    def notify(self, key: str) -> None:
        pass

    def answer_from(self, *_: Any) -> None:
        pass

    def reply_ready(self, *_: Any) -> None:
        pass

    def take_resources(self, key: str) -> None:
        return None

    def contained_version(self, *_: Any) -> None:
        return None

    def settle_later(self, *_: Any) -> None:
        pass

    def lost(self, *_: Any) -> None:
        pass

    def committed(self, key: str) -> None:
        pass

    def counts_delivery(self, key: str) -> bool:
        return False

    def last_failure(self, key: str) -> str | None:
        return None

    def tenant_of(self, key: str) -> str:
        return ""

    async def admit(self, *_: Any) -> Any:
        raise _NeedsLiveStep("an activity call that the journal has no outcome for")

    def check_invariants(self, *_: Any) -> None:
        return None

    async def retry_policy_for(self, *_: Any) -> Any:
        raise _NeedsLiveStep("an activity call that the journal has no outcome for")

    async def run_activity(self, *_: Any, **__: Any) -> Any:
        raise _NeedsLiveStep("an activity call that the journal has no outcome for")

    def envelope(self, *_: Any, **__: Any) -> dict[str, Any]:
        return {}


class _ReplayActivation(Activation):
    """An activation whose effects are all refused: only recorded outcomes are allowed."""

    async def flush(self, run: Run, *, contained: bool = False) -> None:
        if run.pending or run.outbox:
            raise _NeedsLiveStep("a step that the journal did not record")

    async def start_timer(self, run: Run, timer: str, fire_at: float) -> None:
        raise _NeedsLiveStep("a timer that the journal did not record")

    async def wait_timer(self, run: Run, timer: str, step: Any, *,
                         cancellable: bool = True) -> None:
        if cancellable:
            self.check_cancelled(run)
        raise _NeedsLiveStep(f"timer {timer} had not fired when the journal ends")

    async def wait_event(self, run: Run, step: Any, event: str, timer: str | None,
                         op: str = "wait.event", key: str | None = None) -> Any:
        self.check_cancelled(run)
        raise _NeedsLiveStep(f"event {event!r} had not arrived when the journal ends")


def _runs(commits: list[Commit]) -> list[tuple[list[Commit], Any, Any]]:
    """Split commits into runs, each with the state before it and the state its
    completing commit recorded (a snapshot, or the state before with the delta applied;
    None for a run the journal does not complete)."""
    out: list[tuple[list[Commit], Any, Any]] = []
    state: Any = None
    current: list[Commit] = []
    for commit in commits:
        if commit.get("run") is None:
            continue
        current.append(commit)
        if "state" in commit or "delta" in commit:
            after = (commit["state"] if "state" in commit
                     else delta.apply(_json_copy(state), commit["delta"]))
            out.append((current, state, after))
            state, current = after, []
    if current:
        out.append((current, state, None))
    return out


async def replay_commits(cls: type[Actor], key: str, commits: list[Commit]) -> ReplayReport:
    report = ReplayReport(key)
    rt = _ReplayRuntime()
    for run_commits, before, after in _runs(commits):
        first = run_commits[0]
        message = first.get("message")
        last = run_commits[-1]
        msg_id = first["run"]["msg"]
        handler = str((message or {}).get("handler", "?"))
        if message is None:
            report.runs.append(RunReport(msg_id, handler, first["seq"], "diverged",
                                         "the run's first commit lacks its message"))
            continue
        act = _ReplayActivation(rt, ActorRef.parse(key), cls)
        act.actor.state = act.actor.initial_state() if before is None else None
        if before is not None:
            act.actor.load_state(_json_copy(before))
        run = Run(msg=message, start_seq=first["seq"], ts=first["run"]["ts"], announced=True)
        for c in run_commits:
            for event in c.get("events", []):
                if event["op"] == "run.cancelled":
                    run.cancelled = str(event.get("reason") or "cancelled")
                    run.cancel_at = dict(event.get("at") or {})
                    continue
                run.recorded.setdefault(event["step"], []).append(event)
        run.replay_until = max((k for k in run.recorded if isinstance(k, int)), default=-1) + 1
        rt.now = first["run"]["ts"]
        ctx = ActorContext(act, run)
        method = act.actor.handlers.get(handler)
        if method is None:
            report.runs.append(RunReport(msg_id, handler, run.start_seq, "diverged",
                                         f"handler {handler!r} no longer exists"))
            continue
        status, detail = "ok", ""
        try:
            result = await getattr(act.actor, method)(ctx, message.get("payload"))
            if run.step < run.replay_until:
                status, detail = "diverged", (f"the code returned at step {run.step} but the "
                                              f"journal has {run.replay_until} steps")
            elif after is not None and last.get("kind") == "completed":
                if _canon(act.actor.dump_state()) != _canon(after):
                    status, detail = "diverged", "the final state differs from the journal"
                elif _canon(result) != _canon(last.get("result")):
                    status, detail = "diverged", "the result differs from the journal"
                else:  # would today's invariants have refused this recorded step?
                    events = [e for c in run_commits for e in c.get("events", [])]
                    verdict = _invariants(act, before, after, events)
                    if verdict is not None:
                        status, detail = "diverged", verdict
            elif after is None:
                status, detail = "incomplete", "the journal ends before this run completed"
        except errors.NonDeterminismError as exc:
            status, detail = "diverged", exc.message
        except _NeedsLiveStep as exc:
            status = "incomplete" if after is None else "diverged"
            detail = f"the code asks for {exc}"
        except Exception as exc:
            if last.get("kind") not in ("failed", "rejected", "cancelled", "dead_lettered"):
                status, detail = "diverged", f"the handler now raises {type(exc).__name__}: {exc}"
        report.runs.append(RunReport(msg_id, handler, run.start_seq, status, detail))
    return report


def _invariants(act: Activation, before: Any, after: Any,
                events: list[dict[str, Any]]) -> str | None:
    for name, attr in act.actor.invariants.items():
        try:
            verdict = getattr(act.actor, attr)(before, after, events)
        except Exception as exc:
            verdict = f"raised {type(exc).__name__}: {exc}"
        if verdict is False or isinstance(verdict, str):
            why = verdict if isinstance(verdict, str) else "returned False"
            return f"invariant {name!r} would refuse this recorded step: {why}"
    return None


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
