"""Run a WDL workflow as a durable actor (type "workflow").

An instance is started with its whole definition in the `start` message, so the journal
keeps the version it started with and replay re-interprets exactly that definition. The
interpreter is deterministic: every effect or wait goes through the actor context, and
parallel branches run in their own step namespaces.
"""

from __future__ import annotations

import asyncio
import logging
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
from wdl.validate import output_var

log = logging.getLogger("loom.wdl")


class WorkflowActor(Actor, type_name="workflow"):
    """state: workflow ref, status, the variables so far, and the finished step ids."""

    def initial_state(self) -> Any:
        return {"workflow": None, "status": "new", "vars": {}, "done": [], "error": None}

    @handler
    async def start(self, ctx: ActorContext, payload: dict[str, Any]) -> dict[str, Any]:
        wf = Workflow.model_validate(payload["workflow"])
        self.state.update(workflow=wf.ref, status="running", vars={"input": payload.get("input")})
        saga = ctx.saga()
        try:
            await self._steps(ctx, wf.steps, self.state["vars"], saga)
            output = interpolate(wf.output, self.state["vars"]) if wf.output is not None \
                else {k: v for k, v in self.state["vars"].items() if k != "input"}
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

    async def _steps(self, ctx: ActorContext, steps: list[Step], scope: dict[str, Any],
                     saga: Saga) -> Any:
        last: Any = None
        for step in steps:
            last = await self._step(ctx, step, scope, saga)
            var = output_var(step)
            if var is not None:
                scope[var] = last
            self.state["done"].append(step.id)
            log.info("workflow %s: step %s (%s) done", ctx.actor, step.id, step.kind)
            if step.compensation is not None:
                comp = step.compensation
                saga.add(comp.activity, interpolate(comp.input, scope), version=comp.version)
        return last

    async def _step(self, ctx: ActorContext, step: Step, scope: dict[str, Any],
                    saga: Saga) -> Any:
        if isinstance(step, ActivityStep):
            return await ctx.call_activity(step.activity, interpolate(step.input, scope),
                                           version=step.version, retry=step.retry,
                                           timeout_ms=step.timeout_ms)
        if isinstance(step, AgentStep):
            ref = ActorRef(step.type, str(interpolate(step.actor_id, scope)))
            return await ctx.ask(ref, step.handler, interpolate(step.input, scope),
                                 timeout=step.timeout_s)
        if isinstance(step, ParallelStep):
            scopes = [dict(scope) for _ in step.branches]
            results = await asyncio.gather(*[
                self._steps(ctx.branch(f"{step.id}.{i}"), branch, scopes[i], saga)
                for i, branch in enumerate(step.branches)])
            for branch_scope in scopes:
                scope.update({k: v for k, v in branch_scope.items() if k not in scope})
            return list(results)
        if isinstance(step, ConditionStep):
            chosen = step.then if evaluate(step.if_, scope) else step.else_
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
