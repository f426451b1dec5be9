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

from runtime import errors
from runtime.actors import Actor, ActorContext, ActorRef, handler
from runtime.actors.context import Saga
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


class WorkflowActor(Actor, type_name="workflow"):
    """state: workflow ref, status, the variables so far, and the finished step ids."""

    def initial_state(self) -> Any:
        return {"workflow": None, "status": "new", "vars": {}, "done": [], "error": None}

    @handler
    async def start(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        wf = Workflow.model_validate(payload["workflow"])
        # A variable set only on some paths (one branch of a condition) reads as null.
        self._unset = {var: None for var in declared_vars(wf.steps)}
        self.state.update(workflow=wf.ref, status="running", vars={"input": payload.get("input")})
        saga = ctx.saga()
        try:
            await self._steps(ctx, wf.steps, self.state["vars"], saga)
            output = interpolate(wf.output, self._view(self.state["vars"])) \
                if wf.output is not None \
                else {k: v for k, v in self.state["vars"].items() if k != "input"}
        except (errors.NonDeterminismError, errors.JournalConflict):
            raise  # the runtime stops this actor; compensating now would act on a guess
        except (errors.LoomError, ExpressionError) as exc:
            undone = [activity for activity, _, _ in reversed(saga.steps)]
            await saga.compensate()
            message = exc.message if isinstance(exc, errors.LoomError) else str(exc)
            self.state.update(status="failed", error={
                "type": type(exc).__name__, "message": message, "compensated": undone})
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
                saga.add(comp.activity, interpolate(comp.input, self._view(scope)),
                         version=comp.version)
        return last

    async def _step(self, ctx: ActorContext, step: Step, scope: dict[str, Any],
                    saga: Saga) -> Any:
        view = self._view(scope)
        if isinstance(step, ActivityStep):
            return await ctx.call_activity(step.activity, interpolate(step.input, view),
                                           version=step.version, retry=step.retry,
                                           timeout_ms=step.timeout_ms)
        if isinstance(step, AgentStep):
            ref = ActorRef(step.type, str(interpolate(step.actor_id, view)))
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
