"""Run a WDL workflow as a durable actor (type "workflow").

An instance is started with its whole definition in the `start` message, so the journal
keeps the version it started with and replay re-interprets exactly that definition. The
interpreter is deterministic: every effect or wait goes through the actor context, and
parallel branches run in their own step namespaces.
"""

from __future__ import annotations

import asyncio
import logging
from collections import ChainMap
from typing import Any

from pydantic import ValidationError

from runtime import errors
from runtime.actors import Actor, ActorContext, ActorRef, handler
from runtime.actors.actor import TENANT_SEP as ACTOR_SEP
from runtime.actors.context import Saga
from schemas.json_schema import compile_schema
from schemas.wdl import (
    ActivityStep,
    AgentStep,
    ConditionStep,
    ParallelStep,
    SleepStep,
    Step,
    WaitStep,
    Workflow,
)
from wdl.expressions import ExpressionError, evaluate, interpolate
from wdl.validate import declared_vars, output_var

log = logging.getLogger("loom.wdl")


class _Aborted(Exception):
    """A parallel branch stopped because a sibling failed."""


def _conforms(schema: dict[str, Any] | None, value: Any, what: str) -> None:
    if schema is None:
        return
    try:
        compile_schema(schema).validate_python(value)
    except (ValidationError, ValueError, RecursionError) as exc:
        problems = exc.errors() if isinstance(exc, ValidationError) else [
            {"loc": (), "msg": "nests too deeply" if isinstance(exc, RecursionError)
             else str(exc)}]
        shown = "; ".join(f"{'/'.join(map(str, p['loc'])) or '(root)'}: {p['msg']}"
                          for p in problems[:5])
        raise errors.WorkflowFailed(f"the workflow's {what} does not match its {what}_schema: "
                                    f"{shown}") from None


def _tenant(key: str) -> str | None:
    """The tenant of an actor address, read as the service reads it
    (runtime/service/tenancy.py split_actor): `<type>/<tenant>~<id>`, else None."""
    _, _, id_ = key.partition("/")
    tenant, sep, _ = id_.partition(ACTOR_SEP)
    return tenant if sep and tenant else None


def _confined(own: ActorRef, type_: str, actor_id: str) -> ActorRef:
    """The actor an agent step addresses. An instance of a tenant (`<tenant>~<id>`, see
    runtime/service/tenancy.py) reaches that tenant's actors only; no step asks its own
    instance (it would wait for itself for ever)."""
    tenant, sep, _ = own.id.partition(ACTOR_SEP)
    if sep:  # (an id holding the separator itself stays inside: acme~x~y is acme's)
        actor_id = f"{tenant}{ACTOR_SEP}{actor_id}"
    ref = ActorRef(type_, actor_id)
    # The schema allows no '/' in a type; were one there, the tenant would move with it.
    if sep and _tenant(str(ref)) != _tenant(str(own)):
        raise errors.WorkflowFailed(f"an agent step of {own} addresses {ref}, outside its "
                                    "tenant")
    if ref == own:
        raise errors.WorkflowFailed(f"an agent step of {own} asks {own} itself: it would "
                                    "wait for itself for ever")
    return ref


def _agent_target(ctx: ActorContext, type_: str, actor_id: str, handler: str) -> ActorRef:
    """The actor an agent step asks: confined (`_confined`), except that a step recorded
    before confinement existed replays with the unconfined actor it asked then, when the
    journal holds exactly that one (and it is not this instance: a self-ask fails, as it
    does live). Otherwise the confined ask: if the record differs, the replay's identity
    check says so."""
    unconfined = ActorRef(type_, actor_id)
    if unconfined != ctx.actor and ctx.next_step_name() == f"{unconfined}.{handler}":
        return unconfined  # what the run asked; replaying it sends nothing new
    return _confined(ctx.actor, type_, actor_id)


