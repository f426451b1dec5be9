"""`ActorContext`: everything non-pure an actor does goes through it, so it can be replayed.

Each call that has an effect or waits is a *step* with a position in its run. Live, a
step's outcome is appended to the run's journal events; on replay the recorded outcome
is returned instead, after checking that the code asks for the same step (kind, name
and a digest of its arguments) at the same position.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_json

from runtime import errors
from runtime.actors.actor import ActorRef
from runtime.actors.resilience import RetryPlan
from schemas.manifest import RetryPolicy

if TYPE_CHECKING:
    from runtime.actors.activation import Activation, Run


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)


def canonical_json(value: Any) -> bytes:
    """JSON with sorted keys and no whitespace; refuses what is not JSON (sets, objects)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        return _CANONICAL.encode(value).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"step arguments must be JSON (the journal records them): {exc}") \
            from None


def digest(value: Any) -> str:
    """A short fingerprint of JSON arguments, the same in every process and on replay
    (keys sorted, so a dict built in another order still matches)."""
    return hashlib.blake2b(canonical_json(value), digest_size=8).hexdigest()


def _used(host: Any, key: str) -> dict[str, Any]:
    """`resources` for an activity event: what its attempts since the last event used."""
    used = host.take_resources(key)
    return {"resources": used} if used else {}


_quick = hashlib.blake2b
_DONE = ("activity.done", "compensation.done")  # by `compensation`


def quick_digest(value: Any) -> str:
    """The fingerprint of the arguments exactly as built (key order included): cheap, and
    equal bytes are equal arguments. A replay compares this first and falls back to the
    canonical digest only when it differs."""
    if type(value) is not dict and isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        return _quick(to_json(value), digest_size=8).hexdigest()
    except PydanticSerializationError as exc:  # an object JSON has no form for
        raise TypeError(f"step arguments must be JSON (the journal records them): {exc}") \
            from None


class Fingerprint(NamedTuple):
    quick: str
    canon: str


_fingerprint = tuple.__new__  # Fingerprint(quick, canon) without NamedTuple's Python __new__


def error_record(exc: errors.LoomError) -> dict[str, Any]:
    return {"type": type(exc).__name__, "code": exc.code.value, "message": exc.message,
            "retryable": exc.retryable}


def activity_failed(name: str, attempts: int, message: str, code: str,
                    **where: Any) -> errors.ActivityFailed:
    """The error a handler sees when an activity gave up: built the same way live and on
    replay, so a handler that keeps its text in state replays to the same state."""
    return errors.ActivityFailed(f"{name} failed after {attempts} attempt(s): {message}",
                                 cause_code=code, attempts=attempts, **where)


def raise_recorded(record: dict[str, Any], name: str, **kw: Any) -> None:
    err = record["error"]
    raise activity_failed(name, record.get("attempts", 1), err["message"],
                          err.get("code", "unknown"), **kw)


class Saga:
    """Compensations registered during a run; run in reverse order when the block fails."""

    def __init__(self, ctx: ActorContext) -> None:
        self.ctx = ctx
        self.steps: list[tuple[str, Any, str | None]] = []

    def add(self, activity: str, input: Any, *, version: str | None = None) -> None:
        self.steps.append((activity, input, version))

    async def compensate(self) -> None:
        """Every compensation runs, in reverse order, even after one fails (its failure is
        raised once all have been tried): one undo that cannot be done must not leave the
        others' effects in place."""
        failed: Exception | None = None
        while self.steps:
            activity, input, version = self.steps.pop()
            try:
                await self.ctx.call_activity(activity, input, version=version,
                                             compensation=True)
            except errors.NonDeterminismError:
                raise  # the replay diverged: nothing more may run live on a guess
            except Exception as exc:
                failed = failed or exc
        if failed is not None:
            raise failed

    async def __aenter__(self) -> Saga:
        return self

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        # Only a failure of the run compensates: a lost activation (storage error, fenced)
        # or a cancelled task is not one; the run resumes elsewhere by replay.
        if isinstance(exc, Exception):
            await self.compensate()