class WorkflowActor(Actor, type_name="workflow"):
    """state: workflow ref, status, the variables so far, and the finished step ids."""

    def initial_state(self) -> Any:
        return {"workflow": None, "status": "new", "vars": {}, "done": [], "error": None}

    @handler
    async def start(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        wf = Workflow.model_validate(payload["workflow"])
        # A variable set only on some paths (one branch of a condition) reads as null.
        self._unset = {var: None for var in declared_vars(wf.steps)}
        self._uncompensated: list[str] = []
        self.state.update(workflow=wf.ref, status="running", vars={"input": payload.get("input")})
        saga = ctx.saga()
        try:
            if not ctx.recorded_steps:  # a fresh run (not one started before this check
                _conforms(wf.input_schema, payload.get("input"), "input")  # existed)
            await self._steps(ctx, wf.steps, self.state["vars"], saga)
            output = interpolate(wf.output, self._view(self.state["vars"])) \
                if wf.output is not None \
                else {k: v for k, v in self.state["vars"].items() if k != "input"}
            _conforms(wf.output_schema, output, "output")
        except (errors.NonDeterminismError, errors.JournalConflict):
            raise  # the runtime stops this actor; compensating now would act on a guess
        except Exception as exc:  # whatever stopped it, what was done is undone
            undone = [activity for activity, _, _ in reversed(saga.steps)]
            await saga.compensate()
            message = exc.message if isinstance(exc, errors.LoomError) else \
                str(exc) if isinstance(exc, ExpressionError) else f"{type(exc).__name__}: {exc}"
            error = {"type": type(exc).__name__, "message": message, "compensated": undone}
            if self._uncompensated:  # done, but their compensation's input failed to build
                error["uncompensated"] = list(self._uncompensated)
            self.state.update(status="failed", error=error)
            log.info("workflow %s failed: %s", ctx.actor, message)
            return {"status": "failed", "error": self.state["error"]}
        self.state.update(status="completed", output=output)
        return {"status": "completed", "output": output}

    def _view(self, scope: dict[str, Any]) -> ChainMap[str, Any]:
        return ChainMap(scope, self._unset)

    async def _steps(self, ctx: ActorContext, steps: list[Step], scope: dict[str, Any],
                     saga: Saga, abort: asyncio.Event | None = None) -> Any:
        last: Any = None
        for step in steps:
            if abort is not None and abort.is_set() and not ctx.next_step_recorded():
                raise _Aborted()  # a sibling branch failed: start nothing new
            last = await self._step(ctx, step, scope, saga)
            var = output_var(step)
            if var is not None:
                scope[var] = last
            self.state["done"].append(step.id)
            log.info("workflow %s: step %s (%s) done", ctx.actor, step.id, step.kind)
            if step.compensation is not None:
                comp = step.compensation
                try:
                    comp_input = interpolate(comp.input, self._view(scope))
                except ExpressionError:
                    self._uncompensated.append(step.id)  # the failure report names it
                    raise
                saga.add(comp.activity, comp_input, version=comp.version)
        return last

    async def _step(self, ctx: ActorContext, step: Step, scope: dict[str, Any],
                    saga: Saga) -> Any:
        view = self._view(scope)
        if isinstance(step, ActivityStep):
            return await ctx.call_activity(step.activity, interpolate(step.input, view),
                                           version=step.version, retry=step.retry,
                                           timeout_ms=step.timeout_ms)
        if isinstance(step, AgentStep):
            actor_id = str(interpolate(step.actor_id, view))
            ref = _agent_target(ctx, step.type, actor_id, step.handler)
            return await ctx.ask(ref, step.handler, interpolate(step.input, view),
                                 timeout=step.timeout_s)
        if isinstance(step, ParallelStep):
            original = dict(scope)
            scopes = [dict(scope) for _ in step.branches]
            # Each branch registers its compensations on its own saga; they join the
            # workflow's in branch order, so undoing runs in reverse branch index, then
            # reverse step, whatever order the branches finished in (replay-safe).
            sagas = [ctx.saga() for _ in step.branches]
            abort = asyncio.Event()

            async def branch(i: int, steps: list[Step]) -> Any:
                try:
                    return await self._steps(ctx.branch(f"{step.id}.{i}"), steps, scopes[i],
                                             sagas[i], abort)
                except BaseException:
                    abort.set()
                    raise

            results = await asyncio.gather(*[branch(i, b) for i, b in enumerate(step.branches)],
                                           return_exceptions=True)
            for branch_saga in sagas:
                saga.steps.extend(branch_saga.steps)
            failures = [r for r in results if isinstance(r, BaseException)
                        and not isinstance(r, _Aborted)]
            if failures:
                raise failures[0]
            for branch_scope in scopes:  # what each branch wrote, later branches last
                scope.update({k: v for k, v in branch_scope.items()
                              if k not in original or v is not original[k]})
            return list(results)
        if isinstance(step, ConditionStep):
            chosen = step.then if evaluate(step.if_, view) else step.else_
            return await self._steps(ctx, chosen, scope, saga)
        if isinstance(step, WaitStep):
            try:
                return await ctx.wait_for_event(step.event, timeout=step.timeout_s)
            except errors.EventTimeout:
                if step.on_timeout is None:
                    raise
                await self._steps(ctx, step.on_timeout, scope, saga)
                return None
        if isinstance(step, SleepStep):
            await ctx.sleep(step.seconds)
            return None
        raise errors.WorkflowFailed(f"unknown step kind {step!r}")  # pragma: no cover