class ActorContext:
    def __init__(self, activation: Activation, run: Run) -> None:
        self._act = activation
        self._run = run
        self.actor: ActorRef = activation.ref
        self._rng: random.Random | None = None
        self._prefix: str | None = None

    def branch(self, name: str) -> ActorContext:
        """A context for one of several concurrent branches (e.g. a WDL parallel step).

        Steps of a branch are numbered in their own namespace (`<name>/0`, `<name>/1`, ...)
        so interleaving between branches never changes which record a step replays. Asking
        for the same branch twice continues its numbering; its random numbers come from
        its own path.
        """
        if "/" in name:
            raise ValueError(f"branch name {name!r} must not contain '/'")
        child = ActorContext(self._act, self._run)
        child._prefix = f"{self._prefix or ''}{name}/"
        return child

    # -- deterministic substitutes -----------------------------------------------------------
    def now(self) -> datetime:
        """The run's timestamp, recorded in its first commit: the same on every replay."""
        return datetime.fromtimestamp(self._run.ts, UTC)

    def random(self) -> random.Random:
        """A generator seeded from (actor, message id, branch path): the same on replay,
        whatever else arrived first, and different in every branch."""
        if self._rng is None:
            self._rng = random.Random(f"{self._act.key}:{self._run.msg_id}:{self._prefix or ''}")
        return self._rng

    def uuid(self) -> uuid.UUID:
        return uuid.UUID(int=self.random().getrandbits(128), version=4)

    def next_step_recorded(self) -> bool:
        """Whether the journal already holds the step this context will allocate next."""
        return self._next_step() in self._run.recorded

    def next_step_name(self) -> str | None:
        """The name the journal recorded for the step this context will allocate next (an
        activity's, or "<actor>.<handler>" of an ask or send); None if it holds none."""
        recorded = self._run.recorded.get(self._next_step())
        return str(recorded[0]["name"]) if recorded else None

    def _next_step(self) -> Any:
        return (self._run.step if self._prefix is None
                else f"{self._prefix}{self._run.counters.get(self._prefix, 0)}")

    @property
    def recorded_steps(self) -> bool:
        """Whether the journal holds any step of this run (main line or branch): False for
        a run starting fresh, True for one resumed after it did something."""
        return bool(self._run.recorded)

    @property
    def replaying(self) -> bool:
        return self._run.step < self._run.replay_until

    # -- steps -----------------------------------------------------------------------------
    def _begin(self, kind: str, name: str, args: Any
               ) -> tuple[Any, list[dict[str, Any]], Fingerprint]:
        """Allocate the next step; return it with its recorded events (checked for identity).

        Live, the arguments must be JSON (refused otherwise). On replay the recorded step
        must have the same kind, name and arguments: the same bytes as built, or the same
        canonical JSON (a dict built in another key order is the same argument)."""
        run = self._run
        step: Any
        if self._prefix is None:
            step = run.step
            run.step += 1
        else:
            index = run.counters.get(self._prefix, 0)
            run.counters[self._prefix] = index + 1
            step = f"{self._prefix}{index}"
            run.visited.add(step)
        recorded = run.recorded.get(step)
        if recorded:
            first = recorded[0]
            op: str = first["op"]
            quick = quick_digest(args)
            same = (op.startswith(kind) and op[len(kind):len(kind) + 1] == "."
                    and first["name"] == name
                    and (first["digest"] == quick
                         or (first.get("canon") or first["digest"]) == digest(args)))
            if not same:
                have = f"{op.split('.')[0]} {first['name']!r} ({first['digest']})"
                want = f"{kind} {name!r} ({quick})"
                raise errors.NonDeterminismError(actor=self._act.key, seq=run.start_seq,
                                                 step=step, recorded=have, requested=want)
            return step, recorded, _fingerprint(Fingerprint, (quick, first.get("canon", "")))
        recorded = []
        if run.cancelled is not None and kind != "compensation":
            prefix = self._prefix or ""
            index = step if not prefix else int(str(step)[len(prefix):])
            if index >= run.cancel_at.get(prefix, run.cancel_at.get("*", 0)):
                raise errors.RunCancelled(f"{self._act.key}: run {run.msg_id} cancelled: "
                                          f"{run.cancelled}")
        quick = quick_digest(args)
        canon = digest(args)  # also refuses arguments that are not JSON
        fingerprint = Fingerprint(quick, "" if canon == quick else canon)
        if isinstance(step, int) and step < run.replay_until:
            raise errors.NonDeterminismError(
                actor=self._act.key, seq=run.start_seq, step=step, recorded="no step",
                requested=f"{kind} {name!r} ({fingerprint.quick})")
        return step, recorded, fingerprint

    def _record(self, step: Any, op: str, name: str, fp: Fingerprint,
                **fields: Any) -> dict[str, Any]:
        record = {"step": step, "op": op, "name": name, "digest": fp.quick, **fields}
        if fp.canon:  # only when the arguments' canonical JSON differs from their bytes
            record["canon"] = fp.canon
        self._run.add_event(record)
        return record

    async def call_activity(self, name: str, input: Any, *, version: str | None = None,
                            retry: RetryPolicy | dict[str, Any] | None = None,
                            timeout_ms: int | None = None, output_model: Any = None,
                            compensation: bool = False) -> Any:
        """Run an activity with its retry policy and circuit breaker; durable outcome.

        The idempotency key is `actor:message:step` (compensations: `...:comp:step`), the
        same on every re-execution, so receivers can deduplicate.
        """
        if type(input) is not dict and isinstance(input, BaseModel):
            input = input.model_dump(mode="json")
        args = {"input": input, "version": version}
        run = self._run
        if self._prefix is None:  # the replay's common case, checked inline: a main-line
            recorded = run.recorded.get(run.step)  # step recorded once, done, same bytes
            if recorded is not None and len(recorded) == 1:
                done = recorded[0]
                try:
                    same = (done["op"] == _DONE[compensation] and done["name"] == name
                            and done["digest"] == _quick(to_json(args), digest_size=8).hexdigest())
                except PydanticSerializationError:  # the long way says what is wrong
                    same = False
                if same:
                    run.step += 1
                    result = done["result"]
                    return result if output_model is None else output_model.model_validate(result)
        kind = "compensation" if compensation else "activity"
        step, recorded, fp = self._begin(kind, name, args)
        if recorded and recorded[-1]["op"].endswith(".done"):
            result = recorded[-1]["result"]
            return result if output_model is None else output_model.model_validate(result)
        key = f"{self._act.key}:{self._run.base}:{'comp:' if compensation else ''}{step}"
        where = {"activity": name, "version": version, "idempotency_key": key}
        attempts = 0
        for record in recorded:
            if record["op"].endswith(".done"):
                return self._shape(record["result"], output_model)
            if record["op"].endswith(".failed"):
                raise_recorded(record, name, **where)
            if record["op"].endswith(".retry"):
                attempts = record["attempt"]
                if not any(r["op"] == "timer.fired" and r.get("timer") == record["timer"]
                           for r in recorded):
                    await self._act.wait_timer(self._run, record["timer"], step,
                                               cancellable=not compensation)
        rt = self._act.host
        policy = RetryPolicy.model_validate(retry) if isinstance(retry, dict) else retry
        if policy is None:
            policy = await rt.retry_policy_for(name, version, rt.tenant_of(self._act.key))
        plan = RetryPlan(policy)
        while True:
            attempts += 1
            # Earlier outcomes are durable before a new effect. An activity that reaches
            # nothing outside the process (no HTTP, no log) has none: they may wait for a
            # later commit (`flush_due`), and a crash runs it again, under the same key, on
            # the version judged here.
            contained = rt.contained_version(name, version)
            await self._act.flush(self._run, contained=contained is not None)
            if contained is None and self._run.unwritten is not None:  # (take_unwritten)
                await self._act.written(self._run)
            run_version = version if contained is None else contained
            await self._act.before_live_effect(self._run)
            rt.hooks.fire("before_activity", self._act.key)
            self._run.inflight += 1
            tenant = rt.tenant_of(self._act.key)
            release = await rt.admit(name, tenant, key)  # fleet-wide limits: wait, not fail
            failure: errors.LoomError | None = None
            try:
                result = await rt.run_activity(name, input, version=run_version,
                                               idempotency_key=key, timeout_ms=timeout_ms,
                                               tenant=tenant)
            except errors.LoomError as exc:
                failure = exc
            finally:  # whatever ends the call (a cancellation too) frees its slot
                if release is not None:
                    await asyncio.shield(release())
            if failure is not None:
                self._run.inflight -= 1
                if not plan.should_retry(failure, attempts):
                    self._record(step, f"{kind}.failed", name, fp,
                                 error=error_record(failure), attempts=attempts,
                                 **_used(rt, key))
                    raise activity_failed(name, attempts, failure.message, failure.code.value,
                                          **where) from failure
                delay = plan.delay(attempts)
                if delay <= rt.durable_retry_threshold_s:
                    await rt.sleep(delay)
                    continue
                timer = f"timer:{self._run.msg_id}:{step}:{attempts}"
                self._record(step, f"{kind}.retry", name, fp,
                             attempt=attempts, error=error_record(failure), timer=timer,
                             fire_at=rt.clock() + delay, **_used(rt, key))
                await self._act.start_timer(self._run, timer, rt.clock() + delay)
                await self._act.wait_timer(self._run, timer, step, cancellable=not compensation)
                continue
            self._run.inflight -= 1
            rt.hooks.fire("after_activity", self._act.key)
            self._record(step, f"{kind}.done", name, fp,
                         result=result, attempts=attempts, **_used(rt, key))
            return self._shape(result, output_model)

    @staticmethod
    def _shape(result: Any, output_model: Any) -> Any:
        return output_model.model_validate(result) if output_model is not None else result

    async def sleep(self, seconds: float) -> None:
        """A durable timer: survives restarts; the run resumes when it fires."""
        step, recorded, fp = self._begin("timer", "sleep", seconds)
        if recorded:
            timer = recorded[0]["timer"]
            if any(r["op"] == "timer.fired" for r in recorded):
                return
        else:
            timer = f"timer:{self._run.msg_id}:{step}"
            fire_at = self._act.host.clock() + seconds
            self._record(step, "timer.start", "sleep", fp, timer=timer, fire_at=fire_at)
            await self._act.start_timer(self._run, timer, fire_at)
        await self._act.wait_timer(self._run, timer, step)

    async def wait_for_event(self, name: str, timeout: float | None = None, *,
                             key: str | None = None) -> Any:
        """Wait for `signal(actor, name, payload)`; raise EventTimeout after `timeout` s.

        The wait takes only events sent after this run's message arrived; with `key`, it
        takes only events signalled with that correlation key (sent at any time).
        """
        step, recorded, fp = self._begin("wait", name, timeout if key is None
                                         else {"timeout": timeout, "key": key})
        for r in recorded:
            if r["op"] == "wait.event":
                return r["payload"]
            if r["op"] == "wait.timeout":
                raise errors.EventTimeout(f"no {name!r} event within {timeout} s")
        if recorded:
            timer = recorded[0].get("timer")
        else:
            timer = f"timer:{self._run.msg_id}:{step}" if timeout is not None else None
            fire_at = self._act.host.clock() + timeout if timeout is not None else None
            self._record(step, "wait.start", name, fp, timer=timer, fire_at=fire_at)
            if timer is not None and fire_at is not None:
                await self._act.start_timer(self._run, timer, fire_at)
            else:
                await self._act.flush(self._run)
        outcome = await self._act.wait_event(self._run, step, name, timer, key=key)
        if outcome is _TIMED_OUT:
            raise errors.EventTimeout(f"no {name!r} event within {timeout} s")
        return outcome

    async def send(self, target: ActorRef | str, handler: str, payload: Any = None) -> str:
        """Send a message. It is journaled now and leaves with the commit that completes
        this run; a run that fails or is rejected sends nothing. Returns its id."""
        ref = target if isinstance(target, ActorRef) else ActorRef.parse(target)
        step, recorded, fp = self._begin("send", f"{ref}.{handler}", payload)
        msg_id = f"{self._act.key}:{self._run.base}:{step}"
        if recorded:
            env = recorded[0].get("env")
        else:
            env = self._act.host.envelope(ref, handler, payload, msg_id=msg_id,
                                          sender=self._act.key)
            self._record(step, "send.sent", f"{ref}.{handler}", fp, msg=msg_id, env=env)
        if env is not None:
            self._run.held.append(env)
        return msg_id

    async def spawn(self, type_: str, id_: str, payload: Any = None, *,
                    handler: str = "start") -> ActorRef:
        """Start a child actor by sending it `handler` (default "start") with `payload`."""
        ref = ActorRef(type_, id_)
        await self.send(ref, handler, payload)
        return ref

    async def ask(self, target: ActorRef | str, handler: str, payload: Any = None, *,
                  timeout: float | None = None) -> Any:
        """Request/response: send, then wait durably for the handler's result."""
        ref = target if isinstance(target, ActorRef) else ActorRef.parse(target)
        step, recorded, fp = self._begin("ask", f"{ref}.{handler}", payload)
        if not recorded and str(ref) == self._act.key:  # its reply would wait for this run
            raise errors.HandlerFailed(f"{ref} asks itself ({handler}): the ask would wait "
                                       "for the run that makes it, for ever",
                                       error_type="SelfAsk")
        msg_id = f"{self._act.key}:{self._run.base}:{step}"
        reply = f"reply:{msg_id}"
        for r in recorded:
            if r["op"] == "ask.reply":
                return _unwrap_reply(r["payload"], ref, handler)
            if r["op"] == "wait.timeout":
                raise errors.EventTimeout(f"no reply from {ref}.{handler} within {timeout} s")
        timer = None
        if recorded:
            timer = recorded[0].get("timer")
        else:
            fire_at = None
            if timeout is not None:
                timer = f"timer:{self._run.msg_id}:{step}"
                fire_at = self._act.host.clock() + timeout
            self._record(step, "ask.sent", f"{ref}.{handler}", fp, msg=msg_id, timer=timer)
            self._run.outbox.append(self._act.host.envelope(
                ref, handler, payload, msg_id=msg_id, sender=self._act.key,
                reply_to=self._act.key))
            if timer is not None and fire_at is not None:
                await self._act.start_timer(self._run, timer, fire_at)
            else:
                await self._act.flush(self._run)
        outcome = await self._act.wait_event(self._run, step, reply, timer, op="ask.reply")
        if outcome is _TIMED_OUT:
            raise errors.EventTimeout(f"no reply from {ref}.{handler} within {timeout} s")
        return _unwrap_reply(outcome, ref, handler)

    def saga(self) -> Saga:
        """`async with ctx.saga() as saga: ... saga.add("cancel_x", {...})`."""
        return Saga(self)


class _TimedOut:
    pass


_TIMED_OUT = _TimedOut()


def _unwrap_reply(payload: Any, ref: ActorRef, handler: str) -> Any:
    if isinstance(payload, dict) and "error" in payload:
        err = payload["error"]
        raise errors.HandlerFailed(f"{ref}.{handler} failed: {err.get('message')}",
                                   error_type=err.get("type", "Error"),
                                   error_code=err.get("code"))
    return payload.get("result") if isinstance(payload, dict) else payload
